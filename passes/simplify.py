"""simplify: remove identities and no-ops, each a rule that states its law.

Rules forward an existing value (the rule framework refuses a forward that would change the
value's type, so ``Add(x[3], 0[2,3])``, which broadcasts, stays). The nodes and constants left
unused afterwards are eliminate-dead-code's business.

``x + 0 -> x`` turns ``-0.0 + 0.0 = +0.0`` into ``-0.0``; every other float is unchanged, and
the two zeros compare equal, which is the law every graph optimiser uses.
"""

from __future__ import annotations

import numpy as np

from compiler.ir import DType, Node, Value
from compiler.pass_manager import register_pass
from compiler.pass_manager.rules import (
    Match,
    Matcher,
    MatchResult,
    Rewriter,
    Rule,
    RuleSet,
    const,
    forward,
    is_fill,
    producer,
    static_shape,
    users_reason,
)

# Casts A -> B where B represents every value of A exactly: a chain A -> B -> C then equals A -> C.
EXACT_WIDENING: dict[DType, frozenset[DType]] = {
    DType.BOOL: frozenset(DType),
    DType.U8: frozenset({DType.I16, DType.I32, DType.I64, DType.F16, DType.BF16, DType.F32, DType.F64}),
    DType.I8: frozenset({DType.I16, DType.I32, DType.I64, DType.F16, DType.BF16, DType.F32, DType.F64}),
    DType.I16: frozenset({DType.I32, DType.I64, DType.F32, DType.F64}),
    DType.I32: frozenset({DType.I64, DType.F64}),
    DType.F16: frozenset({DType.F32, DType.F64}),
    DType.BF16: frozenset({DType.F32, DType.F64}),
    DType.F32: frozenset({DType.F64}),
}


def _neutral(right_only: bool, value: float) -> Matcher:
    """A matcher for op(x, c) -> x (and op(c, x) -> x unless ``right_only``) with c filled with ``value``."""
    def match(node: Node) -> MatchResult:
        a, b = node.inputs[0], node.inputs[1]
        if is_fill(b, value):
            return forward(node, a)
        if not right_only and is_fill(a, value):
            return forward(node, b)
        return None
    return match


def identity(node: Node) -> MatchResult:
    return forward(node, node.inputs[0])


def dropout(node: Node) -> MatchResult:
    if len(node.outputs) > 1 and node.outputs[1].uses:
        return "its mask output is used"
    training = node.inputs[2] if len(node.inputs) > 2 else None
    if training is not None and (const(training) is None or bool(np.any(const(training)))):
        return f"training_mode %{training.name} is not the constant false"
    return forward(node, node.inputs[0])


def reshape_same(node: Node) -> MatchResult:
    x, shape = node.inputs[0], node.inputs[1]
    if producer(shape, "Shape") is not None and shape is not None and shape.producer is not None:
        shape_node = shape.producer
        if shape_node.inputs[0] is x and not shape_node.attrs:
            return forward(node, x, "the shape is Shape(x)", (shape_node,))
    target = const(shape)
    have = static_shape(x)
    if target is None or have is None:
        return None
    want = [have[i] if d == 0 and not node.attr("allowzero", 0) else int(d) for i, d in enumerate(target)]
    if -1 in want and len(want) == len(have):
        want = [have[i] if d == -1 else d for i, d in enumerate(want)]
    return forward(node, x) if tuple(want) == have else None


def _perm(node: Node) -> list[int] | None:
    perm = node.attr("perm")
    if perm is not None:
        return [int(p) for p in perm]
    x = node.inputs[0]
    rank = x.type.rank if x is not None and x.type is not None else None
    return None if rank is None else list(reversed(range(rank)))


def transpose_identity(node: Node) -> MatchResult:
    perm = _perm(node)
    return forward(node, node.inputs[0]) if perm is not None and perm == sorted(perm) else None


