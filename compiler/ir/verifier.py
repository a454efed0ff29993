"""The IR verifier: structural invariants plus per-op type rules, every problem reported at once.

Structure: each node input is a graph input, a constant of this graph or an output of an earlier
node (so ``graph.nodes`` is a topological order); ``value.uses`` matches the node inputs exactly;
outputs know their producer and index; ``node.graph`` is the graph; graph outputs are defined;
value names are unique; every value has a type; domain "" ops are in ``SUPPORTED_OPS``.
Group nodes: the body verifies on its own, and its inputs and outputs match the node's, position
by position, in number and type (a body is the node's definition, so they cannot differ).
Types: the rules in ``_TYPE_RULES`` for common ops; they skip what is unknown (``None`` types,
unknown ranks, symbolic dims) rather than guess.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from compiler.errors import EffarchError
from compiler.ir.core import Node, Value
from compiler.ir.graph import Graph
from compiler.ir.ops import SUPPORTED_OPS
from compiler.ir.types import Dim, DType, TensorType


class VerifyError(EffarchError):
    """The graph breaks IR invariants; the first line summarises, then one problem per line."""


def verify(g: Graph) -> None:
    """Raise ``VerifyError`` listing every problem in ``g``; return quietly when there is none."""
    problems = find_problems(g)
    if problems:
        lines = [f"graph {g.name} fails verification with {len(problems)} problem(s):"]
        raise VerifyError("\n".join(lines + ["  " + p for p in problems]))


def find_problems(g: Graph) -> list[str]:
    """Every problem in ``g`` as one line each, in a stable order."""
    return [*_check_sources(g), *_check_nodes(g), *_check_uses(g), *_check_outputs(g),
            *_check_names_and_types(g), *_check_op_types(g), *_check_bodies(g)]


def _label(i: int, n: Node) -> str:
    outs = ", ".join(f"%{v.name}" for v in n.outputs)
    name = f" '{n.name}'" if n.name else ""  # the source model's node name, for the user
    return f"node #{i} {n.qualified_op}{name}" + (f" -> {outs}" if outs else "")


# ---- structure --------------------------------------------------------------------------------
def _check_sources(g: Graph) -> Iterable[str]:
    for v in g.inputs:
        if v.producer is not None:
            yield f"graph input %{v.name} has a producer ({v.producer.qualified_op})"
    for key, v in g.constants.items():
        if key != v.name:
            yield f"constant %{v.name} is stored under the key '{key}'; the key must be its name"
        if v.producer is not None:
            yield f"constant %{v.name} has a producer ({v.producer.qualified_op})"
        if not v.is_constant:
            yield f"constant %{v.name} has neither a payload nor a digest"
        elif v.const is not None and v.type is not None and v.type != TensorType.of(v.const):
            yield f"constant %{v.name} is typed {v.type} but its payload is {TensorType.of(v.const)}"


def _check_nodes(g: Graph) -> Iterable[str]:
    available = {id(v) for v in g.inputs} | {id(v) for v in g.constants.values()}
    position = {id(n): i for i, n in enumerate(g.nodes)}
    seen: set[int] = set()
    for i, n in enumerate(g.nodes):
        if id(n) in seen:
            yield f"{_label(i, n)} appears more than once in graph.nodes"
        seen.add(id(n))
        if n.graph is not g:
            yield f"{_label(i, n)} has node.graph set to {n.graph!r}, not this graph"
        for j, v in enumerate(n.inputs):
            if v is not None and id(v) not in available:
                yield f"{_label(i, n)} input {j} %{v.name} {_where_defined(v, position)}"
        for j, v in enumerate(n.outputs):
            if v.producer is not n or v.index != j:
                yield f"{_label(i, n)} output {j} %{v.name} records producer/index {_producer(v)}"
            available.add(id(v))


def _where_defined(v: Value, position: dict[int, int]) -> str:
    if v.producer is not None and id(v.producer) in position:
        return (f"is produced by the later node #{position[id(v.producer)]}; "
                "nodes must be in topological order (graph.topological_sort())")
    return "is not a graph input, a constant or a node output of this graph"


def _producer(v: Value) -> str:
    return "none" if v.producer is None else f"{v.producer.qualified_op}/{v.index}"


def _graph_values(g: Graph) -> list[Value]:
    """Values defined by the graph plus any foreign values its nodes use (to check their uses)."""
    values = {id(v): v for v in g.values()}
    for n in g.nodes:
        values.update((id(v), v) for v in n.inputs if v is not None)
    return list(values.values())


def _check_uses(g: Graph) -> Iterable[str]:
    expected: dict[int, Counter[tuple[int, int]]] = {}
    for n in g.nodes:
        for j, v in enumerate(n.inputs):
            if v is not None:
                expected.setdefault(id(v), Counter())[(id(n), j)] += 1
    for v in _graph_values(g):
        actual = Counter((id(n), j) for n, j in v.uses)
        want = expected.get(id(v), Counter())
        if actual != want:
            nodes = {id(n): n for n, _ in v.uses}
            stale = [f"{nodes[k].qualified_op} input {j}" for (k, j) in (actual - want)]
            missing = sum((want - actual).values())
            yield (f"%{v.name}.uses does not match the node inputs: {len(stale)} stale "
                   f"({', '.join(stale) or 'none'}), {missing} missing")


def _check_outputs(g: Graph) -> Iterable[str]:
    defined = {id(v) for v in g.values()}
    for i, v in enumerate(g.outputs):
        if id(v) not in defined:
            yield f"graph output {i} %{v.name} is not defined in this graph"


def _check_names_and_types(g: Graph) -> Iterable[str]:
    counts = Counter(v.name for v in g.values())
    for name, count in counts.items():
        if count > 1:
            yield f"value name %{name} is used by {count} values; names must be unique"
    for v in g.values():
        if v.type is None:
            yield f"value %{v.name} has no type"


# ---- group bodies -----------------------------------------------------------------------------
def _check_bodies(g: Graph) -> Iterable[str]:
    for i, n in enumerate(g.nodes):
        if n.body is None:
            continue
        label = f"{_label(i, n)} body"
        yield from (f"{label}: {p}" for p in find_problems(n.body))
        yield from _check_signature(label, "input", n.inputs, n.body.inputs)
        yield from _check_signature(label, "output", n.outputs, n.body.outputs)


def _check_signature(label: str, what: str, outer: Iterable[Value | None],
                     inner: list[Value]) -> Iterable[str]:
    outer = list(outer)
    if len(outer) != len(inner):
        yield f"{label} has {len(inner)} {what}s but the node has {len(outer)}"
        return
    for j, (o, b) in enumerate(zip(outer, inner, strict=True)):
        if o is None:
            yield f"{label}: node {what} {j} is omitted; a group node needs every {what}"
        elif o.type is not None and b.type is not None and o.type != b.type:
            yield f"{label} {what} {j} %{b.name} is {b.type} but the node's %{o.name} is {o.type}"


# ---- per-op type rules ------------------------------------------------------------------------
def _types(values: Iterable[Value | None]) -> list[TensorType | None]:
    return [None if v is None else v.type for v in values]


def _check_op_types(g: Graph) -> Iterable[str]:
    for i, n in enumerate(g.nodes):
        if n.domain:
            continue
        if n.op not in SUPPORTED_OPS:
            yield (f"{_label(i, n)}: op '{n.op}' is not in compiler.ir.ops.SUPPORTED_OPS; "
                   "give non-ONNX ops a domain")
            continue
        rule = _TYPE_RULES.get(n.op)
        if rule is not None:
            yield from (f"{_label(i, n)}: {p}" for p in rule(n))


def _same_dtype(values: Iterable[Value | None], what: str) -> Iterable[str]:
    dtypes = {t.dtype for t in _types(values) if t is not None}
    if len(dtypes) > 1:
        yield f"{what} must share a dtype, got {', '.join(sorted(d.short for d in dtypes))}"


def _output_dtype(n: Node, dtype: DType | None, why: str) -> Iterable[str]:
    out = n.outputs[0].type if n.outputs else None
    if dtype is not None and out is not None and out.dtype is not dtype:
        yield f"output dtype is {out.dtype.short} but {why} makes it {dtype.short}"


def _first_dtype(n: Node) -> DType | None:
    t = n.inputs[0].type if n.inputs and n.inputs[0] is not None else None
    return None if t is None else t.dtype


def broadcast_shapes(shapes: list[tuple[Dim, ...]]) -> tuple[list[Dim], list[int]]:
    """ONNX multidirectional broadcasting of known-rank shapes: the result (``None`` where not
    statically known) and the axes (counted from the right, 1-based) whose static dims clash."""
    rank = max((len(s) for s in shapes), default=0)
    result: list[Dim] = []
    clashes: list[int] = []
    for axis in range(rank, 0, -1):
        dims = [s[len(s) - axis] for s in shapes if len(s) >= axis]
        big = {d for d in dims if isinstance(d, int) and d != 1}
        if len(big) > 1:
            clashes.append(axis)
        if big:
            result.append(next(iter(big)))
        else:
            result.append(1 if all(d == 1 for d in dims) else None)
    return result, clashes


def _broadcast(n: Node) -> Iterable[str]:
    shapes = [t.shape for t in _types(n.inputs) if t is not None]
    if len(shapes) < len(n.inputs) or any(s is None for s in shapes):
        return
    result, clashes = broadcast_shapes(shapes)  # type: ignore[arg-type]  # None shapes returned above
    if clashes:
        pretty = " and ".join(str(t) for t in _types(n.inputs))
        yield f"input shapes {pretty} do not broadcast (axis -{clashes[0]})"
        return
    out = n.outputs[0].type if n.outputs else None
    if out is None or out.shape is None:
        return
    if len(out.shape) != len(result) or any(
        isinstance(o, int) and isinstance(r, int) and o != r for o, r in zip(out.shape, result, strict=False)
    ):
        yield f"output shape {out} contradicts the broadcast of the inputs ({len(result)}-d {result})"


def _arithmetic(n: Node) -> Iterable[str]:
    yield from _same_dtype(n.inputs, "inputs")
    yield from _output_dtype(n, _first_dtype(n), "the input dtype")
    yield from _broadcast(n)


def _comparison(n: Node) -> Iterable[str]:
    yield from _same_dtype(n.inputs, "inputs")
    yield from _output_dtype(n, DType.BOOL, "a comparison")
    yield from _broadcast(n)


def _logical(n: Node) -> Iterable[str]:
    for t in _types(n.inputs):
        if t is not None and t.dtype is not DType.BOOL:
            yield f"inputs must be bool, got {t.dtype.short}"
    yield from _output_dtype(n, DType.BOOL, "a logical op")
    yield from _broadcast(n)


def _contraction(min_rank: int, max_rank: int | None) -> Callable[[Node], Iterable[str]]:
    def rule(n: Node) -> Iterable[str]:
        if len(n.inputs) < 2 or n.inputs[0] is None or n.inputs[1] is None:
            yield "needs two inputs"
            return
        yield from _same_dtype(n.inputs, "inputs")
        for j, t in enumerate(_types(n.inputs[:2])):
            if t is not None and not t.dtype.is_float:
                yield f"input {j} must be a float tensor, got {t.dtype.short}"
            if t is not None and t.rank is not None and (
                t.rank < min_rank or (max_rank is not None and t.rank > max_rank)):
                expected = f"at least {min_rank}" if max_rank is None else f"{min_rank}..{max_rank}"
                yield f"input {j} has rank {t.rank}, expected {expected}"
        yield from _output_dtype(n, _first_dtype(n), "the input dtype")
    return rule


def _conv(n: Node) -> Iterable[str]:
    yield from _contraction(3, None)(n)
    yield from _channels(n)
    types = _types(n.inputs)
    x, w = (types + [None, None])[:2]
    if x is not None and w is not None and None not in (x.rank, w.rank) and x.rank != w.rank:
        yield f"weight rank {w.rank} differs from input rank {x.rank}"
    bias = types[2] if len(types) > 2 else None
    if bias is not None and bias.rank not in (None, 1):
        yield f"bias must have rank 1, got {bias.rank}"


def _static_dim(t: TensorType | None, axis: int) -> int | None:
    """Dim ``axis`` (negative counts from the end) of a known-rank shape, if static."""
    if t is None or t.shape is None or not -len(t.shape) <= axis < len(t.shape):
        return None
    d = t.shape[axis]
    return d if isinstance(d, int) else None


def _reduction_dims(what: str, k0: int | None, k1: int | None) -> Iterable[str]:
    if k0 is not None and k1 is not None and k0 != k1:
        yield f"{what}: input 0 has {k0} but input 1 has {k1}"


def _matmul(n: Node) -> Iterable[str]:
    yield from _contraction(1, None)(n)
    if len(n.inputs) < 2:
        return
    a, b = _types(n.inputs[:2])
    # a: [..., K] (its last dim), b: [..., K, N] or [K] (its second-to-last dim, or only dim)
    k1 = _static_dim(b, 0) if b is not None and b.rank == 1 else _static_dim(b, -2)
    yield from _reduction_dims("the contracted dims differ", _static_dim(a, -1), k1)


def _gemm(n: Node) -> Iterable[str]:
    yield from _contraction(2, 2)(n)
    c = _types(n.inputs)[2] if len(n.inputs) > 2 else None
    if c is not None and c.rank is not None and c.rank > 2:
        yield f"input C has rank {c.rank}, expected at most 2"
    if len(n.inputs) >= 2:
        a, b = _types(n.inputs[:2])
        k0 = _static_dim(a, 0 if n.attrs.get("transA", 0) else 1)
        k1 = _static_dim(b, 1 if n.attrs.get("transB", 0) else 0)
        yield from _reduction_dims("the contracted dims (after transA/transB) differ", k0, k1)


def _channels(n: Node) -> Iterable[str]:
    """Conv: input channels = weight's channels per group x group."""
    types = _types(n.inputs)
    if n.op != "Conv" or len(types) < 2:
        return
    c, per_group = _static_dim(types[0], 1), _static_dim(types[1], 1)
    group = int(n.attrs.get("group", 1))
    if c is not None and per_group is not None and c != per_group * group:
        yield (f"input has {c} channels but the weight takes {per_group} per group x {group} group(s) "
               f"= {per_group * group}")


