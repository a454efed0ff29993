"""Dot-product instructions (integer, and bf16 with fp32 sums) as TVM tensor intrinsics, one per kind of CPU.

Each ``DotKernel`` computes ``C[i] += sum_k A[k] * W[i, k]`` for ``lanes`` output columns ``i`` and
``depth`` consecutive reduction elements ``k``: one broadcast of ``depth`` activations, one vector
load of a packed ``[lanes, depth]`` weight block, one instruction (or a short fixed sequence).
Weights are packed at compile time so that every block is contiguous (``lowering.packed_int8``).

| kernel       | CPU                      | instructions          | A  x W    | exact when |
|--------------|--------------------------|-----------------------|-----------|------------|
| vnni         | x86 AVX-512 VNNI         | vpdpbusd zmm          | u8 x s8   | always |
| avx2-maddubs | x86 AVX2                 | vpmaddubsw + vpmaddwd | u8 x s8   | no weight pair can saturate int16 |
| avx2-maddwd  | x86 AVX2 (and VNNI CPUs) | vpmaddwd on int16     | i16 x i16 | always |
| neon-sdot    | aarch64 +dotprod         | sdot                  | s8 x s8   | always |
| avx512-bf16  | x86 AVX512-BF16          | vdpbf16ps zmm         | bf16 x bf16 | sums in fp32 |

bf16 values travel as their 16 bits in ``uint16`` buffers (``bf16_bits``; ``bf16_value`` widens one
to float32 exactly): TVM 0.27 rewrites every ``bfloat16`` value to float32 arithmetic before LLVM and
has no way to name LLVM 22's ``<32 x bfloat>`` operand of ``vdpbf16ps``. So the instruction is
reached through a three-line LLVM function imported into the kernel (``pragma_import_llvm``), which
takes the pairs as ``<16 x i32>``, bitcasts them and is inlined.

vpmaddubsw adds two u8 x s8 products in saturating int16: 255 * (b0 + b1) must stay within
[-32768, 32767], so b0 + b1 <= 128 over the positive weights of a pair and >= -128 over the negative
ones (255 * 128 = 32640); weights known at compile time decide it (``maddubs_exact``).

TVM's shipped ``dot_16x4_vnni`` hands LLVM 22 ``<16 x i32>`` operands where ``vpdpbusd.512`` takes
``<64 x i8>``, failing verification; these intrinsics pass the bytes. The accumulator is a
``local`` buffer (the register tile), which the shipped ones do not accept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tvm import tirx
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

Body = Callable[..., object]  # builds the instruction sequence from (A, B, C) buffers


@dataclass(frozen=True)
class DotKernel:
    name: str  # the tensor intrinsic's name
    lanes: int  # output columns per instruction (i32 lanes)
    depth: int  # reduction elements per instruction
    act_dtype: str  # the activation operand
    weight_dtype: str  # the packed weight
    temporaries: int  # vector registers the sequence needs beside accumulators, weights and the broadcast
    acc_dtype: str = "int32"  # the accumulator (and the instruction's result lanes)
    llvm_import: str = ""  # LLVM IR the kernel's function must import for the instruction (``pragma_import_llvm``)
    k_multiple: int = 0  # the reduction is padded to a multiple of this (0: of ``depth``)

    @property
    def k_pad(self) -> int:
        return self.k_multiple or self.depth

    def act_shift(self, act_dtype: str) -> int:
        """What to add to an activation of ``act_dtype`` to make it this kernel's operand: u8 and s8
        trade places by +-128 (the product's error is a per-column constant, corrected after)."""
        if act_dtype == self.act_dtype or self.act_dtype in ("int16", "uint16"):
            return 0
        return 128 if self.act_dtype == "uint8" else -128


def _vnni(a: object, b: object, c: object) -> object:
    return T.call_llvm_pure_intrin(
        T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"), c.vload([0], "int32x16"),  # type: ignore[attr-defined]
        _broadcast(a, "uint8", 4, 16, "int8x64"), b.vload([0, 0], "int8x64"), dtype="int32x16")  # type: ignore[attr-defined]


def _maddubs(a: object, b: object, c: object) -> object:
    pairs = T.call_llvm_pure_intrin(
        T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"), _broadcast(a, "uint8", 4, 8, "int8x32"),
        b.vload([0, 0], "int8x32"), dtype="int16x16")  # type: ignore[attr-defined]
    quads = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), pairs,
                                    T.broadcast(T.int16(1), 16), dtype="int32x8")
    return c.vload([0], "int32x8") + quads  # type: ignore[attr-defined]


