"""What a schedule needs to know about the CPU it targets: vector width, registers and cores.

Read from the TVM target (``mcpu``/``mattr``/``mtriple`` through LLVM, ``num-cores``), so the same
rules serve an AVX2 x86 (8 fp32 lanes, 16 vector registers), an AVX-512 one (16 lanes, 32
registers), a NEON Arm core (4 lanes, 32 registers) and an SVE one of known length (Neoverse V1:
8 lanes of 256 bits, 32 registers).
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm.target import Target
from tvm.target.codegen import llvm_get_cpu_features


@dataclass(frozen=True)
class Machine:
    vector_bits: int
    registers: int  # architectural vector registers
    cores: int
    features: frozenset[str]

    def lanes(self, dtype_bits: int = 32) -> int:
        return max(self.vector_bits // dtype_bits, 1)


def machine_of(target: Target) -> Machine:
    features = frozenset(str(f) for f in llvm_get_cpu_features(target))
    arm = "aarch64" in str(target.attrs.get("mtriple", ""))
    bits = _sve_bits(target) if arm and "sve" in features else 0
    bits = bits or _vector_bits(features, arm)
    registers = 32 if arm or "avx512f" in features else 16
    cores = int(target.attrs.get("num-cores", 1) or 1)
    return Machine(bits, registers, max(cores, 1), features)


def _sve_bits(target: Target) -> int:
    """The SVE vector length the target fixes for LLVM (``-aarch64-sve-vector-bits-min``, set by
    ``targets.arm`` for cores whose length is known), or 0."""
    for opt in target.attrs.get("cl-opt", None) or []:
        name, _, value = str(opt).partition("=")
        if name.split(":")[0] == "-aarch64-sve-vector-bits-min" and value.isdigit():
            return int(value)
    return 0


def _vector_bits(features: frozenset[str], arm: bool) -> int:
    # LLVM's own answer (llvm_get_vector_width) says 512 for AVX2-only Zen 3, so read the ISA.
    if arm:
        return 128  # NEON (an SVE core of known length is read from the target first: _sve_bits)
    if "avx512f" in features:
        return 512
    if "avx" in features:
        return 256
    return 128
