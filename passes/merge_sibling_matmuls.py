"""merge-sibling-matmuls: products of one input with constant weights become one wider product.

    epi(x @ W_i + b_i), i = 1..n  ->  Y = epi(x @ [W_1 | ... | W_n] + [b_1 | ... | b_n]),
                                      then one Slice per product takes its columns of Y

Transformer encoders compute Q, K and V as three products of the same normalised input. At batch 1
each is a small GEMM whose time is mostly its launch (MiniLM-L6 on the H200: 18 launches of 3.3 us,
docs/cuda.md); one GEMM over the concatenated weights does the same work in one launch with three
times the columns to spread over the GPU, and on the CPU one wider packed GEMM. A Slice along the
last axis is injective, so TVM fuses it into the reshape/transpose into heads that already follows
it and the slices add no launch; a Split would be a kernel of its own (MiniLM fp16 on CUDA: 90
kernel calls per run with slices, 96 with splits, 102 unmerged).

Where: right after fuse-operators. Each product's epilogue is then decided (a FusedMatMul's body is
exactly what its kernel computes), so "the same epilogue" is a comparison of bodies rather than a
second copy of fusion's growth rules, and the merged product is again one kernel with its epilogue.
Before fusion, the compression passes, which go just before fuse-operators
(compiler/cli/compression_args.py), would see one QKV layer instead of three: per-layer choices (the
layers an accuracy budget keeps in float, bias correction) and `effarch quantize`'s output would
change. Here each layer is quantized already: a weight-only weight (a DequantizeLinear of constants,
quantize-weights) merges when its scales go per column, per block along K, or per tensor with one
scale for all; integer products (MatMulInteger, from integer-ops and quantize-dynamic) stay apart.

Siblings merge when they read the same value as their left operand, have 2-D weights of the same
dtype and quantization, the same product attributes (Gemm's transA, transB, alpha, beta) and the
same epilogue: the same ops and attributes, wired the same way, whose constants are either per
column (shape [1, .., N], concatenated) or one value for all columns (one element or [.., 1], equal
in all). Left alone, each with its reason: a weight that is not constant, an epilogue that reads
another tensor (a residual) or per-axis parameters, a plain product whose epilogue fuse-operators has
not grouped yet (merged, it would lose it), a different epilogue, a weight quantized per tensor with
another scale, or a merged weight over ``MAX_MERGED_ELEMENTS``.

The rule is anchored on the first sibling in graph order: the shared input, the only input that is
not a constant, is defined before it, and every reader of a sibling's output comes after that
sibling, so the merged product and the slices all go just before the anchor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from compiler.ir import Graph, Node, Provenance, TensorType, Value
from compiler.ir.printer import value_digest
from compiler.pass_manager import register_pass
from compiler.pass_manager.fingerprint import attrs_key
from compiler.pass_manager.rules import Match, MatchResult, Rewriter, Rule, RuleSet, const, producer
from passes.fuse import BODY_CONSTANT_MAX, ELEMENTWISE, EPILOGUE, GROUP_DOMAIN, grow

PASS_NAME = "merge-sibling-matmuls"
RULE_NAME = "merge-siblings"
PRODUCTS = ("MatMul", "Gemm")
GROUP = f"{GROUP_DOMAIN}::FusedMatMul"
# The merged weight holds at most this many elements (64 MiB in fp32: QKV up to a hidden size of
# 2048). The concatenation is a copy the compile holds beside the originals until eliminate-dead-code,
# and past this size each call reads 32 MB or more of fp16 weights (7 us at an H200's 4.8 TB/s): the
# launches saved no longer decide the product's time. Siblings join in graph order within the bound.
MAX_MERGED_ELEMENTS = 1 << 24

Ref = tuple[Any, ...]  # an input's wiring: ("node", j, k), ("x",), ("w",), ("col", i, ...), ("same", i, digest)
Operand = Callable[[Ref], Value]


@dataclass(frozen=True)
class Weight:
    """A product's 2-D weight: a constant, or a DequantizeLinear ``dq`` of constants (``data`` is then
    its integer matrix). ``axis``: the column (N) axis of ``data``; ``scale_axis``: the axis along
    which the dequantization parameters concatenate, None when one scale serves the whole tensor."""

    value: Value
    data: np.ndarray
    axis: int
    key: tuple[Any, ...]
    dq: Node | None = None
    scale_axis: int | None = None

    @property
    def n(self) -> int:
        return int(self.data.shape[self.axis])


@dataclass(frozen=True)
class Product:
    """A product of the shared input ``x`` and its epilogue: a plain MatMul/Gemm, or a FusedMatMul
    whose body nodes (product first) are ``nodes``. ``refs`` wire each node's inputs; ``key`` is
    everything siblings must share to merge."""

    node: Node
    nodes: tuple[Node, ...]
    x: Value
    weight: Weight
    refs: tuple[tuple[Ref | None, ...], ...]
    columns: tuple[Value, ...]  # per-column constants, in the order the nodes read them
    sames: tuple[Value, ...]  # constants every sibling has equal
    result: Ref
    key: tuple[Any, ...]

    @property
    def ops(self) -> str:
        return "+".join(n.op for n in self.nodes)


# ---- describing one product -----------------------------------------------------------------------
def _members(node: Node) -> tuple[tuple[Node, ...], Callable[[Value], Value]]:
    """The nodes that compute ``node``'s output, and a map from their input values to outer ones."""
    table = {} if node.body is None else {id(b): o for b, o in zip(node.body.inputs, node.inputs, strict=True) if o}

    def outer(v: Value) -> Value:
        return table.get(id(v), v)
    return ((node,) if node.body is None else tuple(node.body.nodes)), outer