def transpose_inverse(node: Node) -> MatchResult:
    inner = producer(node.inputs[0], "Transpose")
    if inner is None:
        return None
    p, q = _perm(inner), _perm(node)
    if p is None or q is None:
        return "the rank is unknown"
    composed = [p[i] for i in q]
    if composed != sorted(composed):
        return None  # transpose-compose merges them
    return forward(node, inner.inputs[0], absorbed=(inner,))


def transpose_compose(node: Node) -> MatchResult:
    inner = producer(node.inputs[0], "Transpose")
    p, q = (_perm(inner), _perm(node)) if inner is not None else (None, None)
    if inner is None or p is None or q is None or [p[i] for i in q] == sorted(p):
        return None  # no pair, unknown rank (transpose-inverse says so) or an inverse pair
    reason = users_reason(inner.outputs[0], node.graph, "the first Transpose")
    return reason or Match(node, absorbed=(inner,), bind={"x": inner.inputs[0], "perm": [p[i] for i in q]})


def rewrite_transpose_compose(rw: Rewriter, m: Match) -> None:
    out = m.anchor.outputs[0]
    rw.replace(out, rw.node("Transpose", [m.bind["x"]], {"perm": m.bind["perm"]}, types=[out.type]).outputs[0])


def _dtype(v: Value | None) -> DType | None:
    return v.type.dtype if v is not None and v.type is not None else None


def cast_same(node: Node) -> MatchResult:
    x = node.inputs[0]
    same = _dtype(x) is not None and _dtype(x) == DType.from_onnx(int(node.attr("to")))
    return forward(node, x) if same else None


def cast_chain(node: Node) -> MatchResult:
    inner = producer(node.inputs[0], "Cast")
    if inner is None:
        return None
    a, b = _dtype(inner.inputs[0]), DType.from_onnx(int(inner.attr("to")))
    c = DType.from_onnx(int(node.attr("to")))
    if a is None:
        return "the first cast's input dtype is unknown"
    if b not in EXACT_WIDENING.get(a, frozenset()) and a != b:
        return f"{a.short} -> {b.short} -> {c.short} is lossy: {b.short} cannot hold every {a.short}"
    if c == a:
        return forward(node, inner.inputs[0], f"{a.short} -> {b.short} -> {a.short}", (inner,))
    return None  # cast-chain shortens it


def cast_chain_shorten(node: Node) -> MatchResult:
    inner = producer(node.inputs[0], "Cast")
    a = _dtype(inner.inputs[0]) if inner is not None else None
    if inner is None or a is None or a == DType.from_onnx(int(node.attr("to"))):
        return None  # no chain, unknown input dtype (cast-roundtrip says so), or a round trip
    b = DType.from_onnx(int(inner.attr("to")))
    if b not in EXACT_WIDENING.get(a, frozenset()):
        return None  # cast-roundtrip's note already says the chain is lossy
    reason = users_reason(inner.outputs[0], node.graph, f"the {b.short} cast")
    if reason:
        return reason
    return Match(node, absorbed=(inner,), bind={"x": inner.inputs[0]})


def rewrite_cast_chain(rw: Rewriter, m: Match) -> None:
    out = m.anchor.outputs[0]
    rw.replace(out, rw.node("Cast", [m.bind["x"]], {"to": m.anchor.attr("to")}, types=[out.type]).outputs[0])


def _axes(node: Node, rank: int | None) -> list[int] | None:
    axes = const(node.inputs[1]) if len(node.inputs) > 1 else None
    if axes is None or rank is None:
        return None
    return sorted(int(a) + rank if a < 0 else int(a) for a in axes.reshape(-1))


def _rank(v: Value | None) -> int | None:
    return v.type.rank if v is not None and v.type is not None else None


