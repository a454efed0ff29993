"""canonicalize-patterns: rewrite the primitive spellings of GELU, LayerNorm, HardSwish and SiLU that
exporters and hand-written models produce into one canonical form each.

Products are read as a multiset of factors and one scalar: Mul trees and Div-by-scalar nodes are
flattened, so ``x*0.5*(1+erf(x/sqrt2))``, ``0.5*x*(...)`` and ``x*((...)*0.5)`` are one pattern.
Inner nodes are absorbed only when the pattern is their single user. Scalars match within
``RTOL`` (exporters write 1/sqrt(2) as 0.70710677 or sqrt(2) as 1.4142135).

SiLU has no ONNX op: its canonical form is ``Mul(x, Sigmoid(x))`` (what torch.export writes, and
what the fusion rules look for); ``Mul(Sigmoid(x), x)`` is reordered to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from compiler.ir import Node, TensorType, Value
from compiler.pass_manager import register_pass
from compiler.pass_manager.rules import (
    Match,
    MatchResult,
    Rewrite,
    Rewriter,
    Rule,
    RuleSet,
    const,
    producer,
    static_shape,
)

RTOL = 1e-6
MAX_DEPTH = 6


@dataclass
class Product:
    """``scale * prod(factors)``; ``nodes``: the Mul/Div nodes flattened into it."""

    factors: list[Value] = field(default_factory=list)
    scale: float = 1.0
    nodes: list[Node] = field(default_factory=list)


def scalar(v: Value | None) -> float | None:
    a = const(v)
    return float(a.reshape(-1)[0]) if a is not None and a.size == 1 and a.dtype.kind == "f" else None


def product(v: Value, root: Node | None = None, depth: int = 0) -> Product:
    """Flatten the Mul/Div-by-scalar tree producing ``v`` (``root`` is flattened even when shared)."""
    node = producer(v, "Mul", "Div")
    inner = node is root or (node is not None and len(v.uses) == 1 and node.graph is not None
                             and v not in node.graph.outputs)
    if node is None or not inner or depth > MAX_DEPTH:
        return Product([v])
    a, b = node.inputs[0], node.inputs[1]
    assert a is not None and b is not None  # Mul and Div have two required inputs
    if node.op == "Div":
        d = scalar(b)
        if d is None or d == 0:
            return Product([v])
        p = product(a, None, depth + 1)
        return Product(p.factors, p.scale / d, [*p.nodes, node])
    parts = [_scalar_or_product(x, depth) for x in (a, b)]
    out = Product(nodes=[node])
    for part in parts:
        out.factors += part.factors
        out.scale *= part.scale
        out.nodes = part.nodes + out.nodes
    return out


def _scalar_or_product(v: Value, depth: int) -> Product:
    s = scalar(v)
    return Product([], s) if s is not None else product(v, None, depth + 1)


def private(v: Value | None) -> bool:
    """``v`` has one user and is no graph output: a pattern may absorb its producer."""
    graph = v.producer.graph if v is not None and v.producer is not None else None
    return v is not None and len(v.uses) == 1 and graph is not None and v not in graph.outputs


def close(a: float | None, b: float) -> bool:
    return a is not None and math.isclose(a, b, rel_tol=RTOL)


def add_one(v: Value, inner_op: str) -> tuple[Node, Node] | str | None:
    """``Add(1, inner_op(t))`` (either order) producing ``v``: (the Add, the inner node), or a reason."""
    add = producer(v, "Add")
    if add is None:
        return None
    for one, other in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
        inner = producer(other, inner_op)
        if close(scalar(one), 1.0) and inner is not None:
            if not (private(v) and private(other)):
                return f"the (1 + {inner_op}(...)) branch has users outside the pattern"
            return add, inner
    return None


def _split(p: Product, marker: str) -> tuple[Value, tuple[Node, Node]] | str | None:
    """(x, (Add, marker node)) when p is x * Add(1, marker(...)); None when no marker is there."""
    found = [(f, h) for f in p.factors if (h := add_one(f, marker)) is not None]
    if not found:
        return None
    factor, hit = found[0]
    if isinstance(hit, str):
        return hit
    if len(p.factors) != 2:
        return f"the product has {len(p.factors)} factors, not x and (1 + {marker}(...))"
    rest = p.factors[1] if p.factors[0] is factor else p.factors[0]
    return rest, hit


# ---- GELU -----------------------------------------------------------------------------------------
def match_gelu(node: Node) -> MatchResult:
    p = product(node.outputs[0], node)
    for marker, check in (("Erf", _erf_argument), ("Tanh", _tanh_argument)):
        split = _split(p, marker)
        if split is None:
            continue
        if isinstance(split, str):
            return split
        x, (add, inner) = split
        if not close(p.scale, 0.5):
            return f"the scale is {p.scale:g}, not 0.5"
        arg = check(inner.inputs[0], x)
        if isinstance(arg, str):
            return arg
        approximate = "none" if marker == "Erf" else "tanh"
        return Match(node, absorbed=(*p.nodes[:-1], add, inner, *arg), bind={"x": x, "approximate": approximate})
    return None


def _erf_argument(t: Value | None, x: Value) -> list[Node] | str:
    q = product(t) if t is not None else Product()
    if q.factors != [x] or not close(q.scale, 1 / math.sqrt(2)):
        return "the Erf argument is not x / sqrt(2)"
    return q.nodes


def _tanh_argument(u: Value | None, x: Value) -> list[Node] | str:
    # sqrt(2/pi) * (x + 0.044715 * x^3), the cube as Pow(x, 3) or x*x*x.
    q = product(u) if u is not None else Product()
    add = producer(q.factors[0], "Add") if len(q.factors) == 1 else None
    if add is None or not close(q.scale, math.sqrt(2 / math.pi)) or not private(q.factors[0]):
        return "the Tanh argument is not sqrt(2/pi) * (x + 0.044715 * x^3)"
    for lin, cub in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
        c = product(cub) if cub is not None else Product()
        cube = _cube(c, x)
        if lin is x and cube is not None and close(c.scale, 0.044715):
            return [*q.nodes, add, *c.nodes, *cube]
    return "the Tanh argument is not sqrt(2/pi) * (x + 0.044715 * x^3)"


def _cube(c: Product, x: Value) -> list[Node] | None:
    if c.factors == [x, x, x]:
        return []
    pow_ = producer(c.factors[0], "Pow") if len(c.factors) == 1 else None
    if pow_ is not None and pow_.inputs[0] is x and close(scalar(pow_.inputs[1]), 3.0) and private(c.factors[0]):
        return [pow_]
    return None


def rewrite_unary(op: str) -> Rewrite:
    def rewrite(rw: Rewriter, m: Match) -> None:
        out = m.anchor.outputs[0]
        attrs = {"approximate": m.bind["approximate"]} if op == "Gelu" else {}
        rw.replace(out, rw.node(op, [m.bind["x"]], attrs, types=[out.type]).outputs[0])
    return rewrite


# ---- HardSwish and SiLU ---------------------------------------------------------------------------
def match_hardswish(node: Node) -> MatchResult:
    p = product(node.outputs[0], node)
    if len(p.factors) != 2:
        return None
    for x, gate in (p.factors, reversed(p.factors)):
        hs = producer(gate, "HardSigmoid")
        if hs is not None and hs.inputs[0] is x and private(gate) and close(p.scale, 1.0):
            if not (close(hs.attr("alpha", 0.2), 1 / 6) and close(hs.attr("beta", 0.5), 0.5)):
                return "HardSigmoid is not alpha=1/6, beta=0.5"
            return Match(node, absorbed=(*p.nodes[:-1], hs), bind={"x": x})
        relu6 = _relu6_of_x_plus_3(gate, x)
        if isinstance(relu6, str):
            return relu6
        if relu6 is not None:
            if not close(p.scale, 1 / 6):
                return f"the scale is {p.scale:g}, not 1/6"
            return Match(node, absorbed=(*p.nodes[:-1], *relu6), bind={"x": x})
    return None


def _relu6_of_x_plus_3(gate: Value, x: Value) -> list[Node] | str | None:
    clip = producer(gate, "Clip")
    if clip is None or not private(gate):
        return None
    add = producer(clip.inputs[0], "Add")
    bounds = [scalar(v) for v in clip.inputs[1:3]] if len(clip.inputs) >= 3 else []
    relu6 = len(bounds) == 2 and bounds[0] == 0.0 and close(bounds[1], 6.0)
    three = next((scalar(v) for v in add.inputs if v is not x), None) if add is not None else None
    if add is None or not relu6 or x not in add.inputs or not close(three, 3.0) or not private(add.outputs[0]):
        return "the Clip is not Relu6(x + 3)"
    return [clip, add]


def match_silu_order(node: Node) -> MatchResult:
    a, b = node.inputs[0], node.inputs[1]
    sig = producer(a, "Sigmoid")
    if sig is None or sig.inputs[0] is not b or b is None:
        return None
    return Match(node, bind={"x": b, "gate": a}, detail="SiLU has no ONNX op; Mul(x, Sigmoid(x)) is canonical")


def rewrite_silu(rw: Rewriter, m: Match) -> None:
    out = m.anchor.outputs[0]
    rw.replace(out, rw.node("Mul", [m.bind["x"], m.bind["gate"]], types=[out.type]).outputs[0])


# ---- LayerNorm ------------------------------------------------------------------------------------
def match_layernorm(node: Node) -> MatchResult:
    # Div(Sub(x, RM(x)), Sqrt(Add(RM(Pow(Sub(x, RM(x)), 2)), eps)))
    d, std = node.inputs[0], producer(node.inputs[1], "Sqrt")
    sub = producer(d, "Sub")
    if sub is None or std is None:
        return None
    mean = producer(sub.inputs[1], "ReduceMean")
    add = producer(std.inputs[0], "Add")
    var_in, eps_in = _var_and_eps(add)
    var = producer(var_in, "ReduceMean")
    sq = producer(var.inputs[0], "Pow", "Mul") if var is not None else None
    if mean is None or add is None or var is None or sq is None:
        return "not Div(x - mean(x), Sqrt(mean((x - mean(x))^2) + eps))"
    x = sub.inputs[0]
    squares = sq.inputs[0] is d and (sq.inputs[1] is d if sq.op == "Mul" else close(scalar(sq.inputs[1]), 2.0))
    if mean.inputs[0] is not x or not squares:
        return "the variance is not the mean of (x - mean(x))^2"
    axis = _trailing_axis(mean, x) if _axes_of(mean) == _axes_of(var) else None
    eps = scalar(eps_in)
    if axis is None or eps is None:
        return "the reductions are not over the same trailing axes with keepdims, or eps is not a scalar"
    reason = _private(d, 2 if sq.op == "Pow" else 3, (std, add, var, sq, mean))
    if reason:
        return reason
    normalized = static_shape(x)
    if normalized is None:
        return "the input shape is not static, so the scale and bias shapes are unknown"
    return Match(node, absorbed=(std, add, var, sq, sub, mean),
                 bind={"x": x, "axis": axis, "eps": eps, "shape": normalized[axis:]})


def _var_and_eps(add: Node | None) -> tuple[Value | None, Value | None]:
    """The two inputs of var + eps, written in either order."""
    if add is None:
        return None, None
    a, b = add.inputs[0], add.inputs[1]
    return (b, a) if scalar(a) is not None else (a, b)


def _private(d: Value | None, d_uses: int, inner: tuple[Node, ...]) -> str | None:
    """Why the pattern's intermediate values are not private to it (other users, graph outputs)."""
    values = [n.outputs[0] for n in inner]
    graph_outputs = inner[0].graph.outputs if inner[0].graph is not None else []
    if d is None or len(d.uses) != d_uses or any(len(v.uses) != 1 for v in values):
        return "an intermediate value has users outside the pattern"
    if any(v in graph_outputs for v in (d, *values)):
        return "an intermediate value is a graph output"
    return None


