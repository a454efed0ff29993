"""MatMulInteger / ConvInteger on NVIDIA GPUs: int8 GEMMs for the ``dp4a`` instruction (SASS ``IDP.4A``).

With the weight known at compile time, scalar activation zero point ``za`` and ``W - zw`` in int8, the
contraction is an int8 x int8 -> int32 GEMM plus a per-column correction (as ``lowering.packed_int8``):

    A' = A - 128 for u8 activations (A' = A for s8)       shift = -128 or 0
    Y  = sum_k A' W'  -  (za + shift) * colsum(W')         W' = W - zw, colsum at compile time

The weight is laid out ``[N, Kp]`` (the reduction innermost, zero-padded to ``K_TILE``) so four
consecutive ``k`` are one 32-bit ``dp4a`` operand. A convolution is an implicit GEMM: its operand is
``col[b, y*OW + x, k]`` with ``k = (c, kh, kw)`` in ONNX's weight order, read straight from the NCHW
input (padding holds ``za + shift``, so it contributes nothing); the schedule inlines it into the
shared-memory tile load, so no im2col buffer exists. The GEMM block is ``acc[m, n]`` over rows flattened
from the output's other axes (so the schedule tiles plain affine loops) and carries ``GPU_INT8_ATTR`` for
``schedules.gpu_int8``; the correction writes the output in its own shape.
"""

from __future__ import annotations

import numpy as np
from tvm import relax, te, tirx
from tvm.relax import op as R

from targets.lowering.registry import Call
from targets.lowering.spatial import window
from targets.schedules.gpu_int8 import GPU_INT8_ATTR, K_TILE

CUDA_INT8 = "cuda-dp4a"  # ``Call.int8`` on the CUDA target (``targets.cuda``)


def _scalar_zero(c: Call, i: int) -> relax.Expr | None | bool:
    """Zero point ``i`` as a rank-0 tensor, None when absent, False when it is not one number."""
    if not c.has(i):
        return None
    if int(np.prod(c.shape(i))) != 1:
        return False
    return c.emit(R.reshape(c.arg(i), []))


def _weight(c: Call, zero_input: int, axis: int) -> np.ndarray | None:
    """``W - zw`` (int32) with a compile-time zero point per tensor or along ``axis``; None if
    the weight is not known or the difference leaves int8."""
    w = c.weight(1)
    if w is None or w.dtype != np.int8:
        return None
    diff = w.astype(np.int32)
    if c.has(zero_input):
        zw = c.consts[zero_input]
        if zw is None:
            return None
        zw = np.asarray(zw).astype(np.int32).reshape(-1)
        shape = [1] * w.ndim
        shape[axis] = -1
        diff = diff - (zw.reshape(shape) if zw.size > 1 else zw[0])
    return diff if diff.min(initial=0) >= -128 and diff.max(initial=0) <= 127 else None


def _rows_padded(w_nk: np.ndarray) -> np.ndarray:
    """[N, K] int32 -> [N, Kp] int8, K zero-padded to a whole number of ``K_TILE`` steps. M and N are not
    padded: the output's shape must be the GEMM's, or inlining the epilogue would write past its end."""
    return np.pad(w_nk, [(0, 0), (0, -w_nk.shape[1] % K_TILE)]).astype(np.int8)


def _colsums(wp: np.ndarray) -> np.ndarray:
    return wp.sum(axis=1, dtype=np.int64).astype(np.int32)


def _shift(dtype: str) -> int:
    return -128 if dtype == "uint8" else 0


def _to_s8(value: tirx.PrimExpr, shift: int) -> tirx.PrimExpr:
    return (value.astype("int32") + shift).astype("int8") if shift else value.astype("int8")


def _zero(za: te.Tensor | None, shift: int) -> tirx.PrimExpr:
    base = tirx.const(0, "int32") if za is None else za[()].astype("int32")
    return base + shift


def matmul_integer(c: Call) -> relax.Expr | None:
    """A[..., K] (u8/s8) @ W[K, N] (constant i8) on dp4a; None where this path does not apply."""
    za = _scalar_zero(c, 2)
    w = _weight(c, 3, 1)
    if za is False or w is None or w.ndim != 2 or c.rank(0) < 1:
        return None
    wp = _rows_padded(np.ascontiguousarray(w.T))
    colsum = _colsums(wp)
    args = [c.arg(0), c.relaid_weight(1, wp, "NK"), c.relaid_weight(1, colsum, "colsum")]
    return c.bb.emit_te(int8_matmul_gpu, *args, za, columns=w.shape[1], shift=_shift(c.dtype(0)),
                        primfunc_name_hint="int8_matmul_gpu")


