"""The aarch64 (Arm) CPU target: TVM's LLVM backend cross-compiling for one Arm core.

Libraries are linked with Debian's cross toolchain (``aarch64-linux-gnu-gcc``), so an artifact is
built here and runs on a board (or the emulated device, ``tools/arm_device.py``) through
``effarch run --device``. The manifest records the ISA features the chosen core enables (NEON,
dot product, SVE ...); ``targets.remote`` compares them with the features the device's kernel
reports (``AT_HWCAP``) and refuses a device that would die with SIGILL.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from compiler.errors import EffarchError
from targets.base import LLVMTarget
from targets.llvm import cpuinfo_field, llvm_features

logger = logging.getLogger(__name__)

SVE_BITS_OPTION = "-aarch64-sve-vector-bits-min"  # the LLVM option; schedules.machine reads it back

TRIPLE = "aarch64-linux-gnu"
CROSS_CC = "aarch64-linux-gnu-gcc"

# Cores worth naming in help, with what sets them apart; any LLVM aarch64 CPU name is accepted.
NOTABLE_CPUS = {
    "cortex-a72": "ARMv8.0-A, NEON (Raspberry Pi 4); the default",
    "cortex-a53": "ARMv8.0-A, NEON, in-order (Raspberry Pi 3, many phones' little cores)",
    "cortex-a55": "ARMv8.2-A, NEON + dot product, fp16",
    "cortex-a76": "ARMv8.2-A, NEON + dot product, fp16",
    "neoverse-n1": "ARMv8.2-A server core, NEON + dot product (AWS Graviton2, Ampere Altra)",
    "neoverse-v1": "ARMv8.4-A server core, 256-bit SVE (used for fp32), i8mm, bf16 (AWS Graviton3)",
}
DEFAULT_CPU = "cortex-a72"

# SVE vector length, in bits, of cores whose implementation fixes it above NEON's 128: LLVM is told
# the minimum (``-aarch64-sve-vector-bits-min``), so it lowers the schedules' fixed-length vectors,
# sized for that width (``schedules.machine``), to SVE instructions on z registers. The code stays
# correct on longer vectors. SVE cores with 128-bit vectors (Neoverse N2, V2) keep NEON: same width.
SVE_BITS = {"neoverse-v1": 256, "a64fx": 512}

# LLVM feature -> Linux hwcap name (AT_HWCAP/AT_HWCAP2, as in /proc/cpuinfo's "Features"), for the
# instruction-set extensions generated code can use. Tuning features (fuse-aes ...) are not listed.
HWCAP_NAME = {
    "fp-armv8": "fp", "neon": "asimd", "aes": "aes", "sha2": "sha2", "sha3": "sha3", "sm4": "sm4",
    "crc": "crc32", "lse": "atomics", "fullfp16": "asimdhp", "rdm": "asimdrdm", "jsconv": "jscvt",
    "complxnum": "fcma", "rcpc": "lrcpc", "dotprod": "asimddp", "fp16fml": "asimdfhm", "sve": "sve",
    "sve2": "sve2", "i8mm": "i8mm", "bf16": "bf16",
}
# Bit positions of those names in AT_HWCAP and AT_HWCAP2 (Linux arch/arm64/include/uapi/asm/hwcap.h).
_HWCAP_BITS = {
    "fp": 0, "asimd": 1, "evtstrm": 2, "aes": 3, "pmull": 4, "sha1": 5, "sha2": 6, "crc32": 7,
    "atomics": 8, "fphp": 9, "asimdhp": 10, "cpuid": 11, "asimdrdm": 12, "jscvt": 13, "fcma": 14,
    "lrcpc": 15, "dcpop": 16, "sha3": 17, "sm3": 18, "sm4": 19, "asimddp": 20, "sha512": 21, "sve": 22,
    "asimdfhm": 23, "dit": 24, "uscat": 25, "ilrcpc": 26, "flagm": 27, "ssbs": 28, "sb": 29,
}
_HWCAP2_BITS = {"dcpodp": 0, "sve2": 1, "flagm2": 7, "frint": 8, "i8mm": 13, "bf16": 14, "rng": 16}


def hwcap_names(hwcap: int, hwcap2: int) -> set[str]:
    """Feature names set in the kernel's AT_HWCAP and AT_HWCAP2 words."""
    names = {n for n, bit in _HWCAP_BITS.items() if hwcap >> bit & 1}
    return names | {n for n, bit in _HWCAP2_BITS.items() if hwcap2 >> bit & 1}