def _axes_of(n: Node) -> tuple[int, ...] | None:
    a = const(n.inputs[1]) if len(n.inputs) > 1 else None
    return None if a is None else tuple(int(i) for i in a.reshape(-1))


def _trailing_axis(mean: Node, x: Value | None) -> int | None:
    rank = x.type.rank if x is not None and x.type is not None else None
    axes = _axes_of(mean)
    if rank is None or not axes or not mean.attr("keepdims", 1):
        return None
    norm = sorted(a + rank if a < 0 else a for a in axes)
    return norm[0] if norm == list(range(norm[0], rank)) else None


def rewrite_layernorm(rw: Rewriter, m: Match) -> None:
    out, x = m.anchor.outputs[0], m.bind["x"]
    dtype = x.type.dtype.numpy
    scale = rw.constant("ln_scale", np.ones(m.bind["shape"], dtype))
    bias = rw.constant("ln_bias", np.zeros(m.bind["shape"], dtype))
    attrs = {"axis": m.bind["axis"], "epsilon": m.bind["eps"]}
    rw.replace(out, rw.node("LayerNormalization", [x, scale, bias], attrs, types=[out.type]).outputs[0])


def match_layernorm_affine(node: Node) -> MatchResult:
    # Mul(LN(x, s, b), g) -> LN(x, s*g, b*g); Add(LN(x, s, b), c) -> LN(x, s, b + c)
    for ln_out, k in ((node.inputs[0], node.inputs[1]), (node.inputs[1], node.inputs[0])):
        ln = producer(ln_out, "LayerNormalization")
        c = const(k)
        if ln is None or ln_out is None or c is None:
            continue  # a residual Add(LN(x), y) is no candidate
        if not private(ln_out) or any(v.uses for v in ln.outputs[1:]):
            return "the LayerNormalization output has other users"
        s, b = const(ln.inputs[1]), const(ln.inputs[2]) if len(ln.inputs) > 2 else None
        shape = static_shape(ln.inputs[1])
        if s is None or shape is None or (len(ln.inputs) > 2 and ln.inputs[2] is not None and b is None):
            return "the LayerNormalization scale or bias is not constant"
        try:
            folded = np.broadcast_shapes(shape, c.shape) == shape
        except ValueError:
            folded = False
        if not folded:
            return f"operand shape {list(c.shape)} does not broadcast into the normalized shape {list(shape)}"
        b = np.zeros_like(s) if b is None else b
        new_s, new_b = (s * c, b * c) if node.op == "Mul" else (s, b + c)
        params = (new_s.astype(s.dtype), new_b.astype(s.dtype))
        return Match(node, absorbed=(ln,), origin=ln, bind={"ln": ln, "params": params})
    return None