def shared_input(node: Node) -> Value | None:
    """The left operand of ``node``'s product (MatMul, Gemm or FusedMatMul), as a value of its graph."""
    if not ((node.op in PRODUCTS and not node.domain) or (node.qualified_op == GROUP and node.body.nodes)):
        return None
    nodes, outer = _members(node)
    a = nodes[0].inputs[0] if nodes[0].inputs else None
    return None if a is None else outer(a)


def describe(node: Node) -> Product | str:
    """``node`` as a Product, or why it cannot merge with anything."""
    nodes, outer = _members(node)
    core = nodes[0]
    if core.op not in PRODUCTS or core.domain:
        return f"its product is {core.qualified_op}; only MatMul and Gemm products merge"
    if node.body is None and len(grow(node, EPILOGUE)[0]) > 1:  # merged, it would lose that epilogue
        return "its output feeds an epilogue that fuse-operators has not grouped yet; merge after fusion"
    shape = core.outputs[0].type.shape if core.outputs[0].type else None
    weight = _weight(core, outer(core.inputs[1])) if len(core.inputs) > 1 and core.inputs[1] else "it has no weight"
    if isinstance(weight, str) or len(node.outputs) != 1 or not shape or shape[-1] != weight.n:
        return weight if isinstance(weight, str) else "its output is not one [.., N] tensor"
    x, position = shared_input(node), {id(n): j for j, n in enumerate(nodes)}
    columns: list[Value] = []
    sames: list[Value] = []
    refs, wiring = [], []
    for j, n in enumerate(nodes):
        row: list[Ref | None] = [("x",), ("w",)] if j == 0 else []
        reason = _epilogue_refusal(n, shape) if j else None
        for v in n.inputs[len(row):]:
            ref = _ref(v, outer, position, x, n.op in ELEMENTWISE or j == 0, weight.n, columns, sames)
            reason = reason or (ref if isinstance(ref, str) else None)
            row.append(None if isinstance(ref, str) else ref)
        if reason:
            return reason
        refs.append(tuple(row))
        wiring.append((n.op, n.domain, attrs_key(n.attrs), tuple(row), tuple(_columnless(o) for o in n.outputs)))
    out = node.body.outputs[0] if node.body is not None else core.outputs[0]
    result = ("node", position[id(out.producer)], out.index)
    assert x is not None  # describe is only asked about readers of x
    return Product(node, nodes, x, weight, tuple(refs), tuple(columns), tuple(sames), result,
                   (weight.key, tuple(wiring), result))


