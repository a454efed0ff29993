"""integer-ops: a quantized Conv/MatMul/Gemm (QDQ form) becomes an integer op and a float rescale.

    Conv(DQ(xq, sx, zx), DQ(wq, sw, 0), b)  ->  Cast(ConvInteger(xq, wq, zx)) * (sx * sw) + b

(likewise ``MatMulInteger`` for MatMul and Gemm, whose transposed weight is transposed once here).
``quantize-early`` moves a QuantizeLinear above MaxPool, Reshape and other data movement, so
they run on u8 and the quantization joins the previous layer's epilogue.
The product then runs on integers (u8 x i8, accumulated in i32) and only the per-channel rescale,
bias and whatever follows are float; ``fuse-operators`` puts them, and the next layer's
QuantizeLinear, in the integer kernel's epilogue. All ops are ONNX's, so onnxruntime still runs
the graph as the reference.
"""

from __future__ import annotations

import numpy as np

from compiler.ir import DType, Node, TensorType, Value
from compiler.pass_manager import register_pass
from compiler.pass_manager.rules import Match, MatchResult, Rewriter, Rule, RuleSet, const, producer

SCALAR_INPUT = "the activation's scale and zero point are not constant scalars"


def match_quantized(node: Node) -> MatchResult:
    x_dq, w_dq = producer(node.inputs[0], "DequantizeLinear"), producer(node.inputs[1], "DequantizeLinear")
    if x_dq is None or w_dq is None:
        return None  # not quantized: no candidate
    reason = _activation_refusal(x_dq) or _weight_refusal(w_dq, node) or _op_refusal(node)
    if reason:
        return reason
    return Match(node, bind={"x": x_dq, "w": w_dq})


def _activation_refusal(dq: Node) -> str | None:
    xq, s, z = (list(dq.inputs) + [None])[:3]
    if xq is None or xq.type is None or xq.type.dtype not in (DType.U8, DType.I8):
        return "the activation is not 8-bit"
    sa, za = const(s), const(z)
    if sa is None or sa.size != 1 or (z is not None and (za is None or za.size != 1)):
        return SCALAR_INPUT
    return None


def _weight_refusal(dq: Node, node: Node) -> str | None:
    wq, s, z = (list(dq.inputs) + [None])[:3]
    w, sw, zw = const(wq), const(s), const(z)
    if w is None or w.dtype != np.int8 or sw is None:
        return "the weight is not a constant i8 with constant scales"
    if zw is not None and np.any(zw != 0):
        return "the weight's zero point is not 0 (symmetric weights only)"
    if sw.size > 1 and int(dq.attr("axis", 1)) % w.ndim != _out_axis(node, w.ndim):
        return "the weight's scales are not per output channel"
    if int(dq.attr("block_size", 0)):
        return "blocked weight scales are not an integer product"
    return None


def _op_refusal(node: Node) -> str | None:
    if node.op == "Gemm" and node.attr("transA", 0):
        return "Gemm with transA"
    if node.op == "MatMul" and (node.inputs[1] is None or node.inputs[1].type is None
                                or node.inputs[1].type.rank != 2):
        return "the weight is not a matrix"
    return None


def _out_axis(node: Node, rank: int) -> int:
    if node.op == "Conv" or (node.op == "Gemm" and node.attr("transB", 0)):
        return 0
    return rank - 1


