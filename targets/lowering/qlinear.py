"""QLinearMatMul and QLinearConv (opset-21 semantics): an integer product requantized.

``y = saturate(round_half_even(acc * (a_scale * b_scale / y_scale)) + y_zero_point)`` where ``acc``
is the int32 product of the zero-point-shifted operands (plus QLinearConv's int32 bias). As in
ONNX's reference, the multiplier is formed in the scales' own float type and applied to ``acc`` in
float64, so the rounding matches it exactly.
"""

from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.relax import op as R

from targets.lowering.registry import Call, converter
from targets.lowering.spatial import window

_RANGE = {"uint8": (0, 255), "int8": (-128, 127)}


def _shifted(c: Call, i: int, zero: int, zero_shape: list[int] | None = None) -> relax.Expr:
    """Input ``i`` as int32 minus its zero point (input ``zero``), reshaped to ``zero_shape``."""
    x = c.emit(R.astype(c.arg(i), "int32"))
    if not c.has(zero):
        return x
    z = R.astype(c.arg(zero), "int32")
    if int(np.prod(c.shape(zero))) == 1:
        z = R.reshape(z, [])
    elif zero_shape is not None:
        z = R.reshape(z, zero_shape)
    return c.emit(R.subtract(x, z))


def _param(c: Call, i: int, shape: list[int] | None) -> relax.Expr:
    """Scale ``i`` as a scalar (one element) or reshaped to broadcast (per row / column / channel)."""
    if int(np.prod(c.shape(i))) == 1:
        return c.emit(R.reshape(c.arg(i), []))
    return c.emit(R.reshape(c.arg(i), shape)) if shape is not None else c.arg(i)


def _requantize(c: Call, acc: relax.Expr, a_scale: relax.Expr, b_scale: relax.Expr, out: str) -> relax.Expr:
    y_scale = _param(c, 6, None)
    multiplier = c.emit(R.divide(R.multiply(a_scale, b_scale), y_scale))
    y = c.emit(R.multiply(R.astype(acc, "float64"), R.astype(multiplier, "float64")))
    if c.has(7):
        y = c.emit(R.add(y, R.astype(R.reshape(c.arg(7), []), "float64")))
    lo, hi = _RANGE[out]
    return R.astype(c.emit(R.clip(R.round(y), lo, hi)), out)


def _out_type(c: Call) -> str:
    out = c.dtype(7) if c.has(7) else c.dtype(0)
    if out not in _RANGE or c.dtype(0) not in _RANGE or c.dtype(3) not in _RANGE:
        raise c.fail(f"{c.op} takes u8/i8 operands and output, got {c.dtype(0)}, {c.dtype(3)} -> {out}")
    return out


@converter("QLinearMatMul")
def _qlinear_matmul(c: Call) -> relax.Expr:
    out = _out_type(c)
    a = _shifted(c, 0, 2, [-1, 1])  # a's zero point: one, or one per row
    b = _shifted(c, 3, 5)  # b's: one, or one per column
    acc = c.emit(R.matmul(a, b, out_dtype="int32"))
    return _requantize(c, acc, _param(c, 1, [-1, 1]), _param(c, 4, None), out)


@converter("QLinearConv")
def _qlinear_conv(c: Call) -> relax.Expr:
    out = _out_type(c)
    spatial, kernel = c.static(0)[2:], c.static(3)[2:]
    conv = {1: (R.nn.conv1d, "NCW", "OIW"), 2: (R.nn.conv2d, "NCHW", "OIHW"),
            3: (R.nn.conv3d, "NCDHW", "OIDHW")}.get(len(spatial))
    if conv is None:
        raise c.fail(f"{len(spatial)}-D QLinearConv is not supported (1-D to 3-D are)")
    per_channel = [-1] + [1] * (len(spatial) + 1)
    x = _shifted(c, 0, 2)
    w = _shifted(c, 3, 5, per_channel)
    win = window(c, spatial, kernel)
    fn, layout, kernel_layout = conv
    acc = c.emit(fn(x, w, strides=win.strides, padding=win.pads, dilation=win.dilations,
                    groups=int(c.attr("group", 1)), data_layout=layout, kernel_layout=kernel_layout,
                    out_dtype="int32"))
    if c.has(8):
        acc = c.emit(R.add(acc, R.reshape(R.astype(c.arg(8), "int32"), [-1] + [1] * len(spatial))))
    return _requantize(c, acc, _param(c, 1, None), _param(c, 4, [-1] + [1] * len(spatial)), out)
