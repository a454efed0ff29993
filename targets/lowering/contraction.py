"""Converters of contractions: MatMul, Gemm, Conv and ConvTranspose (1-D and 2-D)."""

from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.relax import op as R

from targets.lowering.elementwise import scalar
from targets.lowering.packed import dense_packed, pack_dense, panel_width
from targets.lowering.packed_bf16 import computes_in_bf16, dense_bf16, pack_dense_bf16
from targets.lowering.registry import Call, converter
from targets.lowering.spatial import transpose_pads, window
from targets.schedules.dot import KERNELS


@converter("MatMul")
def _matmul(c: Call) -> relax.Expr:
    weight = c.weight(1)
    if weight is not None and _bf16(c, weight):
        return _dense_bf16(c, c.arg(0), weight)
    nr = _panel(c, weight)
    if weight is not None and nr:
        return _dense_packed(c, c.arg(0), weight, nr)
    return R.matmul(c.arg(0), c.arg(1))


def _panel(c: Call, w: np.ndarray | None) -> int:
    """The panel width a [K, N] float weight of the input's dtype is packed with; 0: not packed."""
    if w is None or not c.pack or w.ndim != 2 or c.rank(0) < 2:
        return 0
    if not np.issubdtype(w.dtype, np.floating) or str(w.dtype) != c.dtype(0):
        return 0
    return panel_width(w.shape[1], c.pack)


def _bf16(c: Call, w: np.ndarray) -> bool:
    """Whether a [K, N] weight computes on the CPU's bf16 kernel (``--precision bf16``)."""
    if not c.bf16 or w.ndim != 2 or c.rank(0) < 2 or c.dtype(0) != "float32" or w.dtype != np.float32:
        return False
    rows = c.shape(0)[-2]
    return isinstance(rows, int) and computes_in_bf16(KERNELS[c.bf16], rows, w.shape[1], w.shape[0])


def _dense_bf16(c: Call, a: relax.Expr, weight: np.ndarray) -> relax.Expr:
    kernel = KERNELS[c.bf16]
    packed = c.relaid_weight(1, pack_dense_bf16(kernel, weight), "bf16")  # rounded and packed once, here
    return c.bb.emit_te(dense_bf16, a, packed, kernel=kernel.name, primfunc_name_hint="bf16_dense")


def _dense_packed(c: Call, a: relax.Expr, weight: np.ndarray, nr: int) -> relax.Expr:
    packed = c.relaid_weight(1, pack_dense(weight, nr), f"p{nr}")  # packed once, at compile time
    return c.bb.emit_te(dense_packed, a, packed, primfunc_name_hint="dense_packed")


@converter("Gemm")
def _gemm(c: Call) -> relax.Expr:
    # Y = alpha * A' @ B' + beta * C, with A' = A^T when transA (likewise B), C broadcast to Y.
    a, b, dt = c.arg(0), c.arg(1), c.dtype(0)
    if c.attr("transA", 0):
        a = c.emit(R.permute_dims(a, [1, 0]))
    weight = c.weight(1)
    if weight is not None and c.attr("transB", 0):
        weight = weight.T  # transposed once here, not on every call
    nr = _panel(c, weight)
    if weight is not None and _bf16(c, weight):
        y = _dense_bf16(c, a, weight)
    elif weight is not None and nr:
        y = _dense_packed(c, a, weight, nr)
    else:
        if weight is not None and c.attr("transB", 0):
            b = c.relaid_weight(1, weight, "T")
        elif c.attr("transB", 0):
            b = c.emit(R.permute_dims(b, [1, 0]))
        y = c.emit(R.matmul(a, b))
    alpha, beta = float(c.attr("alpha", 1.0)), float(c.attr("beta", 1.0))
    if alpha != 1.0:
        y = c.emit(R.multiply(y, scalar(alpha, dt)))
    if not c.has(2) or beta == 0.0:
        return y
    bias = c.arg(2) if beta == 1.0 else c.emit(R.multiply(c.arg(2), scalar(beta, dt)))
    return R.add(y, bias)


_CONV = {1: (R.nn.conv1d, "NCW", "OIW"), 2: (R.nn.conv2d, "NCHW", "OIHW"), 3: (R.nn.conv3d, "NCDHW", "OIDHW")}
_CONV_T = {1: (R.nn.conv1d_transpose, "NCW", "IOW"), 2: (R.nn.conv2d_transpose, "NCHW", "IOHW")}


@converter("Conv")
def _conv(c: Call) -> relax.Expr:
    x, w = c.arg(0), c.arg(1)
    spatial, kernel = c.shape(0)[2:], c.shape(1)[2:]
    if len(spatial) not in _CONV:
        raise c.fail(f"{len(spatial)}-D convolution is not supported (1-D, 2-D and 3-D are)")
    fn, layout, kernel_layout = _CONV[len(spatial)]
    win = window(c, spatial, kernel)
    y = fn(x, w, strides=win.strides, padding=win.pads, dilation=win.dilations,
           groups=int(c.attr("group", 1)), data_layout=layout, kernel_layout=kernel_layout)
    return _add_channel_bias(c, y, len(spatial))


@converter("ConvTranspose")
def _conv_transpose(c: Call) -> relax.Expr:
    x, w = c.arg(0), c.arg(1)
    spatial, kernel = c.shape(0)[2:], c.shape(1)[2:]
    if len(spatial) not in _CONV_T:
        raise c.fail(f"{len(spatial)}-D transposed convolution is not supported (1-D and 2-D are)")
    fn, layout, kernel_layout = _CONV_T[len(spatial)]
    win = window(c, spatial, kernel)
    output_padding = list(c.attr("output_padding", [0] * len(spatial)))
    pads = transpose_pads(c, spatial, kernel, win, output_padding)
    y = fn(x, w, strides=win.strides, padding=pads, output_padding=output_padding,
           dilation=win.dilations, groups=int(c.attr("group", 1)), data_layout=layout,
           kernel_layout=kernel_layout)
    return _add_channel_bias(c, y, len(spatial))


def _add_channel_bias(c: Call, y: relax.Expr, n_spatial: int) -> relax.Expr:
    if not c.has(2):
        return y
    y = c.emit(y)
    bias = c.emit(R.reshape(c.arg(2), [1, -1] + [1] * n_spatial))
    return R.add(y, bias)