def _weight(core: Node, w: Value) -> Weight | str:
    axis = 0 if core.op == "Gemm" and core.attr("transB", 0) else 1
    data = const(w)
    if data is None:
        dq = producer(w, "DequantizeLinear")
        return _quantized(dq, w, axis) if dq is not None else f"its weight %{w.name} is not a constant"
    if data.ndim != 2:
        return f"its weight %{w.name} has rank {data.ndim}, not 2"
    return Weight(w, data, axis, (data.dtype.str, axis))


def _quantized(dq: Node, w: Value, axis: int) -> Weight | str:
    """A weight-only quantized weight: per tensor, per column, or in blocks along K."""
    q, params = const(dq.inputs[0]), [const(v) for v in dq.inputs[1:] if v is not None]
    if q is None or q.ndim != 2 or any(p is None for p in params):
        return f"its weight %{w.name} is a DequantizeLinear of values that are not constants of rank 2"
    along, block = int(dq.attr("axis", 1)) % 2, int(dq.attr("block_size", 0))
    base = (q.dtype.str, axis, tuple(p.dtype.str for p in params if p is not None), attrs_key(dq.attrs))
    if all(p.size == 1 for p in params if p is not None):
        digests = tuple(value_digest(v) for v in dq.inputs[1:] if v is not None)
        return Weight(w, q, axis, (*base, "per tensor", digests), dq, None)
    if along == axis and not block:
        return Weight(w, q, axis, (*base, "per column"), dq, 0)
    if along != axis and block:
        return Weight(w, q, axis, (*base, "per block along K"), dq, axis)
    where = "along K" if along != axis else "in blocks along N"
    return f"its weight %{w.name} is quantized {where}; its scales do not split by column"


def _epilogue_refusal(n: Node, shape: tuple[Any, ...]) -> str | None:
    if len(n.outputs) != 1 or n.body is not None:
        return f"its epilogue op {n.qualified_op} is not elementwise"
    t = n.outputs[0].type
    return None if t is not None and t.shape == shape else f"its epilogue value %{n.outputs[0].name} is {t}"


def _ref(v: Value | None, outer: Callable[[Value], Value], position: dict[int, int], x: Value | None,
         broadcast: bool, n: int, columns: list[Value], sames: list[Value]) -> Ref | str | None:
    """How an input after the product's own two is wired, or why it cannot be: a constant is per
    column (shape [1, .., N] under numpy broadcasting) or one value for all columns."""
    if v is None:
        return None
    if v.producer is not None and id(v.producer) in position:
        return ("node", position[id(v.producer)], v.index)
    o = outer(v)
    a = const(o)
    if a is None:
        return f"its epilogue reads %{o.name}, which is {'the shared input again' if o is x else 'not a constant'}"
    if a.size == 1 or (broadcast and a.ndim and a.shape[-1] == 1):
        sames.append(o)
        return ("same", len(sames) - 1, value_digest(o))
    if broadcast and a.shape[-1] == n and all(d == 1 for d in a.shape[:-1]):
        columns.append(o)
        return ("col", len(columns) - 1, a.dtype.str, a.ndim)
    return f"its epilogue constant %{o.name} {list(a.shape)} is neither per column nor one value for all columns"


def mismatch(a: Product, b: Product) -> str:
    """Why ``b`` cannot join ``a``."""
    if a.weight.key != b.weight.key:
        if a.weight.key[-2:-1] == b.weight.key[-2:-1] == ("per tensor",):
            return "its weight is quantized per tensor with another scale or zero point"
        return "its weight's dtype, layout or quantization differs"
    if a.ops != b.ops:
        return f"its epilogue is {b.ops}, not {a.ops}"
    return "its attributes, wiring or epilogue constants for all columns differ"


