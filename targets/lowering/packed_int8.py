"""Integer contractions on packed weights, for the CPU's integer dot-product instructions.

``MatMulInteger``/``ConvInteger`` compute ``sum_k (A - za)(W - zw)`` in int32. With the weight known at
compile time and scalar zero points this becomes

    W' = W - zw                       (compile time; must fit the kernel's weight type)
    A' = A + shift                    (the kernel's activation type: u8 <-> s8 is +-128, or a widening)
    Y  = sum_k A' W'  -  (za + shift) * colsum(W')

because ``A - za = A' - (za + shift)``. The first term is the dot-product instruction's job, the second
a per-column int32 correction with ``colsum`` computed here. Convolution padding must contribute
``A - za = 0``, so the padded activation holds ``za + shift`` (which fits the operand type: it is the
zero point moved by the same shift as every activation).

Weights are packed ``[N/L, K/G, L, G]`` (dense) or ``[OC/L, KH, KW, IC/G, L, G]`` (NHWC convolution):
one instruction reads one contiguous ``L x G`` block (``schedules.dot``). The reduction block carries
the kernel's name in ``INT8_ATTR`` for the schedule rule (``schedules.int8``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tvm import te, tirx

from targets.schedules.amx import STRIDE_ATTR
from targets.schedules.dot import KERNELS, NEON_SDOT, DotKernel, widen
from targets.schedules.int8 import INT8_ATTR
from targets.schedules.mmla import MMLA_ATTR

# The kernel a smmla-blocked weight reports: its activations are s8, like sdot's (the shift is the same).
MMLA_KERNEL = NEON_SDOT


@dataclass(frozen=True)
class PackedInt8:
    """A weight ready for ``kernel``: packed, and its column sums (int32, one per output column)."""

    kernel: DotKernel
    packed: np.ndarray
    colsum: np.ndarray


def _pad_last(w: np.ndarray, multiple: int) -> np.ndarray:
    extra = -w.shape[-1] % multiple
    return np.pad(w, [(0, 0)] * (w.ndim - 1) + [(0, extra)]) if extra else w


def reduction_last_dense(w: np.ndarray, depth: int) -> np.ndarray:
    """[K, N] -> [N, Kp]: the reduction innermost, padded to a whole number of instructions."""
    return _pad_last(np.ascontiguousarray(w.T), depth)


def reduction_last_conv(w: np.ndarray, depth: int) -> np.ndarray:
    """[OC, IC, KH, KW] -> [OC, KH, KW, ICp]."""
    return _pad_last(np.ascontiguousarray(w.transpose(0, 2, 3, 1)), depth)


def pack_blocks(k: DotKernel, w_last: np.ndarray) -> np.ndarray:
    """``w_last`` ([N, ..., Kp]) as [N/L, ..., Kp/G, L, G] in the kernel's weight type: one
    instruction's ``L x G`` block contiguous."""
    n, *mid, kp = w_last.shape
    blocks = w_last.reshape(n // k.lanes, k.lanes, *mid, kp // k.depth, k.depth)
    order = [0, *range(2, 2 + len(mid)), 2 + len(mid), 1, 3 + len(mid)]
    return np.ascontiguousarray(blocks.transpose(order)).astype(k.weight_dtype)


def pack(k: DotKernel, w_last: np.ndarray) -> PackedInt8:
    """``w_last`` ([N, ..., Kp], int32, zero point taken off) packed as [N/L, ..., Kp/G, L, G]."""
    colsum = w_last.reshape(w_last.shape[0], -1).sum(axis=1, dtype=np.int64).astype(np.int32)
    return PackedInt8(k, pack_blocks(k, w_last), colsum)


def _zero_point(za: te.Tensor | None, shift: int) -> tirx.PrimExpr:
    """``za + shift`` as int32; ``za`` is a rank-0 tensor (None: zero)."""
    base = tirx.const(0, "int32") if za is None else za[()].astype("int32")
    return base + shift


def _operand(value: tirx.PrimExpr, shift: int, dtype: str) -> tirx.PrimExpr:
    return (value.astype("int32") + shift).astype(dtype) if shift else value.astype(dtype)


def dense_int8(a: te.Tensor, wp: te.Tensor, colsum: te.Tensor, za: te.Tensor | None, *, shift: int,
               act_dtype: str, kernel: str) -> te.Tensor:
    """A[..., M, K] (u8/s8) @ W' as int32, W' packed [N/L, Kp/G, L, G]."""
    _, kp_blocks, _, depth = (int(d) for d in wp.shape)
    k_ext, kp = int(a.shape[-1]), kp_blocks * depth
    if shift or kp != k_ext or str(a.dtype) != act_dtype:
        a = row_operand(a, kp, lambda v: _operand(v, shift, act_dtype), tirx.const(0, act_dtype), "int8_operand")
    acc = dot_dense(a, wp, KERNELS[kernel], "int8_dense")
    zero = _zero_point(za, shift)
    return te.compute(acc.shape, lambda *i: acc[i] - zero * colsum[i[-1]], name="int8_correct")


def conv2d_nhwc_int8(x: te.Tensor, wp: te.Tensor, colsum: te.Tensor, za: te.Tensor | None, *, strides: list[int],
                     pads: list[int], dilations: list[int], shift: int, act_dtype: str, kernel: str) -> te.Tensor:
    """NHWC convolution of u8/s8 ``x`` with W' packed [OC/L, KH, KW, ICp/G, L, G]; ``pads`` is
    [top, left, bottom, right]. Padding holds ``za + shift`` so that it contributes nothing."""
    ic = int(x.shape[3])
    icp = int(wp.shape[3]) * int(wp.shape[5])
    zero = _zero_point(za, shift)
    direct = not any(pads) and not shift and icp == ic and str(x.dtype) == act_dtype
    padded = x if direct else nhwc_operand(x, pads, icp, lambda v: _operand(v, shift, act_dtype),
                                           zero.astype(act_dtype), "int8_operand")
    acc = dot_conv2d_nhwc(padded, wp, KERNELS[kernel], strides, dilations, "int8_conv2d")
    return te.compute(acc.shape, lambda b, y, xx, c: acc[b, y, xx, c] - zero * colsum[c], name="int8_correct")


def pack_mmla(w_last: np.ndarray) -> PackedInt8:
    """``w_last`` ([N, Kp], int32, zero point taken off; N even, Kp a multiple of 8) blocked for
    ``smmla`` as [N/2, Kp/8, 2, 8] int8, with its column sums."""
    n, kp = w_last.shape
    blocks = np.ascontiguousarray(w_last.reshape(n // 2, 2, kp // 8, 8).transpose(0, 2, 1, 3)).astype(np.int8)
    colsum = w_last.sum(axis=1, dtype=np.int64).astype(np.int32)
    return PackedInt8(MMLA_KERNEL, blocks, colsum)


def dense_int8_mmla(a: te.Tensor, wp: te.Tensor, colsum: te.Tensor, za: te.Tensor | None, *,
                    shift: int) -> te.Tensor:
    """A[..., M, K] (u8/s8) @ W' as int32 on ``smmla``: A shifted to s8 and blocked in row pairs
    [..., M/2, Kp/8, 2, 8] (an odd M gets a zero row), W' blocked [N/2, Kp/8, 2, 8] (``pack_mmla``);
    the [..., M/2, N/2, 2, 2] sums are corrected and unblocked to [..., M, N] after."""
    *lead, m_ext, k_ext = (int(d) for d in a.shape)
    n_pairs, k_blocks = (int(d) for d in wp.shape[:2])
    m_pairs = (m_ext + 1) // 2

    def operand(*idx: tirx.Var) -> tirx.PrimExpr:
        *outer, mb, kb, i, k = idx
        row, col = mb * 2 + i, kb * 8 + k
        value = _operand(a[(*outer, tirx.min(row, m_ext - 1), tirx.min(col, k_ext - 1))], shift, "int8")
        return tirx.if_then_else(tirx.all(row < m_ext, col < k_ext), value, tirx.const(0, "int8"))

    blocked = te.compute((*lead, m_pairs, k_blocks, 2, 8), operand, name="int8_operand")
    ko, ki = te.reduce_axis((0, k_blocks), "ko"), te.reduce_axis((0, 8), "ki")

    def body(*idx: tirx.Var) -> tirx.PrimExpr:
        *outer, mb, nb, i, j = idx
        x = blocked[(*outer, mb, ko, i, ki)].astype("int32")
        return te.sum(x * wp[nb, ko, j, ki].astype("int32"), axis=[ko, ki])

    acc = te.compute((*lead, m_pairs, n_pairs, 2, 2), body, name="int8_mmla", attrs={MMLA_ATTR: 1})
    zero = _zero_point(za, shift)

    def correct(*idx: tirx.Var) -> tirx.PrimExpr:
        *outer, row, col = idx
        return acc[(*outer, row // 2, col // 2, row % 2, col % 2)] - zero * colsum[col]

    return te.compute((*lead, m_ext, n_pairs * 2), correct, name="int8_correct")


def dot_dense(a: te.Tensor, wp: te.Tensor, k: DotKernel, name: str) -> te.Tensor:
    """``a[..., Kp]`` (the kernel's operand type) @ ``wp`` packed [N/L, Kp/G, L, G], summed in the
    kernel's accumulator type; the block is marked for the kernel's schedule (``schedules.int8``)."""
    panels, kp_blocks, lanes, depth = (int(d) for d in wp.shape)
    ko = te.reduce_axis((0, kp_blocks), "ko")
    ki = te.reduce_axis((0, depth), "ki")

    def body(*idx: tirx.Var) -> tirx.PrimExpr:
        *lead, n = idx
        x = widen(k, a[(*lead, ko * depth + ki)])
        return te.sum(x * widen(k, wp[n // lanes, ko, n % lanes, ki]), axis=[ko, ki])

    return te.compute((*a.shape[:-1], panels * lanes), body, name=name, attrs={INT8_ATTR: k.name})


def row_operand(a: te.Tensor, kp: int, convert: Callable[[tirx.PrimExpr], tirx.PrimExpr], fill: tirx.PrimExpr,
                name: str) -> te.Tensor:
    """``a[..., K]`` converted elementwise to a kernel's operand, its last axis padded with ``fill`` to ``kp``."""
    k_ext = int(a.shape[-1])

    def operand(*idx: tirx.Var) -> tirx.PrimExpr:
        *lead, k = idx
        inside = convert(a[(*lead, tirx.min(k, k_ext - 1))])
        return tirx.if_then_else(k < k_ext, inside, fill)

    return te.compute((*a.shape[:-1], kp), operand, name=name)


def nhwc_operand(x: te.Tensor, pads: list[int], channels: int, convert: Callable[[tirx.PrimExpr], tirx.PrimExpr],
                 fill: tirx.PrimExpr, name: str) -> te.Tensor:
    """NHWC ``x`` converted elementwise to a kernel's operand, padded (``pads`` [top, left, bottom,
    right]) with ``fill`` and its channels with ``fill`` up to ``channels``."""
    n_, h, w_, ic = (int(d) for d in x.shape)
    top, left, bottom, right = pads

    def operand(b: tirx.Var, y: tirx.Var, xx: tirx.Var, c: tirx.Var) -> tirx.PrimExpr:
        inside = tirx.all(y >= top, y < h + top, xx >= left, xx < w_ + left, c < ic)
        value = x[b, tirx.min(tirx.max(y - top, 0), h - 1), tirx.min(tirx.max(xx - left, 0), w_ - 1),
                  tirx.min(c, ic - 1)]
        return tirx.if_then_else(inside, convert(value), fill)

    return te.compute((n_, h + top + bottom, w_ + left + right, channels), operand, name=name)


def dot_conv2d_nhwc(padded: te.Tensor, wp: te.Tensor, k: DotKernel, strides: list[int], dilations: list[int],
                    name: str, taps_outer: bool = False) -> te.Tensor:
    """The convolution of an already padded NHWC operand with ``wp`` packed [OC/L, KH, KW, ICp/G, L, G]
    (``taps_outer``: [KH, KW, OC/L, ICp/G, L, G]), summed in the kernel's accumulator type and marked
    for its schedule."""
    n_, hp, wpad, _ = (int(d) for d in padded.shape)
    if taps_outer:
        kh_ext, kw_ext, panels, icb, lanes, depth = (int(d) for d in wp.shape)
    else:
        panels, kh_ext, kw_ext, icb, lanes, depth = (int(d) for d in wp.shape)
    oh = (hp - dilations[0] * (kh_ext - 1) - 1) // strides[0] + 1
    ow = (wpad - dilations[1] * (kw_ext - 1) - 1) // strides[1] + 1
    kh, kw = te.reduce_axis((0, kh_ext), "kh"), te.reduce_axis((0, kw_ext), "kw")
    ko, ki = te.reduce_axis((0, icb), "ko"), te.reduce_axis((0, depth), "ki")

    def body(b: tirx.Var, y: tirx.Var, xx: tirx.Var, c: tirx.Var) -> tirx.PrimExpr:
        pixel = padded[b, y * strides[0] + kh * dilations[0], xx * strides[1] + kw * dilations[1], ko * depth + ki]
        weight = wp[kh, kw, c // lanes, ko, c % lanes, ki] if taps_outer else wp[c // lanes, kh, kw, ko, c % lanes, ki]
        return te.sum(widen(k, pixel) * widen(k, weight), axis=[kh, kw, ko, ki])

    return te.compute((n_, oh, ow, panels * lanes), body, name=name, attrs={INT8_ATTR: k.name, STRIDE_ATTR: strides[1]})