def _reshape(n: Node) -> Iterable[str]:
    """A constant target shape must hold exactly the input's elements (0 copies, -1 infers)."""
    if len(n.inputs) < 2 or n.inputs[0] is None or n.inputs[1] is None or n.inputs[1].const is None:
        return
    x = n.inputs[0].type
    if x is None or not x.is_static:
        return
    shape = x.static_shape()
    dims = [int(d) for d in n.inputs[1].const.reshape(-1)]
    if not n.attrs.get("allowzero", 0):
        dims = [shape[i] if d == 0 and i < len(shape) else d for i, d in enumerate(dims)]
    if any(d < -1 for d in dims) or dims.count(-1) > 1:
        yield f"target shape {dims} is invalid (at most one -1, no other negative size)"
        return
    size, known = x.numel() or 0, 1
    for d in dims:
        known *= d if d != -1 else 1
    if (-1 not in dims and known != size) or (-1 in dims and (known == 0 or size % known)):
        yield f"cannot reshape {x} ({size} elements) to {dims}"


def _cast(n: Node) -> Iterable[str]:
    to = n.attrs.get("to")
    if not isinstance(to, int):
        yield "the 'to' attribute (an ONNX dtype code) is missing"
        return
    try:
        dtype = DType.from_onnx(to)
    except ValueError as e:
        yield str(e)
        return
    yield from _output_dtype(n, dtype, f"to={to}")


def _int64_output(n: Node) -> Iterable[str]:
    yield from _output_dtype(n, DType.I64, f"{n.op}")


_ARITHMETIC = ("Add", "Sub", "Mul", "Div", "Max", "Min", "Mod", "Sum", "Mean")
_COMPARISON = ("Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual")
_TYPE_RULES: dict[str, Callable[[Node], Iterable[str]]] = {
    **dict.fromkeys(_ARITHMETIC, _arithmetic),
    **dict.fromkeys(_COMPARISON, _comparison),
    **dict.fromkeys(("And", "Or", "Xor"), _logical),
    "Pow": _broadcast,  # ONNX allows a different exponent dtype
    "Conv": _conv, "ConvTranspose": _conv,
    "MatMul": _matmul, "Gemm": _gemm, "Reshape": _reshape,
    "Cast": _cast, "Shape": _int64_output, "Size": _int64_output,
    "IsNaN": lambda n: _output_dtype(n, DType.BOOL, "IsNaN"),
}
