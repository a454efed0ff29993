"""Depthwise ``ConvInteger`` (one input channel per group, one output channel per input channel),
channels-last, accumulated in int32 on vectors of channels.

No dot-product instruction helps here: each output sums only ``KH x KW`` products, along the
window, while the channels that sit side by side in memory are independent. So the kernel is the
plain multiply-accumulate the ``contraction`` schedule tiles (vectors along channels), in int32:

    W' = W - zw                       (compile time; per tensor or per channel)
    Y  = sum_{kh,kw} X W'  -  za * colsum(W')

with ``colsum`` the per-channel sum of ``W'``. Padding holds ``za``, so that it contributes
``(za - za) W' = 0``, as ONNX's definition requires. The weight is stored ``[KH, KW, C]`` in int16 (it
is re-read for every output pixel: half the cache footprint of int32).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tvm import relax, te, tirx
from tvm.relax import op as R

from compiler.ir.core import Node
from targets.lowering.spatial import window


def depthwise_integer_nhwc(lowering: Any, node: Node) -> relax.Expr | None:
    """A depthwise 2-D ConvInteger with a constant weight, NHWC; None where it does not apply."""
    c = lowering.call(node, nchw=False)
    x_type = node.inputs[0].type if node.inputs[0] is not None else None
    w = c.weight(1)
    if x_type is None or x_type.dtype.numpy_name not in ("uint8", "int8") or w is None or w.ndim != 4:
        return None
    channels, per_group = int(w.shape[0]), int(w.shape[1])
    if per_group != 1 or int(c.attr("group", 1)) != channels or int(x_type.static_shape()[1]) != channels:
        return None
    if c.has(2) and int(np.prod(c.shape(2))) != 1:
        return None
    w_hwc = _weight_minus_zero(c, w)
    if w_hwc is None:
        return None
    win = window(c, list(x_type.static_shape()[2:]), list(w.shape[2:]))
    za = c.emit(R.reshape(c.arg(2), [])) if c.has(2) else None
    wk = c.relaid_weight(1, w_hwc.astype(np.int16), "HWC")
    colsum = c.relaid_weight(1, w_hwc.sum(axis=(0, 1), dtype=np.int64).astype(np.int32), "colsum")
    return c.bb.emit_te(depthwise_nhwc_int8, lowering.nhwc(node.inputs[0]), wk, colsum, za, strides=win.strides,
                        pads=win.pads, dilations=win.dilations, primfunc_name_hint="int8_depthwise")


def _weight_minus_zero(c: Any, w: np.ndarray) -> np.ndarray | None:
    """``W - zw`` as int32 [KH, KW, C]; None if the zero point is not known or not per tensor/channel,
    or the result does not fit int16."""
    zero = np.zeros(1, np.int32)
    if c.has(3):
        known = c.consts[3]
        if known is None or known.size not in (1, w.shape[0]):
            return None
        zero = np.asarray(known).reshape(-1).astype(np.int32)
    w32 = w[:, 0].astype(np.int32) - zero.reshape(-1, 1, 1)
    if w32.size and (w32.min() < -32768 or w32.max() > 32767):
        return None
    return np.ascontiguousarray(w32.transpose(1, 2, 0))


def depthwise_nhwc_int8(x: te.Tensor, wk: te.Tensor, colsum: te.Tensor, za: te.Tensor | None, *,
                        strides: list[int], pads: list[int], dilations: list[int]) -> te.Tensor:
    """NHWC depthwise convolution of u8/s8 ``x`` with ``wk`` [KH, KW, C]; ``pads`` is [top, left,
    bottom, right]. Padding holds ``za`` so that it contributes nothing."""
    n_, h, w_, ch = (int(d) for d in x.shape)
    kh_ext, kw_ext, _ = (int(d) for d in wk.shape)
    top, left, bottom, right = pads
    pad_value = za[()] if za is not None else tirx.const(0, str(x.dtype))

    def pixel(b: tirx.Var, y: tirx.Var, xx: tirx.Var, c: tirx.Var) -> tirx.PrimExpr:
        inside = tirx.all(y >= top, y < h + top, xx >= left, xx < w_ + left)
        value = x[b, tirx.min(tirx.max(y - top, 0), h - 1), tirx.min(tirx.max(xx - left, 0), w_ - 1), c]
        return tirx.if_then_else(inside, value, pad_value)

    padded = te.compute((n_, h + top + bottom, w_ + left + right, ch), pixel, name="int8_pad") if any(pads) else x
    oh = (h + top + bottom - dilations[0] * (kh_ext - 1) - 1) // strides[0] + 1
    ow = (w_ + left + right - dilations[1] * (kw_ext - 1) - 1) // strides[1] + 1
    kh, kw = te.reduce_axis((0, kh_ext), "kh"), te.reduce_axis((0, kw_ext), "kw")

    def body(b: tirx.Var, y: tirx.Var, xx: tirx.Var, c: tirx.Var) -> tirx.PrimExpr:
        value = padded[b, y * strides[0] + kh * dilations[0], xx * strides[1] + kw * dilations[1], c]
        return te.sum(value.astype("int32") * wk[kh, kw, c].astype("int32"), axis=[kh, kw])

    acc = te.compute((n_, oh, ow, ch), body, name="int8_depthwise")
    if za is None:
        return acc
    zero = za[()].astype("int32")
    return te.compute(acc.shape, lambda b, y, xx, c: acc[b, y, xx, c] - zero * colsum[c], name="int8_correct")