def rewrite_layernorm_affine(rw: Rewriter, m: Match) -> None:
    ln, out = m.bind["ln"], m.anchor.outputs[0]
    s, b = (rw.constant(name, a) for name, a in zip(("ln_scale", "ln_bias"), m.bind["params"], strict=True))
    rw.replace(out, rw.node("LayerNormalization", [ln.inputs[0], s, b], dict(ln.attrs), types=[out.type]).outputs[0])


def match_castlike(node: Node) -> MatchResult:
    like = node.inputs[1]
    if like is None or like.type is None:
        return "the dtype of the second input is unknown"
    return Match(node, bind={"to": like.type.dtype.onnx_code})


def rewrite_castlike(rw: Rewriter, m: Match) -> None:
    out = m.anchor.outputs[0]
    rw.replace(out, rw.node("Cast", [m.anchor.inputs[0]], {"to": m.bind["to"]}, types=[out.type]).outputs[0])


def _transpose_perm(node: Node) -> list[int] | None:
    perm = node.attr("perm")
    if perm is not None:
        return [int(p) for p in perm]
    x = node.inputs[0]
    return None if x is None or x.type is None or x.type.rank is None else list(reversed(range(x.type.rank)))


def match_gather_transpose(node: Node) -> MatchResult:
    """Gather(Transpose(x, p), i, axis=a) with ``i`` a scalar constant, every user of the Transpose such a
    Gather (so it goes): select first, from x's axis p[a], then permute what is left."""
    t = producer(node.inputs[0], "Transpose")
    index = const(node.inputs[1]) if t is not None else None
    if t is None or index is None or index.ndim != 0:
        return None
    perm = _transpose_perm(t)
    if perm is None:
        return "the Transpose's rank is unknown"
    users = [u for u, _ in t.outputs[0].uses]
    if any(u.op != "Gather" or u.inputs[0] is not t.outputs[0] or (c := const(u.inputs[1])) is None or c.ndim != 0
           for u in users) or t.outputs[0] in t.graph.outputs:
        return "the Transpose has users other than scalar Gathers"
    axis = int(node.attr("axis", 0)) % len(perm)
    x_type, out = t.inputs[0].type if t.inputs[0] is not None else None, node.outputs[0]
    if x_type is None or x_type.shape is None or out.type is None:
        return "a shape is unknown"
    source = perm[axis]
    rest = [p - (p > source) for j, p in enumerate(perm) if j != axis]
    selected = TensorType(out.type.dtype, tuple(d for i, d in enumerate(x_type.shape) if i != source))
    return Match(node, absorbed=(t,), bind={"x": t.inputs[0], "axis": source, "perm": rest, "type": selected})


