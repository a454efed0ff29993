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

TRIPLE = "aarch64-linux-gnu"
CROSS_CC = "aarch64-linux-gnu-gcc"

# Cores worth naming in help, with what sets them apart; any LLVM aarch64 CPU name is accepted.
NOTABLE_CPUS = {
    "cortex-a72": "ARMv8.0-A, NEON (Raspberry Pi 4); the default",
    "cortex-a53": "ARMv8.0-A, NEON, in-order (Raspberry Pi 3, many phones' little cores)",
    "cortex-a55": "ARMv8.2-A, NEON + dot product, fp16",
    "cortex-a76": "ARMv8.2-A, NEON + dot product, fp16",
    "neoverse-n1": "ARMv8.2-A server core, NEON + dot product (AWS Graviton2, Ampere Altra)",
    "neoverse-v1": "ARMv8.4-A server core, SVE, i8mm, bf16 (AWS Graviton3)",
}
DEFAULT_CPU = "cortex-a72"

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
        return {"kind": "llvm", "mtriple": TRIPLE, "mcpu": cpu,
                "mattr": [f"+{f}" for f in wanted if f in llvm_features(TRIPLE, cpu)]}

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


TARGET = ArmTarget()