def rewrite(rw: Rewriter, m: Match) -> None:
    node: Node = m.anchor
    x_dq, w_dq = m.bind["x"], m.bind["w"]
    xq, sx, zx = (list(x_dq.inputs) + [None])[:3]
    wq_value = w_dq.inputs[0]
    wq, sw = const(wq_value), const(w_dq.inputs[1])
    assert wq is not None and sw is not None and xq is not None  # checked in match
    out = node.outputs[0]
    scale = float(np.asarray(const(sx)).reshape(())) * sw.astype(np.float64).reshape(-1)
    if node.op == "Conv":
        acc = rw.node("ConvInteger", [xq, wq_value, zx], dict(node.attrs), types=[_i32(out)])
        shape = [1, -1, 1, 1]
    else:
        weight = rw.constant(f"{wq_value.name}_T", wq.T) if node.op == "Gemm" and node.attr("transB", 0) else wq_value
        acc = rw.node("MatMulInteger", [xq, weight, zx], types=[_i32(out)])
        shape = [-1]
        scale = scale * float(node.attr("alpha", 1.0)) if node.op == "Gemm" else scale
    y = rw.node("Cast", [acc.outputs[0]], {"to": DType.F32.onnx_code}, types=[out.type]).outputs[0]
    y = rw.node("Mul", [y, rw.constant(f"{out.name}_rescale", _per_channel(scale, shape))], types=[out.type]).outputs[0]
    bias = _bias(node)
    if bias is not None:
        y = rw.node("Add", [y, rw.constant(f"{out.name}_bias", _per_channel(bias, shape))], types=[out.type]).outputs[0]
    rw.replace(out, y)


def _i32(out: Value) -> TensorType:
    return TensorType(DType.I32, out.type.shape if out.type is not None else None)


def _per_channel(values: np.ndarray, shape: list[int]) -> np.ndarray:
    return np.asarray(values, np.float32).reshape(shape if values.size > 1 else [])


def _bias(node: Node) -> np.ndarray | None:
    if len(node.inputs) < 3 or node.inputs[2] is None:
        return None
    b = const(node.inputs[2])
    if b is None:
        return None
    beta = float(node.attr("beta", 1.0)) if node.op == "Gemm" else 1.0
    return (b.astype(np.float64) * beta).reshape(-1)


def _bias_refusal(node: Node) -> str | None:
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        b = const(node.inputs[2])
        if b is None:
            return "its bias is computed, not a constant"
        if node.op == "Gemm" and b.size > 1 and b.ndim == 2 and b.shape[0] != 1:
            return "its bias is a matrix, not one value per column"
    return None


def match(node: Node) -> MatchResult:
    outcome = match_quantized(node)
    if isinstance(outcome, Match):
        return _bias_refusal(node) or outcome
    return outcome


# Ops that move or select elements without arithmetic: Q(op(x)) == op(Q(x)) for a per-tensor
# QuantizeLinear, which is monotone (MaxPool picks the same element; pads map -inf to u8's 0).
DATA_MOVEMENT = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze")


def match_hoist(node: Node) -> MatchResult:
    src = node.inputs[0]
    mover = producer(src, *DATA_MOVEMENT)
    if mover is None or src is None:
        return None
    scale = const(node.inputs[1])
    if scale is None or scale.size != 1:
        return "its scale is not one constant per tensor"
    if len(src.uses) != 1 or src in node.graph.outputs:
        return f"the {mover.op} output has other readers, which need it in float"
    return Match(node, absorbed=(mover,), bind={"mover": mover})


def hoist(rw: Rewriter, m: Match) -> None:
    q_node, mover = m.anchor, m.bind["mover"]
    x = mover.inputs[0]
    assert x is not None
    out = q_node.outputs[0]
    x_type = TensorType(out.type.dtype if out.type else DType.U8, x.type.shape if x.type is not None else None)
    xq = rw.node("QuantizeLinear", [x, *q_node.inputs[1:]], dict(q_node.attrs), types=[x_type]).outputs[0]
    moved = rw.node(mover.op, [xq, *mover.inputs[1:]], dict(mover.attrs), types=[out.type]).outputs[0]
    rw.replace(out, moved)


@register_pass
class IntegerOps(RuleSet):
    name = "integer-ops"
    description = "quantized Conv/MatMul/Gemm (QDQ) -> ConvInteger/MatMulInteger with a float rescale"
    rules = (Rule("integer-product", "Conv(DQ(xq), DQ(wq), b) -> Cast(ConvInteger(xq, wq, zx)) * sx*sw + b",
                  ("Conv", "MatMul", "Gemm"), match, rewrite),
             Rule("quantize-early", "Q(MaxPool|Reshape|...(x)) -> MaxPool|Reshape|...(Q(x))",
                  ("QuantizeLinear",), match_hoist, hoist))
