"""What LLVM and the host say about CPUs, for the LLVM-backed targets (x86, Arm).

One implementation of each question: which CPU names LLVM knows for a triple, which features a CPU
has, and which flags the host's /proc/cpuinfo lists. Not a target itself (it defines no ``TARGET``).
"""

from __future__ import annotations

import functools
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


@functools.cache
def llvm_cpus(triple: str) -> tuple[str, ...]:
    """Every CPU name LLVM accepts as ``mcpu`` for ``triple``, sorted."""
    from tvm.target import Target, codegen

    names = codegen.llvm_get_cpu_archlist(Target({"kind": "llvm", "mtriple": triple}))
    return tuple(sorted(str(c) for c in names))


@functools.cache
def llvm_features(triple: str, cpu: str) -> frozenset[str]:
    """The LLVM features ``cpu`` enables (instruction sets and tuning flags alike)."""
    from tvm.target import Target, codegen

    target = Target({"kind": "llvm", "mtriple": triple, "mcpu": cpu})
    return frozenset(str(f) for f in codegen.llvm_get_cpu_features(target))


def cpuinfo_field(key: str, path: Path = CPUINFO) -> set[str] | None:
    """The words of the first CPU's ``key`` line ("flags" on x86, "Features" on Arm) in /proc/cpuinfo;
    None where the file cannot be read, empty where it has no such line."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(key):
            return set(line.split(":", 1)[1].split())
    return set()
