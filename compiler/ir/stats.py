"""Graph statistics: node and op counts, parameters, constant bytes and FLOPs, plus before/after diffs.

FLOPs count a multiply-add as 2. Contractions are exact; elementwise, normalization, reduction and
pooling ops are estimated as elements times a small per-element cost; shape and data-movement ops
cost 0. A node whose shapes are not static has unknown FLOPs, and then the graph's total is
unknown (``None``), never silently zero; ``known_flops`` still sums the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from compiler.ir import DType, Graph, Node, TensorType, Value, ops

# Per-output-element costs of ops whose arithmetic is more than one operation (rough, like
# every FLOP counter's; they only need to rank ops, not predict time).
ELEMENT_COST = {
    "Exp": 4, "Log": 4, "Erf": 4, "Sigmoid": 4, "Tanh": 4, "Gelu": 8, "Softplus": 4, "Sin": 4, "Cos": 4,
    "Elu": 4, "HardSigmoid": 2, "HardSwish": 3, "Pow": 4, "Clip": 2, "Where": 1,
    "BatchNormalization": 2, "LayerNormalization": 8, "Softmax": 5, "LogSoftmax": 6,
}
# Ops that do no arithmetic at all at inference time.
ZERO_COST = ops.SHAPE_AND_DATA | ops.NO_OP_AT_INFERENCE | {"Cast", "CastLike"}


@dataclass(frozen=True)
class GraphStats:
    nodes: int
    ops: dict[str, int]
    parameters: int
    constant_bytes: int
    flops: int | None
    known_flops: int
    unknown_flops_nodes: tuple[str, ...]
    inputs: tuple[tuple[str, str], ...]
    outputs: tuple[tuple[str, str], ...]
    flops_by_op: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        flops = "unknown" if self.flops is None else f"{self.flops / 1e6:.2f} MFLOP"
        return (f"{self.nodes} nodes, {self.parameters:,} parameters, "
                f"{self.constant_bytes / 1e6:.2f} MB constants, {flops}")


def graph_stats(g: Graph) -> GraphStats:
    flops_by_op: dict[str, int] = {}
    unknown: list[str] = []
    for n in g.nodes:
        f = node_flops(n)
        if f is None:
            unknown.append(n.name or repr(n))
        else:
            flops_by_op[n.qualified_op] = flops_by_op.get(n.qualified_op, 0) + f
    known = sum(flops_by_op.values())
    return GraphStats(
        nodes=len(g.nodes),
        ops=g.op_counts(),
        parameters=sum(_numel(v) or 0 for v in g.constants.values() if v.type and v.type.dtype in PARAMETER_DTYPES),
        constant_bytes=sum(_nbytes(v) for v in g.constants.values()),
        flops=None if unknown else known,
        known_flops=known,
        unknown_flops_nodes=tuple(unknown),
        inputs=tuple((v.name, _describe(v.type)) for v in g.inputs),
        outputs=tuple((v.name, _describe(v.type)) for v in g.outputs),
        flops_by_op=dict(sorted(flops_by_op.items())),
    )


# Weights: float constants and quantized ones (8- and 4-bit integers); i32/i64 constants are
# shapes, axes and indices.
PACKED_4BIT = frozenset({DType.I4, DType.U4})
PARAMETER_DTYPES = frozenset({d for d in DType if d.is_float} | {DType.I8, DType.U8} | PACKED_4BIT)


def _describe(t: TensorType | None) -> str:
    return "?" if t is None else str(t)


def _numel(v: Value) -> int | None:
    if v.const is not None:
        return int(v.const.size)
    return v.type.numel() if v.type else None


def _nbytes(v: Value) -> int:
    if v.const is not None and v.type is not None and v.type.dtype in PACKED_4BIT:
        return (int(v.const.size) + 1) // 2  # numpy holds one per byte; files and artifacts pack two
    if v.const is not None:
        return int(v.const.nbytes)
    return (v.type.nbytes() if v.type else None) or 0


def _shape(v: Value | None) -> tuple[int, ...] | None:
    if v is None or v.type is None or not v.type.is_static:
        return None
    return v.type.static_shape()


# ---- FLOPs per node ---------------------------------------------------------------------------
def node_flops(n: Node) -> int | None:
    """FLOPs of one node, or None when its op or shapes are unknown."""
    if n.domain:
        return None
    if n.op in ZERO_COST:
        return 0
    rule = _FLOP_RULES.get(n.op)
    if rule is not None:
        return rule(n)
    if n.op in ops.REDUCTIONS:
        return _numel_of(n.inputs[0])
    if n.op in ops.SUPPORTED_OPS:  # elementwise and normalization
        out = _numel_of(n.outputs[0])
        return None if out is None else out * ELEMENT_COST.get(n.op, 1)
    return None


def _numel_of(v: Value | None) -> int | None:
    shape = _shape(v)
    return None if shape is None else math.prod(shape)


def _conv(n: Node, weight: int = 1, bias: int = 2) -> int | None:
    out, w = _shape(n.outputs[0]), _shape(n.inputs[weight])
    if out is None or w is None:
        return None
    # Weight is (Cout, Cin/group, k...): each output element does Cin/group * prod(k) multiply-adds.
    flops = 2 * math.prod(out) * math.prod(w[1:])
    return flops + (math.prod(out) if _has(n, bias) else 0)


def _conv_transpose(n: Node) -> int | None:
    x, w, out = _shape(n.inputs[0]), _shape(n.inputs[1]), _shape(n.outputs[0])
    if x is None or w is None or out is None:
        return None
    # Weight is (Cin, Cout/group, k...): each input element scatters into Cout/group * prod(k) outputs.
    flops = 2 * math.prod(x) * math.prod(w[1:])
    return flops + (math.prod(out) if _has(n, 2) else 0)


def _matmul(n: Node) -> int | None:
    a, out = _shape(n.inputs[0]), _shape(n.outputs[0])
    if a is None or out is None:
        return None
    return 2 * math.prod(out) * a[-1]


def _gemm(n: Node) -> int | None:
    a, out = _shape(n.inputs[0]), _shape(n.outputs[0])
    if a is None or out is None:
        return None
    k = a[0] if n.attr("transA", 0) else a[1]
    return 2 * math.prod(out) * k + (math.prod(out) if _has(n, 2) else 0)


def _pool(n: Node) -> int | None:
    out = _shape(n.outputs[0])
    kernel = n.attr("kernel_shape")
    return None if out is None or kernel is None else math.prod(out) * math.prod(kernel)


def _einsum(n: Node) -> int | None:
    """2 x the product of every index's size (each term of the full index space is a multiply-add),
    with the dims under ``...`` broadcast across operands."""
    terms = str(n.attr("equation", "")).replace(" ", "").split("->")[0].split(",")
    sizes: dict[str, int] = {}
    batch: list[int] = []
    for term, v in zip(terms, n.inputs, strict=False):
        shape = _shape(v)
        if shape is None:
            return None
        letters = term.replace("...", "")
        start = term.find("...")
        extra = len(shape) - len(letters)
        if start >= 0:
            dims = list(shape[start:start + extra])
            batch = [max(a, b) for a, b in zip([1] * (len(dims) - len(batch)) + batch,
                                               [1] * (len(batch) - len(dims)) + dims, strict=True)]
        letter_dims = shape[:start] + shape[start + extra:] if start >= 0 else shape
        sizes.update(zip(letters, letter_dims, strict=False))
    return 2 * math.prod(sizes.values()) * math.prod(batch)


def _has(n: Node, i: int) -> bool:
    return len(n.inputs) > i and n.inputs[i] is not None


_FLOP_RULES = {
    "Conv": _conv, "ConvTranspose": _conv_transpose, "MatMul": _matmul, "Gemm": _gemm,
    "ConvInteger": _conv, "MatMulInteger": _matmul,
    "QLinearConv": lambda n: _conv(n, weight=3, bias=8), "QLinearMatMul": _matmul,
    "DeformConv": lambda n: _conv(n, weight=1, bias=3),  # plus 4 taps per sampled input, not counted
    "MaxPool": _pool, "AveragePool": _pool, "Einsum": _einsum,
    "GlobalAveragePool": lambda n: _numel_of(n.inputs[0]), "GlobalMaxPool": lambda n: _numel_of(n.inputs[0]),
}


# ---- before/after -----------------------------------------------------------------------------
@dataclass(frozen=True)
class StatsDiff:
    rows: tuple[tuple[str, str, str, str], ...]  # (metric, before, after, change)

    def __str__(self) -> str:
        width = max(len(r[0]) for r in self.rows) if self.rows else 8
        head = f"{'':<{width}}  {'before':>16}  {'after':>16}  {'change':>10}"
        body = [f"{m:<{width}}  {b:>16}  {a:>16}  {c:>10}" for m, b, a, c in self.rows]
        return "\n".join([head, *body])


def diff_stats(a: GraphStats | Graph, b: GraphStats | Graph) -> StatsDiff:
    """A before/after table: totals first, then every op type whose count changed or exists."""
    sa = a if isinstance(a, GraphStats) else graph_stats(a)
    sb = b if isinstance(b, GraphStats) else graph_stats(b)
    rows = [
        _row("nodes", sa.nodes, sb.nodes),
        _row("parameters", sa.parameters, sb.parameters),
        _row("constant bytes", sa.constant_bytes, sb.constant_bytes),
        _row("FLOPs", sa.flops, sb.flops),
    ]
    for op in sorted(set(sa.ops) | set(sb.ops)):
        rows.append(_row(f"  {op}", sa.ops.get(op, 0), sb.ops.get(op, 0)))
    return StatsDiff(tuple(rows))


def _row(metric: str, before: int | None, after: int | None) -> tuple[str, str, str, str]:
    def fmt(x: int | None) -> str:
        return "unknown" if x is None else f"{x:,}"

    if before is None or after is None:
        change = "?"
    elif before == after:
        change = "="
    elif before == 0:
        change = f"+{after:,}"
    else:
        change = f"{(after - before) / before:+.1%}"
    return metric, fmt(before), fmt(after), change
