"""The x86-64 CPU target: TVM's LLVM backend tuned for one CPU model (the host's by default).

The manifest records the ISA features the chosen CPU enables (AVX-512, VNNI, ...) so that the
runtime can refuse, with a clear message, a machine that would die on an illegal instruction.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

from compiler.errors import EffarchError
from targets.base import LLVMTarget, host_arch
from targets.llvm import CPUINFO, cpuinfo_field, llvm_features

logger = logging.getLogger(__name__)

_TRIPLE = "x86_64-linux-gnu"

# LLVM feature name -> /proc/cpuinfo flag, for the ISA extensions generated code can use.
# Tuning-only LLVM features ("prefer-256-bit", "fast-gather") are not instructions and are ignored.
_CPUINFO_FLAG = {
    "sse": "sse", "sse2": "sse2", "sse3": "pni", "ssse3": "ssse3", "sse4.1": "sse4_1",
    "sse4.2": "sse4_2", "sse4a": "sse4a", "avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c",
    "avx512f": "avx512f", "avx512bw": "avx512bw", "avx512cd": "avx512cd", "avx512dq": "avx512dq",
    "avx512vl": "avx512vl", "avx512ifma": "avx512ifma", "avx512vbmi": "avx512vbmi",
    "avx512vbmi2": "avx512_vbmi2", "avx512vnni": "avx512_vnni", "avx512bitalg": "avx512_bitalg",
    "avx512vpopcntdq": "avx512_vpopcntdq", "avx512bf16": "avx512_bf16", "avx512fp16": "avx512_fp16",
    "avx512vp2intersect": "avx512_vp2intersect", "avxvnni": "avx_vnni", "bmi": "bmi1", "bmi2": "bmi2",
    "lzcnt": "abm", "popcnt": "popcnt", "movbe": "movbe", "adx": "adx", "aes": "aes",
    "pclmul": "pclmulqdq", "sha": "sha_ni", "gfni": "gfni", "vaes": "vaes", "vpclmulqdq": "vpclmulqdq",
    "cx16": "cx16", "amx-tile": "amx_tile", "amx-int8": "amx_int8", "amx-bf16": "amx_bf16",
}


def host_cpuinfo_flags(path: Path = CPUINFO) -> set[str] | None:
    """The first CPU's flags from /proc/cpuinfo, or None where there is no such file."""
    return cpuinfo_field("flags", path)


@functools.cache
def _host_llvm_features() -> frozenset[str]:
    import tvm

    features = tvm.get_global_func("tvm.codegen.llvm.GetHostCPUFeatures")()
    return frozenset(str(k) for k, on in features.items() if bool(on))


class X86Target(LLVMTarget):
    name = "x86"
    description = "x86-64 CPUs through LLVM (AVX2/AVX-512/VNNI as the CPU allows)"
    arch = "x86_64"
    triple = _TRIPLE
    precisions = ("fp32", "bf16")  # bf16 where the CPU has AVX512-BF16 (check_precision)

    def default_cpu(self) -> str:
        if host_arch() != self.arch:
            raise EffarchError(f"this machine is {host_arch()}, so there is no host x86 CPU to build for; "
                               f"pass a CPU name such as --cpu x86-64-v3")
        from tvm.target import codegen

        return str(codegen.llvm_get_system_cpu())

    def _disabled_on_host(self, cpu: str) -> list[str]:
        """Features the CPU model has but this machine lacks (VMs often mask some); only for the host."""
        if host_arch() != self.arch or cpu != self.default_cpu():
            return []
        isa = llvm_features(_TRIPLE, cpu) & _CPUINFO_FLAG.keys()
        return sorted(isa - _host_llvm_features())

    def _extra_on_host(self, cpu: str) -> list[str]:
        """ISA features this machine has beyond its CPU model's (a VM may report an older model, e.g.
        Rocket Lake for a Sapphire Rapids with AVX512-BF16 and AMX); only for the host."""
        if host_arch() != self.arch or cpu != self.default_cpu():
            return []
        isa = _host_llvm_features() & _CPUINFO_FLAG.keys()
        return sorted(isa - llvm_features(_TRIPLE, cpu))

    def target_dict(self, cpu: str) -> dict[str, Any]:
        target: dict[str, Any] = {"kind": "llvm", "mcpu": cpu, "num-cores": _num_cores()}
        disabled, extra = self._disabled_on_host(cpu), self._extra_on_host(cpu)
        if disabled:
            logger.info("host CPU %s lacks %s; building without them", cpu, ", ".join(disabled))
        if disabled or extra:
            target["mattr"] = [f"-{f}" for f in disabled] + [f"+{f}" for f in extra]
        return target

    def required_features(self, cpu: str) -> list[str]:
        isa = llvm_features(_TRIPLE, cpu) & _CPUINFO_FLAG.keys()
        return sorted((isa - set(self._disabled_on_host(cpu))) | set(self._extra_on_host(cpu)))

    def check_host(self, manifest: dict[str, Any]) -> None:
        super().check_host(manifest)
        flags = host_cpuinfo_flags()
        if flags is None:
            logger.warning("cannot read /proc/cpuinfo; not checking CPU features")
            return
        required = manifest["target"].get("features", [])
        missing = [f for f in required if _CPUINFO_FLAG.get(f, f) not in flags]
        if missing:
            cpu = manifest["target"].get("cpu", "?")
            raise EffarchError(f"this CPU lacks {', '.join(missing)}, which the artifact (built for {cpu}) "
                               f"uses; rebuild it with --cpu for this machine (default: the host CPU)")
        if "amx-tile" in required:
            from targets.schedules.amx import enable_amx

            if not enable_amx():
                raise EffarchError("Linux refused this process AMX's tile state (kernels before 5.16 lack the "
                                   "request); rebuild the artifact with --cpu of a CPU without AMX, e.g. "
                                   "icelake-server")


def _num_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


TARGET = X86Target()