def int8_matmul_gpu(a: te.Tensor, wp: te.Tensor, colsum: te.Tensor, za: te.Tensor | None, *, columns: int,
                    shift: int) -> te.Tensor:
    """A[..., K] @ W' as int32 (W' as [N, Kp]); the GEMM runs on rows flattened over A's leading axes."""
    *lead, k_ext = (int(d) for d in a.shape)
    rows = int(np.prod(lead))
    kp = int(wp.shape[1])

    def operand(m: tirx.Var, k: tirx.Var) -> tirx.PrimExpr:
        inside = _to_s8(a[(*_unravel(m, lead), tirx.min(k, k_ext - 1))], shift)
        return tirx.if_then_else(k < k_ext, inside, tirx.const(0, "int8"))

    acc = _gemm(te.compute((rows, kp), operand, name="int8_operand"), wp)
    zero = _zero(za, shift)
    return te.compute((*lead, columns), lambda *i: acc[_ravel(i[:-1], lead), i[-1]] - zero * colsum[i[-1]],
                      name="int8_correct")


def _gemm(a8: te.Tensor, wp: te.Tensor) -> te.Tensor:
    """acc[m, n] = sum_k a8[m, k] * wp[n, k] in int32: the block ``schedules.gpu_int8`` takes."""
    k = te.reduce_axis((0, int(wp.shape[1])), "k")
    return te.compute((a8.shape[0], wp.shape[0]),
                      lambda m, n: te.sum(a8[m, k].astype("int32") * wp[n, k].astype("int32"), axis=k),
                      name="int8_gemm", attrs={GPU_INT8_ATTR: 1})


def _unravel(m: tirx.PrimExpr, shape: list[int]) -> list[tirx.PrimExpr]:
    idx = []
    for d in reversed(shape):
        idx.append(m % d)
        m = m // d
    return idx[::-1]


def _ravel(idx: tuple[tirx.PrimExpr, ...] | list[tirx.PrimExpr], shape: list[int]) -> tirx.PrimExpr:
    flat: tirx.PrimExpr = tirx.const(0, "int64")
    for i, d in zip(idx, shape, strict=True):
        flat = flat * d + i
    return flat


def conv_integer(c: Call) -> relax.Expr | None:
    """2-D ConvInteger (NCHW, group 1, constant i8 weight) as an implicit GEMM on dp4a; None where
    this path does not apply."""
    za = _scalar_zero(c, 2)
    w = _weight(c, 3, 0)
    if za is False or w is None or w.ndim != 4 or c.rank(0) != 4 or int(c.attr("group", 1)) != 1:
        return None
    win = window(c, c.shape(0)[2:], list(w.shape[2:]))
    if len(win.pads) != 4:
        return None
    wp = _rows_padded(w.reshape(w.shape[0], -1))
    colsum = _colsums(wp)
    args = [c.arg(0), c.relaid_weight(1, wp, "NK"), c.relaid_weight(1, colsum, "colsum")]
    return c.bb.emit_te(int8_conv2d_gpu, *args, za, columns=w.shape[0], kernel=list(w.shape[2:]),
                        strides=win.strides, pads=win.pads, dilations=win.dilations, shift=_shift(c.dtype(0)),
                        primfunc_name_hint="int8_conv2d_gpu")


def int8_conv2d_gpu(x: te.Tensor, wp: te.Tensor, colsum: te.Tensor, za: te.Tensor | None, *, columns: int,
                    kernel: list[int],
                    strides: list[int], pads: list[int], dilations: list[int], shift: int) -> te.Tensor:
    """NCHW ``x`` (u8/s8) with W' as [OC, Kp], k = (c, kh, kw); ``pads`` is [top, left, bottom, right]."""
    b_ext, ic, h, w_ = (int(d) for d in x.shape)
    kp = int(wp.shape[1])
    kh_ext, kw_ext = kernel
    top, left, bottom, right = pads
    oh = (h + top + bottom - dilations[0] * (kh_ext - 1) - 1) // strides[0] + 1
    ow = (w_ + left + right - dilations[1] * (kw_ext - 1) - 1) // strides[1] + 1
    zero = _zero(za, shift)
    k_ext = ic * kh_ext * kw_ext

    def operand(m: tirx.Var, k: tirx.Var) -> tirx.PrimExpr:
        b, y0, x0 = _unravel(m, [b_ext, oh, ow])
        ch, kh, kw = k // (kh_ext * kw_ext), k // kw_ext % kh_ext, k % kw_ext
        y = y0 * strides[0] + kh * dilations[0] - top
        xx = x0 * strides[1] + kw * dilations[1] - left
        inside = tirx.all(y >= 0, y < h, xx >= 0, xx < w_)
        value = x[b, tirx.min(ch, ic - 1), tirx.min(tirx.max(y, 0), h - 1), tirx.min(tirx.max(xx, 0), w_ - 1)]
        padded = tirx.if_then_else(inside, _to_s8(value, shift), zero.astype("int8"))
        return tirx.if_then_else(k < k_ext, padded, tirx.const(0, "int8"))

    acc = _gemm(te.compute((b_ext * oh * ow, kp), operand, name="int8_col"), wp)
    return te.compute((b_ext, columns, oh, ow), lambda b, n, y, xx: acc[_ravel([b, y, xx], [b_ext, oh, ow]), n]
                      - zero * colsum[n], name="int8_correct")