def squeeze_unsqueeze(node: Node) -> MatchResult:
    # Unsqueeze(Squeeze(x, a), a) -> x and Squeeze(Unsqueeze(x, a), a) -> x; axes count in the
    # larger rank on both sides, which is the rank of x or of the result.
    inner_op = "Squeeze" if node.op == "Unsqueeze" else "Unsqueeze"
    inner = producer(node.inputs[0], inner_op)
    if inner is None:
        return None
    big = inner.inputs[0] if node.op == "Unsqueeze" else node.inputs[0]
    a, b = _axes(inner, _rank(big)), _axes(node, _rank(big))
    if a is None or b is None:
        return "axes are not constant or the rank is unknown"
    if a != b:
        return f"{inner_op} axes {a} differ from {node.op} axes {b}"
    return forward(node, inner.inputs[0], absorbed=(inner,))


def expand_same(node: Node) -> MatchResult:
    x, target = node.inputs[0], const(node.inputs[1])
    have = static_shape(x)
    if have is None or target is None:
        return None
    try:
        result = np.broadcast_shapes(have, tuple(int(d) for d in target.reshape(-1)))
    except ValueError:
        return None
    return forward(node, x) if result == have else None


# Ops with f(f(x)) == f(x) for every x.
IDEMPOTENT = ("Relu", "Abs", "Floor", "Ceil", "Round")


def idempotent(node: Node) -> MatchResult:
    # f(f(x)) -> f(x): the outer f recomputes what the inner one already did.
    inner = producer(node.inputs[0], node.op)
    return None if inner is None else forward(node, inner.outputs[0])


SIMPLIFY_RULES: tuple[Rule, ...] = (
    Rule("identity", "Identity(x) -> x", ("Identity",), identity),
    Rule("dropout", "Dropout(x) -> x at inference", ("Dropout",), dropout),
    Rule("mul-one", "Mul(x, 1) -> x, Mul(1, x) -> x", ("Mul",), _neutral(False, 1.0)),
    Rule("add-zero", "Add(x, 0) -> x, Add(0, x) -> x", ("Add",), _neutral(False, 0.0)),
    Rule("sub-zero", "Sub(x, 0) -> x", ("Sub",), _neutral(True, 0.0)),
    Rule("div-one", "Div(x, 1) -> x", ("Div",), _neutral(True, 1.0)),
    Rule("reshape-same", "Reshape(x, shape(x)) -> x", ("Reshape",), reshape_same),
    Rule("transpose-identity", "Transpose(x, [0,1,...]) -> x", ("Transpose",), transpose_identity),
    Rule("transpose-inverse", "Transpose(Transpose(x, p), inverse(p)) -> x", ("Transpose",), transpose_inverse),
    Rule("transpose-compose", "Transpose(Transpose(x, p), q) -> Transpose(x, p[q])", ("Transpose",),
         transpose_compose, rewrite_transpose_compose),
    Rule("cast-same", "Cast(x: T, to=T) -> x", ("Cast",), cast_same),
    Rule("cast-roundtrip", "Cast(Cast(x: A, to=B), to=A) -> x when B holds every A", ("Cast",), cast_chain),
    Rule("cast-chain", "Cast(Cast(x: A, to=B), to=C) -> Cast(x, to=C) when B holds every A", ("Cast",),
         cast_chain_shorten, rewrite_cast_chain),
    Rule("squeeze-unsqueeze", "Unsqueeze(Squeeze(x, a), a) -> x, Squeeze(Unsqueeze(x, a), a) -> x",
         ("Squeeze", "Unsqueeze"), squeeze_unsqueeze),
    Rule("expand-same", "Expand(x, s) -> x when broadcasting x to s keeps x's shape", ("Expand",), expand_same),
    Rule("idempotent", "f(f(x)) -> f(x) for f in Relu, Abs, Floor, Ceil, Round", IDEMPOTENT, idempotent),
)


@register_pass
class Simplify(RuleSet):
    name = "simplify"
    description = "remove identities and no-ops: Identity, Dropout, x*1, x+0, inverse transposes, exact casts"
    rules = SIMPLIFY_RULES
