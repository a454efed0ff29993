"""fold-batchnorm: fold an inference BatchNormalization into the Conv, ConvTranspose, Gemm or MatMul
that feeds it, when the weights and every BN parameter are constants.

BN(y) = s * y + t per channel c (axis 1), with s = gamma / sqrt(var + eps), t = beta - mean * s.
- Conv:           W[c_out, c_in/g, k...] scaled along axis 0; b' = s * b + t (b = 0 when absent).
- ConvTranspose:  W[c_in, c_out/g, k...]: output channel c = group * (c_out/g) + j lives on axis 1
  *within each group*, so W is viewed as [g, c_in/g, c_out/g, k...] and scaled on its third axis.
- Gemm:           C' = s * beta * C + t, B scaled along its output axis (columns, or rows when transB);
  alpha is kept. A Gemm without C gets one.
- MatMul x[m, k] @ W[k, n]: becomes Gemm(x, W * s, t); only rank-2 products, where BN's channel
  axis is the product's column axis.
The arithmetic runs in float64 and is rounded once to the weight's dtype; the node's epsilon is
used (onnxoptimizer #133 used a default one), a missing bias counts as zero (#178), and grouped
kernels keep their layout (#255).
"""

from __future__ import annotations

import numpy as np

from compiler.ir import Node
from compiler.pass_manager import register_pass
from compiler.pass_manager.rules import Match, MatchResult, Rewriter, Rule, RuleSet, const, producer, users_reason

FOLDABLE = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def match_bn(node: Node) -> MatchResult:
    prev = producer(node.inputs[0], *FOLDABLE)
    if prev is None:
        x = node.inputs[0]
        source = f"{x.producer.op}" if x is not None and x.producer is not None else "no node"
        return f"its input comes from {source}, not from {', '.join(FOLDABLE)}"
    params = [const(v) for v in node.inputs[1:5]]
    reason = (users_reason(prev.outputs[0], node.graph, prev.op) or _bn_refusal(node, params)
              or _weight_refusal(prev))
    if reason:
        return reason
    scale, shift = bn_affine(node, params)  # type: ignore[arg-type]  # _bn_refusal checked the payloads
    return Match(node, absorbed=(prev,), origin=prev, bind={"prev": prev, "scale": scale, "shift": shift},
                 detail=f"into {prev.op} %{prev.outputs[0].name}")


def _bn_refusal(node: Node, params: list[np.ndarray | None]) -> str | None:
    if node.attr("training_mode", 0):
        return "BatchNormalization is in training mode"
    if any(v.uses for v in node.outputs[1:]):
        return "BatchNormalization's running statistics are used"
    if any(p is None for p in params):
        return "BatchNormalization parameters are not all constant"
    return None


def _weight_refusal(prev: Node) -> str | None:
    w = const(prev.inputs[1])
    if w is None:
        return f"{prev.op} weight is not constant"
    if len(prev.inputs) > 2 and prev.inputs[2] is not None and const(prev.inputs[2]) is None:
        return f"{prev.op} bias is not constant"
    if not np.issubdtype(w.dtype, np.floating):
        return f"{prev.op} weight is {w.dtype}, not a float"
    if prev.op == "MatMul":
        x = prev.inputs[0]
        if w.ndim != 2 or x is None or x.type is None or x.type.rank != 2:
            return "MatMul is not a rank-2 product, so BN's channel axis is not its column axis"
    if prev.op == "Gemm" and prev.attr("transA", 0) not in (0, 1):
        return "Gemm transA is not 0 or 1"
    return None


def bn_affine(node: Node, params: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(s, t) in float64 with BN(y) = s * y + t per channel."""
    gamma, beta, mean, var = (p.astype(np.float64).reshape(-1) for p in params)
    s = gamma / np.sqrt(var + float(node.attr("epsilon", 1e-5)))
    return s, beta - mean * s


def rewrite_bn(rw: Rewriter, m: Match) -> None:
    prev: Node = m.bind["prev"]
    s, t = m.bind["scale"], m.bind["shift"]
    w = const(prev.inputs[1])
    assert w is not None  # checked in match
    old_bias = const(prev.inputs[2]) if len(prev.inputs) > 2 else None
    weight, bias = FOLD[prev.op](prev, w.astype(np.float64), old_bias, s, t)
    new_w = rw.constant(f"{prev.inputs[1].name}_bn" if prev.inputs[1] else "w_bn", weight.astype(w.dtype))
    new_b = rw.constant(f"{new_w.name}_bias", bias.astype(w.dtype))
    op = "Gemm" if prev.op == "MatMul" else prev.op
    attrs = {} if prev.op == "MatMul" else dict(prev.attrs)
    if op == "Gemm":
        attrs["beta"] = 1.0
    out = m.anchor.outputs[0]
    node = rw.node(op, [prev.inputs[0], new_w, new_b], attrs, types=[out.type])
    rw.replace(out, node.outputs[0])


def _conv(prev: Node, w: np.ndarray, b: np.ndarray | None, s: np.ndarray, t: np.ndarray) -> tuple:
    shape = (-1,) + (1,) * (w.ndim - 1)
    return w * s.reshape(shape), _bias(b, s, t)


def _conv_transpose(prev: Node, w: np.ndarray, b: np.ndarray | None, s: np.ndarray, t: np.ndarray) -> tuple:
    groups = int(prev.attr("group", 1))
    c_in, per_group = w.shape[0], w.shape[1]
    grouped = w.reshape(groups, c_in // groups, per_group, *w.shape[2:])
    factor = s.reshape(groups, 1, per_group, *(1,) * (w.ndim - 2))
    return (grouped * factor).reshape(w.shape), _bias(b, s, t)


def _gemm(prev: Node, w: np.ndarray, c: np.ndarray | None, s: np.ndarray, t: np.ndarray) -> tuple:
    weight = w * (s.reshape(-1, 1) if prev.attr("transB", 0) else s.reshape(1, -1))
    beta = float(prev.attr("beta", 1.0))
    bias = t if c is None else s * beta * c.astype(np.float64) + t
    return weight, bias


def _matmul(prev: Node, w: np.ndarray, b: np.ndarray | None, s: np.ndarray, t: np.ndarray) -> tuple:
    return w * s.reshape(1, -1), t


def _bias(b: np.ndarray | None, s: np.ndarray, t: np.ndarray) -> np.ndarray:
    return t if b is None else s * b.astype(np.float64) + t


FOLD = {"Conv": _conv, "ConvTranspose": _conv_transpose, "Gemm": _gemm, "MatMul": _matmul}


@register_pass
class FoldBatchNorm(RuleSet):
    name = "fold-batchnorm"
    description = "fold inference BatchNormalization into the Conv, ConvTranspose, Gemm or MatMul before it"
    rules = (Rule("bn-into-producer", "BN(Conv(x, W, b)) -> Conv(x, W*s, b*s + t), s = gamma/sqrt(var+eps)",
                  ("BatchNormalization",), match_bn, rewrite_bn),)
