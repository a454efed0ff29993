"""``--precision bf16`` contractions on the CPU: bf16 operands, fp32 sums (AVX512-BF16's ``vdpbf16ps``).

A MatMul/Gemm with a compile-time weight and a channels-last Conv become

    W16 = bf16(W)                  (compile time, rounded to nearest even; packed for the instruction)
    A16 = bf16(A)                  (at run time, once per call, with the convolution's padding)
    Y   = sum_k A16 W16            (fp32: the instruction adds each product pair into fp32 lanes)

and everything around them (bias, activation, residual, normalisation, softmax) stays fp32, so the
only rounding is of the two operands: a relative error of at most 2^-8 each, which sums of
thousands of products average down (``--verify`` reports the error against fp32).

Weights are packed ``[N/16, Kp/2, 16, 2]`` (dense) or ``[KH, KW, OC/16, ICp/2, 16, 2]`` (NHWC
convolution: the taps outermost, so that a tensor intrinsic over one tap's ``[2 panels, ICp/2, 16, 2]``
block sees it as a leading part of the buffer, which TVM's tensorize requires), stored as ``uint16``
bits (``schedules.dot`` says why not ``bfloat16``). The reduction block carries the kernel's name
for the ``bf16-amx`` and ``bf16-contraction`` rules (``schedules.amx``, ``schedules.int8``). On AMX
CPUs the reduction is padded to whole 32-element tile rows, and only shapes that fill the tiles take
bf16 at all (``computes_in_bf16``).
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx

from targets.lowering.packed_int8 import (
    dot_conv2d_nhwc,
    dot_dense,
    nhwc_operand,
    pack_blocks,
    reduction_last_conv,
    reduction_last_dense,
    row_operand,
)
from targets.schedules.amx import COLS, K_STEP, amx_rows
from targets.schedules.dot import KERNELS, DotKernel, bf16_bits

_ZERO = tirx.const(0, "uint16")  # bf16 +0.0


def to_bf16(value: tirx.PrimExpr) -> tirx.PrimExpr:
    """A float32 value's bf16 bits (``uint16``): rounded to nearest, ties to even, in integer vector
    arithmetic (``bf16_bits`` in numpy does the same for the weights). NaN is not special-cased: a NaN
    whose mantissa carries into the exponent becomes infinity."""
    bits = tirx.reinterpret("uint32", value.astype("float32"))
    one = tirx.const(1, "uint32")
    sixteen = tirx.const(16, "uint32")
    odd = tirx.bitwise_and(tirx.shift_right(bits, sixteen), one)
    return tirx.shift_right(bits + tirx.const(0x7FFF, "uint32") + odd, sixteen).astype("uint16")


def computes_in_bf16(kernel: DotKernel, rows: int, cols: int, depth: int) -> bool:
    """Whether a contraction with ``rows`` output rows (matmul rows, or pixels along a convolution's
    output width), ``cols`` output columns and a contiguous reduction of ``depth`` (K, or a
    convolution's input channels) takes the bf16 kernel. On AMX CPUs only shapes that fill AMX tiles
    do: their ``vdpbf16ps`` does half the multiply-adds of fp32 FMAs per cycle (``schedules.amx``),
    so the rest stay fp32. Elsewhere every shape with whole 16-column vectors does."""
    if kernel.k_multiple:
        return cols % COLS == 0 and depth >= K_STEP and amx_rows(rows) > 0
    return cols % kernel.lanes == 0


def pack_dense_bf16(k: DotKernel, w: np.ndarray) -> np.ndarray:
    """A float [K, N] weight as the kernel's packed bf16 bits [N/L, Kp/G, L, G]."""
    return pack_blocks(k, bf16_bits(reduction_last_dense(w.astype(np.float32), k.k_pad)))


def pack_conv_bf16(k: DotKernel, w_oihw: np.ndarray) -> np.ndarray:
    """A float [OC, IC, KH, KW] weight as the kernel's packed bf16 bits [KH, KW, OC/L, ICp/G, L, G]."""
    packed = pack_blocks(k, bf16_bits(reduction_last_conv(w_oihw.astype(np.float32), k.k_pad)))
    return np.ascontiguousarray(packed.transpose(1, 2, 0, 3, 4, 5))


def dense_bf16(a: te.Tensor, wp: te.Tensor, *, kernel: str) -> te.Tensor:
    """A[..., M, K] (float32) @ W, W packed as bf16 bits [N/L, Kp/G, L, G]; float32 out."""
    kp = int(wp.shape[1]) * int(wp.shape[3])
    operand = row_operand(a, kp, to_bf16, _ZERO, "bf16_operand")
    return dot_dense(operand, wp, KERNELS[kernel], "bf16_dense")


def conv2d_nhwc_bf16(x: te.Tensor, wp: te.Tensor, *, strides: list[int], pads: list[int], dilations: list[int],
                     kernel: str) -> te.Tensor:
    """NHWC convolution of float32 ``x`` with W packed as bf16 bits [KH, KW, OC/L, ICp/G, L, G];
    ``pads`` is [top, left, bottom, right]; float32 out."""
    icp = int(wp.shape[3]) * int(wp.shape[5])
    padded = nhwc_operand(x, pads, icp, to_bf16, _ZERO, "bf16_operand")
    return dot_conv2d_nhwc(padded, wp, KERNELS[kernel], strides, dilations, "bf16_conv2d", taps_outer=True)