def rewrite_gather_transpose(rw: Rewriter, m: Match) -> None:
    out = m.anchor.outputs[0]
    picked = rw.node("Gather", [m.bind["x"], m.anchor.inputs[1]], {"axis": m.bind["axis"]}, types=[m.bind["type"]])
    rw.replace(out, rw.node("Transpose", [picked.outputs[0]], {"perm": m.bind["perm"]}, types=[out.type]).outputs[0])


CANONICAL_RULES: tuple[Rule, ...] = (
    # Exporters write scalar bounds as CastLike(c, x); as a Cast of a constant, fold-constants folds it.
    Rule("castlike", "CastLike(x, y: T) -> Cast(x, to=T)", ("CastLike",), match_castlike, rewrite_castlike),
    Rule("gelu", "x * 0.5 * (1 + Erf(x / sqrt2)) -> Gelu(x); tanh form -> Gelu(x, approximate=tanh)",
         ("Mul",), match_gelu, rewrite_unary("Gelu")),
    Rule("hardswish", "x * HardSigmoid(x) -> HardSwish(x); x * Relu6(x + 3) / 6 -> HardSwish(x)",
         ("Mul", "Div"), match_hardswish, rewrite_unary("HardSwish")),
    Rule("silu-order", "Mul(Sigmoid(x), x) -> Mul(x, Sigmoid(x))", ("Mul",), match_silu_order, rewrite_silu),
    Rule("layernorm", "(x - mean(x)) / Sqrt(mean((x - mean(x))^2) + eps) -> LayerNormalization(x, 1, 0)",
         ("Div",), match_layernorm, rewrite_layernorm),
    Rule("layernorm-affine", "LN(x, s, b) * g -> LN(x, s*g, b*g); LN(x, s, b) + c -> LN(x, s, b+c)",
         ("Mul", "Add"), match_layernorm_affine, rewrite_layernorm_affine),
    # q, k, v = Transpose(Reshape(qkv))[0], [1], [2]: as selections first, each branch is one fused kernel
    # on the GPU (the Reshape a view) instead of a Transpose kernel and three Gather kernels.
    Rule("gather-before-transpose", "Gather(Transpose(x, p), i, axis=a) -> Transpose(Gather(x, i, axis=p[a]))",
         ("Gather",), match_gather_transpose, rewrite_gather_transpose),
)


@register_pass
class CanonicalizePatterns(RuleSet):
    name = "canonicalize-patterns"
    description = ("rewrite GELU, LayerNorm and HardSwish spelled in primitives into their ONNX ops; order SiLU; "
                   "select before permuting (Gather of a Transpose)")
    rules = CANONICAL_RULES