def _maddwd(a: object, b: object, c: object) -> object:
    pairs = T.call_llvm_pure_intrin(
        T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), _broadcast(a, "int16", 2, 8, "int16x16"),
        b.vload([0, 0], "int16x16"), dtype="int32x8")  # type: ignore[attr-defined]
    return c.vload([0], "int32x8") + pairs  # type: ignore[attr-defined]


def _sdot(a: object, b: object, c: object) -> object:
    return T.call_llvm_pure_intrin(
        T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"), c.vload([0], "int32x4"),  # type: ignore[attr-defined]
        _broadcast(a, "int8", 4, 4, "int8x16"), b.vload([0, 0], "int8x16"), dtype="int32x4")  # type: ignore[attr-defined]


# vdpbf16ps through an imported LLVM function: TVM cannot name ``<32 x bfloat>`` (module docstring).
DPBF16PS_SYMBOL = "effarch_dpbf16ps_512"
_DPBF16PS_IR = f"""
declare <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float>, <32 x bfloat>, <32 x bfloat>)
define <16 x float> @{DPBF16PS_SYMBOL}(<16 x float> %c, <16 x i32> %a, <16 x i32> %b) {{
  %x = bitcast <16 x i32> %a to <32 x bfloat>
  %y = bitcast <16 x i32> %b to <32 x bfloat>
  %r = call <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float> %c, <32 x bfloat> %x, <32 x bfloat> %y)
  ret <16 x float> %r
}}
"""


def _dpbf16ps(a: object, b: object, c: object) -> object:
    weights = T.reinterpret(b.vload([0, 0], "uint16x32"), dtype="int32x16")  # type: ignore[attr-defined]
    return T.call_extern("float32x16", DPBF16PS_SYMBOL, c.vload([0], "float32x16"),  # type: ignore[attr-defined]
                         _broadcast(a, "uint16", 2, 16, "int32x16"), weights)


def _broadcast(a: object, dtype: str, depth: int, lanes: int, as_type: str) -> object:
    """The ``depth`` activations as one 32-bit word, repeated in every lane."""
    word = T.reinterpret(a.vload([0], f"{dtype}x{depth}"), dtype="int32")  # type: ignore[attr-defined]
    return T.reinterpret(T.broadcast(word, lanes), dtype=as_type)


def widen(k: DotKernel, value: tirx.PrimExpr) -> tirx.PrimExpr:
    """An operand element as the accumulator's type, exactly: the product the instruction sums. The
    lowering (``lowering.packed_int8``, ``lowering.packed_bf16``) writes its reduction with this, so
    that the block matches the intrinsic's description."""
    return bf16_value(value) if k.acc_dtype == "float32" else value.astype(k.acc_dtype)


def bf16_value(bits: tirx.PrimExpr) -> tirx.PrimExpr:
    """The float32 a bf16's 16 bits (``uint16``) stand for: the bits are the float's high half."""
    return tirx.reinterpret("float32", tirx.shift_left(bits.astype("uint32"), tirx.const(16, "uint32")))


def _register(k: DotKernel, body: Body) -> DotKernel:
    lanes, depth, adt, wdt, acc = k.lanes, k.depth, k.act_dtype, k.weight_dtype, k.acc_dtype

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (depth,), adt, offset_factor=1)
        B = T.match_buffer(b, (lanes, depth), wdt, offset_factor=1)
        C = T.match_buffer(c, (lanes,), acc, offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:depth], B[0:lanes, 0:depth])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for kk in T.serial(0, depth):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, kk])
                        C[vi] = C[vi] + widen(k, A[vk]) * widen(k, B[vi, vk])

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (depth,), adt, offset_factor=1)
        B = T.match_buffer(b, (lanes, depth), wdt, offset_factor=1)
        C = T.match_buffer(c, (lanes,), acc, offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:depth], B[0:lanes, 0:depth])
            T.writes(C[0:lanes])
            C[T.ramp(T.int32(0), 1, lanes)] = body(A, B, C)

    TensorIntrin.register(k.name, desc, impl, override=True)
    return k