def missing_features(required: list[str], device_hwcaps: set[str]) -> list[str]:
    """The artifact's LLVM features the device lacks (features without a hwcap are not checked)."""
    return [f for f in required if f in HWCAP_NAME and HWCAP_NAME[f] not in device_hwcaps]


def sve_bits_of(prctl_vl: int) -> int:
    """The vector length in bits from ``prctl(PR_SVE_GET_VL)``'s result (bytes in the low 16 bits,
    flags above; negative where the kernel or the core has no SVE)."""
    return (prctl_vl & 0xFFFF) * 8 if prctl_vl > 0 else 0


def check_sve_length(manifest: dict[str, Any], sve_bits: int, where: str) -> None:
    """Refuse a machine whose SVE vectors are shorter than the artifact's code assumes (``SVE_BITS``):
    such code would compute wrong numbers there, not fault."""
    target = manifest["target"]
    need = SVE_BITS.get(str(target.get("cpu", ""))) if "sve" in target.get("features", []) else None
    if need and sve_bits < need:
        have = f"{sve_bits}-bit SVE vectors" if sve_bits else "no SVE"
        raise EffarchError(f"{where} has {have}, but the artifact (built for {target.get('cpu')}) assumes at least "
                           f"{need}-bit ones; rebuild it with --cpu for that machine's core")


def cross_compiler() -> Any:
    """TVM's ``fcompile`` that links with the aarch64 cross gcc; a clear error when it is missing."""
    if shutil.which(CROSS_CC) is None:
        raise EffarchError(f"the aarch64 cross compiler '{CROSS_CC}' is not installed; run "
                           f"tools/install-system-deps.sh or `apt-get install gcc-aarch64-linux-gnu`")
    from tvm.support import cc

    return cc.cross_compiler(CROSS_CC)


class ArmTarget(LLVMTarget):
    name = "arm"
    description = "aarch64 CPUs through LLVM, cross-compiled (NEON; dot product/SVE as the CPU allows)"
    arch = "aarch64"
    triple = TRIPLE

    def default_cpu(self) -> str:
        return DEFAULT_CPU

    def notable_cpus(self) -> dict[str, str]:
        return dict(NOTABLE_CPUS)

    def required_features(self, cpu: str) -> list[str]:
        return sorted(llvm_features(TRIPLE, cpu) & HWCAP_NAME.keys())

    def target_dict(self, cpu: str) -> dict[str, Any]:
        # mcpu already implies the features; mattr spells out the ones TVM's Arm schedules look for.
        wanted = ("neon", "dotprod", "i8mm", "sve")
        features = llvm_features(TRIPLE, cpu)
        target: dict[str, Any] = {"kind": "llvm", "mtriple": TRIPLE, "mcpu": cpu,
                                  "mattr": [f"+{f}" for f in wanted if f in features]}
        if cpu in SVE_BITS and "sve" in features:
            target["cl-opt"] = [f"{SVE_BITS_OPTION}:uint={SVE_BITS[cpu]}"]
        return target

    def tvm_target(self, cpu: str | None = None) -> Any:
        cross_compiler()  # a missing toolchain fails here, before minutes of compiling
        return super().tvm_target(cpu)

    def export(self, executable: Any, path: Path) -> Path:
        executable.export_library(str(path), fcompile=cross_compiler())
        return path

    def check_host(self, manifest: dict[str, Any]) -> None:
        super().check_host(manifest)  # an aarch64 artifact runs only on an aarch64 machine
        flags = cpuinfo_field("Features")  # None off Linux: nothing to check
        missing = missing_features(manifest["target"].get("features", []), flags) if flags else []
        if missing:
            raise EffarchError(f"this CPU lacks {', '.join(missing)}, which the artifact (built for "
                               f"{manifest['target'].get('cpu', '?')}) uses; rebuild it with --cpu for "
                               f"this machine")
        check_sve_length(manifest, _host_sve_bits(), "this machine")


def _host_sve_bits() -> int:
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return 0
    return sve_bits_of(int(libc.prctl(51, 0, 0, 0, 0)))  # PR_SVE_GET_VL


TARGET = ArmTarget()
