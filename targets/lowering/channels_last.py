"""Channels-last (NHWC) lowering of convolutional networks, for the CPU targets.

The IR follows ONNX, so images are NCHW. On a CPU the fast layout keeps channels innermost:
a convolution becomes a register-tiled GEMM whose vectors run along output channels (multiples
of 8 or 16 in real networks) and depthwise convolutions vectorise along channels too. So 2-D
convolutions are lowered NHWC with HWIO weights laid out at compile time, and the values they
produce stay NHWC through every op below that does not care about the layout (elementwise
ops, pools, channel concatenation). A transpose back to NCHW is emitted once, where a
layout-sensitive op (Reshape, Flatten, a graph output) first needs the value.

Each converter here returns None when it does not apply; the node then takes the ordinary
NCHW converter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from tvm import relax
from tvm.relax import op as R

from compiler.errors import EffarchError
from compiler.ir.core import Node
from targets.lowering import space_to_depth, winograd
from targets.lowering.depthwise_int8 import depthwise_integer_nhwc
from targets.lowering.packed import conv2d_nhwc_packed, conv_packable, pack_conv, panel_width
from targets.lowering.packed_bf16 import computes_in_bf16, conv2d_nhwc_bf16, pack_conv_bf16
from targets.lowering.quantized import conv_integer_nhwc
from targets.lowering.registry import CONVERTERS, Call, dims
from targets.lowering.spatial import window
from targets.schedules.dot import KERNELS

TO_NHWC = [0, 2, 3, 1]
TO_NCHW = [0, 3, 1, 2]

# Ops whose every output element depends only on the same element of each input (after
# broadcasting): they compute the same in either layout.
ELEMENTWISE = frozenset({
    "Abs", "Neg", "Exp", "Log", "Sqrt", "Floor", "Ceil", "Erf", "Sin", "Cos", "Relu", "Sigmoid", "Tanh",
    "Sign", "Round", "Identity", "Reciprocal", "LeakyRelu", "Elu", "HardSigmoid", "HardSwish", "Gelu",
    "Softplus", "Clip", "Cast", "Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow",
})

# Ops that are elementwise when their parameters (inputs after the first) have one element each.
PER_TENSOR = frozenset({"QuantizeLinear", "DequantizeLinear"})

NhwcConverter = Callable[[Any, Node], relax.Expr | None]


def lower_nhwc(lowering: Any, node: Node) -> relax.Expr | None:
    """The node lowered channels-last (its output NHWC), or None to lower it as usual."""
    if len(node.outputs) != 1 or node.body is not None or node.domain:
        return None
    out_type = node.outputs[0].type
    if out_type is None or out_type.rank != 4:
        return None
    if node.op == "Conv":
        return _conv(lowering, node)
    if node.op == "ConvInteger":
        packed = conv_integer_nhwc(lowering, node)
        return packed if packed is not None else depthwise_integer_nhwc(lowering, node)
    if node.op in ELEMENTWISE or (node.op in PER_TENSOR and _per_tensor(node)):
        return _elementwise(lowering, node)
    if node.op in ("MaxPool", "AveragePool"):
        return _pool(lowering, node)
    if node.op in ("GlobalAveragePool", "GlobalMaxPool") and lowering.is_nhwc(node.inputs[0]):
        fn = R.mean if node.op == "GlobalAveragePool" else R.max
        return fn(lowering.nhwc(node.inputs[0]), [1, 2], keepdims=True)
    if node.op == "Concat":
        return _concat(lowering, node)
    return None


def _conv(lowering: Any, node: Node) -> relax.Expr | None:
    x, w = node.inputs[0], node.inputs[1]
    weight = lowering.weight_value(w)
    if x is None or w is None or weight is None or weight.ndim != 4:
        return None
    c = lowering.call(node, nchw=False)
    win = window(c, _spatial(x), list(weight.shape[2:]))
    groups = int(c.attr("group", 1))
    nr = panel_width(weight.shape[0], c.pack) if c.pack else 0
    if c.bf16 and groups == 1 and len(win.pads) == 4 and weight.dtype == np.float32 and _static_batch(x) \
            and computes_in_bf16(KERNELS[c.bf16], _out_width(x, win), weight.shape[0], weight.shape[1]):
        kernel = KERNELS[c.bf16]
        packed = c.relaid_weight(1, pack_conv_bf16(kernel, weight), "bf16")  # rounded and packed once, here
        y = c.bb.emit_te(conv2d_nhwc_bf16, lowering.nhwc(x), packed, strides=win.strides, pads=win.pads,
                         dilations=win.dilations, kernel=kernel.name, primfunc_name_hint="bf16_conv2d")
    elif (lowering.winograd and _static_batch(x) and len(win.pads) == 4
            and winograd.applies(weight.shape, win.strides, win.dilations, groups, nr)):
        u = c.relaid_weight(1, winograd.transform_weights(weight, nr), f"winograd{nr}")  # G g G^T, once
        y = c.bb.emit_te(winograd.conv2d_nhwc_winograd, lowering.nhwc(x), u, pads=win.pads,
                         primfunc_name_hint="conv2d_nhwc_winograd")
    elif (lowering.space_to_depth and len(win.pads) == 4 and _static_batch(x)
            and space_to_depth.applies(weight.shape, win.strides, win.dilations, groups)
            and (folded := _folded(lowering, x, list(weight.shape[2:]), win.pads)) is not None):
        y = space_to_depth.conv2d(folded, c.relaid_weight(1, space_to_depth.fold_weight(weight), "s2d"))
    elif nr and conv_packable(weight.shape[0], weight.shape[1], groups, nr) and len(win.pads) == 4:
        packed = c.relaid_weight(1, pack_conv(weight, nr), f"p{nr}")  # once, at compile time
        y = c.bb.emit_te(conv2d_nhwc_packed, lowering.nhwc(x), packed, strides=win.strides, pads=win.pads,
                         dilations=win.dilations, groups=groups, primfunc_name_hint="conv2d_nhwc_packed")
    else:
        hwio = c.relaid_weight(1, weight.transpose(2, 3, 1, 0), "HWIO")  # OIHW -> HWIO, once, here
        y = R.nn.conv2d(lowering.nhwc(x), hwio, strides=win.strides, padding=win.pads, dilation=win.dilations,
                        groups=groups, data_layout="NHWC", kernel_layout="HWIO")
    if not c.has(2):
        return y
    y = c.emit(y)
    return R.add(y, c.emit(R.reshape(c.arg(2), [1, 1, 1, -1])))


def _folded(lowering: Any, x: Any, kernel: list[int], pads: list[int]) -> relax.Expr | None:
    """``x`` folded for ``space_to_depth.conv2d``: a kernel of its own, before the group that convolves it."""
    def fold(bb: relax.BlockBuilder, value: relax.Expr, nchw: bool) -> relax.Expr:
        return bb.emit_te(space_to_depth.fold_input, value, nchw, kernel, pads, primfunc_name_hint="space_to_depth")

    return lowering.folded_input(x, f"s2d{kernel}{pads}", fold)  # type: ignore[no-any-return]


def _out_width(x: Any, win: Any) -> int:
    """The output width of a 2-D convolution of ``x`` with window ``win`` (pads [top, left, bottom, right])."""
    w = _spatial(x)[1]
    k = win.kernel[1]
    return (w + win.pads[1] + win.pads[3] - win.dilations[1] * (k - 1) - 1) // win.strides[1] + 1


def _static_batch(v: Any) -> bool:
    shape = v.type.shape if v.type is not None else None
    return shape is not None and len(shape) > 0 and isinstance(shape[0], int)


def _per_tensor(node: Node) -> bool:
    params = [v for v in node.inputs[1:] if v is not None]
    return all(v.type is not None and v.type.is_static and v.type.numel() == 1 for v in params)


def _spatial(v: Any) -> list[int]:
    """H, W of a 4-D value, from its IR type (NCHW); the batch may be symbolic."""
    hw = list(v.type.shape[2:])
    if not all(isinstance(d, int) for d in hw):
        raise EffarchError(f"'{v.name}' has symbolic spatial dims {v.type}; pass --shape name=... to fix them")
    return hw


def _elementwise(lowering: Any, node: Node) -> relax.Expr | None:
    """Only where a 4-D input is already NHWC: the others are brought to it (rank-aligned first)."""
    present = [v for v in node.inputs if v is not None]
    if not any(lowering.is_nhwc(v) for v in present):
        return None
    c = lowering.call(node, nchw=False)
    c.args = [None if v is None else _aligned(lowering, c, v) for v in node.inputs]
    return CONVERTERS[node.op](c)  # type: ignore[return-value]


def _aligned(lowering: Any, c: Call, v: Any) -> relax.Expr:
    if lowering.is_nhwc(v):
        return lowering.nhwc(v)
    expr = lowering.expr(v)
    shape = dims(expr)
    if len(shape) == 0:
        return expr
    if len(shape) < 4:  # numpy broadcasting aligns from the right: make it 4-D first
        expr = c.emit(R.reshape(expr, [1] * (4 - len(shape)) + shape))
    return c.emit(R.permute_dims(expr, TO_NHWC))


def _pool(lowering: Any, node: Node) -> relax.Expr | None:
    if not lowering.is_nhwc(node.inputs[0]) or node.attrs.get("ceil_mode", 0) or len(node.outputs) > 1:
        return None
    c = lowering.call(node, nchw=False)
    win = window(c, _spatial(node.inputs[0]), list(c.attr("kernel_shape")))
    x = lowering.nhwc(node.inputs[0])
    if node.op == "MaxPool":
        return R.nn.max_pool2d(x, pool_size=win.kernel, strides=win.strides, padding=win.pads,
                               dilation=win.dilations, layout="NHWC")
    return R.nn.avg_pool2d(x, pool_size=win.kernel, strides=win.strides, padding=win.pads,
                           dilation=win.dilations, count_include_pad=bool(c.attr("count_include_pad", 0)),
                           layout="NHWC")


def _concat(lowering: Any, node: Node) -> relax.Expr | None:
    axis = int(node.attrs.get("axis", 1))
    if axis not in (1, -3) or not any(lowering.is_nhwc(v) for v in node.inputs):
        return None
    c = lowering.call(node, nchw=False)
    return R.concat([_aligned(lowering, c, v) for v in node.inputs], axis=3)