VNNI = _register(DotKernel("effarch_vnni_16x4", 16, 4, "uint8", "int8", 0), _vnni)
AVX2_MADDUBS = _register(DotKernel("effarch_avx2_maddubs_8x4", 8, 4, "uint8", "int8", 2), _maddubs)
AVX2_MADDWD = _register(DotKernel("effarch_avx2_maddwd_8x2", 8, 2, "int16", "int16", 1), _maddwd)
NEON_SDOT = _register(DotKernel("effarch_neon_sdot_4x4", 4, 4, "int8", "int8", 0), _sdot)
AVX512_BF16 = _register(DotKernel("effarch_avx512_bf16_16x2", 16, 2, "uint16", "uint16", 0, "float32",
                                  _DPBF16PS_IR), _dpbf16ps)

# AMX CPUs: the same packed operands, the reduction padded to whole 32-element tile rows; the rule
# puts the contraction on AMX tiles where its shape fits (``schedules.amx``), else on vdpbf16ps.
AMX_BF16 = _register(DotKernel("effarch_amx_bf16_16x2", 16, 2, "uint16", "uint16", 0, "float32", _DPBF16PS_IR,
                               k_multiple=32), _dpbf16ps)

KERNELS = {k.name: k for k in (VNNI, AVX2_MADDUBS, AVX2_MADDWD, NEON_SDOT, AVX512_BF16, AMX_BF16)}


def bf16_kernel(features: frozenset[str]) -> DotKernel | None:
    """The bf16 dot-product kernel a CPU with these LLVM features has, or None."""
    if {"amx-tile", "amx-bf16", "avx512bf16"} <= features:
        return AMX_BF16
    return AVX512_BF16 if {"avx512bf16", "avx512f"} <= features else None


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to bf16 (to nearest, ties to even, as ``vcvtneps2bf16``), as their 16
    bits (``uint16``); NaN stays a (quiet) NaN."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(x), np.uint16(0x7FC0), rounded).astype(np.uint16)


def int8_isa(features: frozenset[str]) -> str:
    """The integer dot-product family a CPU with these LLVM features has; "" for none we use."""
    if {"avx512vnni", "avx512bw"} <= features:
        return "avx512vnni"
    if "avx2" in features:
        return "avx2"
    if {"i8mm", "dotprod"} <= features:
        return "i8mm"  # smmla for matmuls (schedules.mmla), sdot for the rest
    if "dotprod" in features:
        return "dotprod"
    return ""


def choose_kernel(isa: str, weight: np.ndarray) -> DotKernel | None:
    """The exact kernel for an int32 weight ``[..., K]`` (values after its zero point is taken off;
    the last axis is the reduction, in packing order), or None where the family has none."""
    fits_i8 = weight.size == 0 or (int(weight.min()) >= -128 and int(weight.max()) <= 127)
    if isa == "avx512vnni":
        return VNNI if fits_i8 else AVX2_MADDWD
    if isa == "avx2":
        return AVX2_MADDUBS if fits_i8 and maddubs_exact(weight) else AVX2_MADDWD
    if isa in ("dotprod", "i8mm") and fits_i8:
        return NEON_SDOT
    return None


def maddubs_exact(weight: np.ndarray) -> bool:
    """Whether no pair (k = 2j, 2j+1) of the reduction axis can saturate vpmaddubsw's int16 sum for any
    u8 activation: the pair's positive weights sum to <= 128, and its negative ones to >= -128."""
    k = weight.shape[-1]
    w = weight.astype(np.int64)
    if k % 2:
        w = np.concatenate([w, np.zeros((*w.shape[:-1], 1), np.int64)], axis=-1)
    pairs = w.reshape(*w.shape[:-1], -1, 2)
    return bool(np.clip(pairs, 0, None).sum(-1).max(initial=0) <= 128
                and np.clip(-pairs, 0, None).sum(-1).max(initial=0) <= 128)