# ---- the rule ---------------------------------------------------------------------------------------
def match_siblings(node: Node) -> MatchResult:
    x = shared_input(node)
    readers = _readers(x) if x is not None else []
    if len(readers) < 2:
        return None  # no sibling: no candidate
    me = describe(node)
    if isinstance(me, str):
        return me
    others = {id(r): describe(r) for r in readers if r is not node}
    partners = [p for p in others.values() if isinstance(p, Product) and p.key == me.key]
    if any(readers.index(p.node) < readers.index(node) for p in partners):
        return None  # the first of them merges them, or says why not
    if not partners:
        why = [f"%{r.outputs[0].name}: {d if isinstance(d, str) else mismatch(me, d)}"
               for r in readers if r is not node for d in [others[id(r)]]]
        return f"no other product of %{me.x.name} can join it ({'; '.join(why[:3])})"
    parts = [me]
    for p in partners:
        if sum(q.weight.data.size for q in (*parts, p)) > MAX_MERGED_ELEMENTS:
            break
        parts.append(p)
    if len(parts) < 2:
        size, other = me.weight.data.size + partners[0].weight.data.size, partners[0].node.outputs[0].name
        return f"with %{other} its weight would hold {size} elements, over the bound of {MAX_MERGED_ELEMENTS}"
    detail = f"{len(parts)} products of %{me.x.name}, N = {'+'.join(str(p.weight.n) for p in parts)}"
    return Match(node, absorbed=tuple(p.node for p in parts[1:]), bind={"parts": parts}, detail=detail)


def _readers(x: Value) -> list[Node]:
    """The products reading ``x`` as their left operand, in graph order."""
    found = {id(u): u for u, _ in x.uses if shared_input(u) is x}
    graph = next(iter(found.values())).graph if found else None
    return [n for n in graph.nodes if id(n) in found] if graph is not None else []


def rewrite_siblings(rw: Rewriter, m: Match) -> None:
    parts: list[Product] = m.bind["parts"]
    first, n = parts[0], sum(p.weight.n for p in parts)
    columns = [np.concatenate([const(p.columns[i]) for p in parts], axis=-1) for i in range(len(first.columns))]
    weight = _merged_weight(rw, parts)
    if first.node.body is not None:
        merged = _merged_group(rw, parts, n, weight, columns)
    else:
        def bind(ref: Ref, name: str, value: Value | None, array: np.ndarray | None) -> Value:
            return value if value is not None else rw.constant(name, array)  # type: ignore[arg-type]  # one is set

        def make(node: Node, ins: list[Value | None], types: list[TensorType], _: Provenance) -> Node:
            return rw.node(node.op, ins, dict(node.attrs), types=types)
        merged = _rebuild(parts, n, make, _operands(first, weight, columns, bind))
    axes = rw.constant("columns_axis", np.array([-1], np.int64))
    start = 0
    for p in parts:  # one Slice per product: injective, so it fuses into whatever reads it next
        out, end = p.node.outputs[0], start + p.weight.n
        bounds = [rw.constant(f"{out.name}_{what}", np.array([at], np.int64)) for what, at in (("start", start),
                                                                                                ("end", end))]
        piece = rw.node("Slice", [merged, *bounds, axes], types=[out.type], name=p.node.name)
        piece.provenance = p.node.provenance.rewritten(PASS_NAME, RULE_NAME)  # where this product came from
        rw.replace(out, piece.outputs[0])
        start = end


def _merged_weight(rw: Rewriter, parts: list[Product]) -> Value | np.ndarray:
    """The concatenated weight: an array for a float weight, a new DequantizeLinear's output else."""
    w = parts[0].weight
    data = np.concatenate([p.weight.data for p in parts], axis=w.axis)
    if w.dq is None:
        return data
    params = [v for v in w.dq.inputs[1:] if v is not None]  # one scale (and zero point) for all: kept
    if w.scale_axis is not None:
        per_part = [[const(v) for v in p.weight.dq.inputs[1:] if v is not None] for p in parts if p.weight.dq]
        params = [rw.constant(f"{v.name}_merged", np.concatenate(arrays, axis=w.scale_axis))
                  for v, arrays in zip(params, zip(*per_part, strict=True), strict=True)]
    assert w.value.type is not None  # a verified graph is typed
    dequantized = TensorType(w.value.type.dtype, data.shape)
    q = rw.constant(f"{w.value.name}_q", data)
    return rw.node("DequantizeLinear", [q, *params], dict(w.dq.attrs), types=[dequantized]).outputs[0]


Bind = Callable[[Ref, str, Value | None, np.ndarray | None], Value]


