"""Converters of MaxPool, AveragePool (1-D to 3-D, ceil_mode, pads) and the global pools."""

from __future__ import annotations

from tvm import relax
from tvm.relax import op as R

from targets.lowering.registry import Call, converter, static_shape
from targets.lowering.spatial import Window, window

_LAYOUT = {1: "NCW", 2: "NCHW", 3: "NCDHW"}
_MAX = {1: R.nn.max_pool1d, 2: R.nn.max_pool2d, 3: R.nn.max_pool3d}
_AVG = {1: R.nn.avg_pool1d, 2: R.nn.avg_pool2d, 3: R.nn.avg_pool3d}


@converter("MaxPool", "AveragePool")
def _pool(c: Call) -> relax.Expr:
    if c.op == "MaxPool" and len(c.node.outputs) > 1:
        raise c.fail("the Indices output of MaxPool is not supported; use only its first output")
    if c.op == "MaxPool" and c.attr("storage_order", 0):
        raise c.fail("storage_order=1 is not supported")
    spatial = c.shape(0)[2:]
    n = len(spatial)
    if n not in _LAYOUT:
        raise c.fail(f"{n}-D pooling is not supported (1-D to 3-D are)")
    win = window(c, spatial, list(c.attr("kernel_shape")))
    fn = (_MAX if c.op == "MaxPool" else _AVG)[n]
    ceil_mode = bool(c.attr("ceil_mode", 0))
    y = fn(c.arg(0), pool_size=win.kernel, strides=win.strides, padding=win.pads,
           dilation=win.dilations, ceil_mode=ceil_mode,
           count_include_pad=bool(c.attr("count_include_pad", 0)), layout=_LAYOUT[n])
    if not ceil_mode:
        return y
    return _drop_windows_starting_in_padding(c, c.emit(y), spatial, win)


def _drop_windows_starting_in_padding(c: Call, y: relax.Expr, spatial: list[int], win: Window) -> relax.Expr:
    # ONNX (like PyTorch) drops a last ceil-mode window that would start in the end padding;
    # Relax keeps it, so slice it off.
    n = len(spatial)
    keep = []
    for i, size in enumerate(spatial):
        span = (win.kernel[i] - 1) * win.dilations[i] + 1
        out = -(-(size + win.pads[i] + win.pads[n + i] - span) // win.strides[i]) + 1
        if (out - 1) * win.strides[i] >= size + win.pads[i]:
            out -= 1
        keep.append(out)
    have = static_shape(y)[2:]
    if have == keep:
        return y
    return R.strided_slice(y, list(range(2, n + 2)), [0] * n, keep)


@converter("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(c: Call) -> relax.Expr:
    axes = list(range(2, c.rank(0)))
    fn = R.mean if c.op == "GlobalAveragePool" else R.max
    return fn(c.arg(0), axes, keepdims=True)