def _operands(first: Product, weight: Value | np.ndarray, columns: list[np.ndarray], bind: Bind) -> Operand:
    """The merged product's operands, made by ``bind(ref, name, value, array)`` from a value or an array."""
    def operand(ref: Ref) -> Value:
        if ref[0] == "x":
            return bind(ref, first.x.name, first.x, None)
        if ref[0] == "w":
            name = f"{first.weight.value.name}_merged"
            return bind(ref, name, weight, None) if isinstance(weight, Value) else bind(ref, name, None, weight)
        if ref[0] == "col":
            return bind(ref, f"{first.columns[ref[1]].name}_merged", None, columns[ref[1]])
        same = first.sames[ref[1]]
        return bind(ref, same.name, same, same.const)
    return operand


def _merged_group(rw: Rewriter, parts: list[Product], n: int, weight: Value | np.ndarray,
                  columns: list[np.ndarray]) -> Value:
    """A FusedMatMul like the first part's on the merged operands: constants up to BODY_CONSTANT_MAX
    elements inside its body, as fuse-operators puts them, everything else an input."""
    first, body, args = parts[0], Graph(parts[0].node.body.name), []
    made: dict[Ref, Value] = {}

    def bind(ref: Ref, name: str, value: Value | None, array: np.ndarray | None) -> Value:
        if ref not in made and array is not None and array.size <= BODY_CONSTANT_MAX:
            made[ref] = body.add_constant(name, array)
        elif ref not in made:
            args.append(value if value is not None else rw.constant(name, array))  # type: ignore[arg-type]  # one is set
            made[ref] = body.add_input(args[-1].name, args[-1].type)  # type: ignore[arg-type]  # typed graph
        return made[ref]

    def make(node: Node, ins: list[Value | None], types: list[TensorType], prov: Provenance) -> Node:
        return body.make_node(node.op, ins, dict(node.attrs), num_outputs=len(types), types=list(types),
                              output_names=[o.name for o in node.outputs], domain=node.domain, name=node.name,
                              provenance=prov)

    body.outputs = [_rebuild(parts, n, make, _operands(first, weight, columns, bind))]
    out = rw.graph.value(f"{first.node.outputs[0].name}_merged", _widen(first.node.outputs[0], n))
    group = Node(first.node.op, list(args), {}, [out], domain=GROUP_DOMAIN, name=first.node.name, body=body)
    return rw.insert(group).outputs[0]


def _rebuild(parts: list[Product], n: int, make: Callable[..., Node], operand: Operand) -> Value:
    """The first part's nodes again, on the merged operands and N columns; returns its result. Each
    node's provenance merges the sources of the same node in the other parts."""
    first, made = parts[0], dict[Ref, Value]()
    for j, (node, refs) in enumerate(zip(first.nodes, first.refs, strict=True)):
        ins = [None if r is None else made[r[1:]] if r[0] == "node" else operand(r) for r in refs]
        merged = tuple(s for p in parts[1:] for s in (p.nodes[j].provenance.source, *p.nodes[j].provenance.merged))
        new = make(node, ins, [_widen(o, n) for o in node.outputs],
                   node.provenance.rewritten(PASS_NAME, RULE_NAME, merged=tuple(s for s in merged if s)))
        made.update(((j, k), o) for k, o in enumerate(new.outputs))
    return made[first.result[1:]]


def _columnless(v: Value) -> tuple[Any, ...]:
    """A value's type but for its last dim, which differs between siblings."""
    assert v.type is not None and v.type.shape  # describe checked every type
    return (v.type.dtype, v.type.shape[:-1])


def _widen(v: Value, n: int) -> TensorType:
    assert v.type is not None and v.type.shape  # describe checked every type
    return TensorType(v.type.dtype, (*v.type.shape[:-1], n))


@register_pass
class MergeSiblingMatMuls(RuleSet):
    name = PASS_NAME
    description = "merge MatMul/Gemm/FusedMatMul products of one input (Q, K, V) into one wider product and slices"
    rules = (Rule(RULE_NAME, "epi(x @ W_i + b_i), i = 1..n -> Slice_i(epi(x @ [W_1..W_n] + [b_1..b_n]))",
                  (*PRODUCTS, GROUP), match_siblings, rewrite_siblings),)
