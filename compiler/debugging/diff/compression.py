"""The compression view of a diff: what quantization and pruning made of each weighted layer of A.

For every Conv, MatMul and Gemm of A, the op of B that does its product now, found by provenance
(the k-th such op of A with a source is the k-th product op of B with that source, looking inside
fusion groups' bodies too; without a source, the diff's own match), and how it computes:
- ``int8``: weight i8 and activation u8 with a calibrated scale, as an integer op
  (ConvInteger/MatMulInteger) or in QDQ form (the op reads DequantizeLinear of both);
- ``int8-dynamic``: the same with the activation's scale measured at run time (DynamicQuantizeLinear);
- ``int8-weights`` / ``int4-weights``: only the weight is quantized, the activation stays float;
- ``float``: kept float; ``removed``: nothing in B does its product.
Channels that pruning removed show as ``out 32 -> 24`` (``in`` for the layers reading them). When
B records the compression passes' notes (``effarch quantize`` does: compiler.compression.notes),
each layer lists those about its source: why it stayed float, what was removed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from compiler.compression.notes import LayerNote, from_graph
from compiler.debugging.diff.model import LayerCompression, NodeRef
from compiler.debugging.diff.sides import Side
from compiler.ir import Graph, Node, Value

PRODUCTS = ("Conv", "MatMul", "Gemm")
INTEGER_PRODUCTS = ("ConvInteger", "MatMulInteger")
DYNAMIC = "at run time"

# (B index, the product op, the group node holding it or None)
Found = tuple[int, Node, Node | None]


def compression_view(sa: Side, sb: Side, matches: dict[int, int]) -> list[LayerCompression]:
    """One entry per Conv/MatMul/Gemm of A; empty when B compressed none of them."""
    notes = _notes_by_source(from_graph(sb.graph))
    in_b = _products_by_source(sb)
    seen: dict[str, int] = defaultdict(int)
    layers = []
    for i, n in enumerate(sa.nodes):
        if n.domain or n.op not in PRODUCTS:
            continue
        source = n.provenance.source
        found = _nth(in_b.get(source, []), seen[source]) if source else _matched(sb, matches.get(i))
        seen[source] += 1
        layers.append(_layer(NodeRef.of(n, i), n, sb, found, notes.get(source, ()) if source else ()))
    return layers if any(layer.compressed for layer in layers) else []


def _nth(found: list[Found], k: int) -> Found | None:
    return found[k] if k < len(found) else None


def _products_by_source(sb: Side) -> dict[str, list[Found]]:
    out: dict[str, list[Found]] = defaultdict(list)
    for j, node in enumerate(sb.nodes):
        for m, group in _with_body(node):
            if _is_product(m) and m.provenance.source:
                out[m.provenance.source].append((j, m, group))
    return out


def _with_body(node: Node) -> list[tuple[Node, Node | None]]:
    if node.body is None:
        return [(node, None)]
    return [(m, node) for m in node.body.nodes]


def _is_product(n: Node) -> bool:
    return not n.domain and n.op in PRODUCTS + INTEGER_PRODUCTS


def _matched(sb: Side, j: int | None) -> Found | None:
    if j is None:
        return None
    return next(((j, m, group) for m, group in _with_body(sb.nodes[j]) if _is_product(m)), None)


def _notes_by_source(notes: list[LayerNote]) -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = defaultdict(list)
    for n in notes:
        if n.source:
            out[n.source].append(f"{n.pass_name}: {'did' if n.fired else 'skipped'}: {n.reason}")
    return {k: tuple(v) for k, v in out.items()}


# ---- one layer --------------------------------------------------------------------------------
def _layer(a: NodeRef, n: Node, sb: Side, found: Found | None, notes: Sequence[str]) -> LayerCompression:
    if found is None:
        return LayerCompression(a, None, "removed", "", "", "", "", tuple(notes))
    j, p, group = found
    weight, stored = _weight(p, group)
    activation = _activation(p, group)
    product = p.op + (f" in {group.qualified_op}" if group is not None else "")
    return LayerCompression(a, NodeRef.of(sb.nodes[j], j), _scheme(weight, activation), product, weight,
                            activation, _channels(n, _input(n, 1), p, stored), tuple(notes))


def _scheme(weight: str, activation: str) -> str:
    if weight.startswith("f") or weight == "?":
        return "float"
    if not activation.startswith(("f", "?")):
        return "int8-dynamic" if DYNAMIC in activation else "int8"
    return "int4-weights" if weight.startswith(("i4", "u4")) else "int8-weights"


def _weight(p: Node, group: Node | None) -> tuple[str, Value | None]:
    """(the stored weight's dtype, as text; the stored weight)."""
    w = _outer(_input(p, 1), group)
    dq = _producer(w, "DequantizeLinear")
    if dq is not None and p.op not in INTEGER_PRODUCTS:
        w = dq.inputs[0]
    if w is None or w.type is None:
        return "?", None
    block = int(dq.attr("block_size", 0)) if dq is not None else 0
    return w.type.dtype.short + (f" in groups of {block}" if block else ""), w


def _activation(p: Node, group: Node | None) -> str:
    x = _outer(_input(p, 0), group)
    dq = _producer(x, "DequantizeLinear")
    if dq is not None and p.op not in INTEGER_PRODUCTS:
        x = dq.inputs[0]
    if x is None or x.type is None:
        return "?"
    if x.type.dtype.is_float:
        return x.type.dtype.short
    return f"{x.type.dtype.short} {DYNAMIC if _producer(x, 'DynamicQuantizeLinear') else 'calibrated'}"


def _channels(a: Node, wa: Value | None, b: Node, wb: Value | None) -> str:
    before, after = _out_in(a, wa), _out_in(b, wb)
    if before is None or after is None:
        return ""
    parts = [f"{side} {x} -> {y}" for side, x, y in zip(("out", "in"), before, after, strict=True) if x != y]
    return ", ".join(parts)


def _out_in(n: Node, w: Value | None) -> tuple[int, int] | None:
    """(output channels, input channels) of a product op from its weight's shape."""
    shape = w.type.shape if w is not None and w.type is not None else None
    if shape is None or len(shape) < 2 or not all(isinstance(d, int) for d in shape):
        return None
    dims = [int(d) for d in shape]  # type: ignore[arg-type]  # checked above: all ints
    if n.op in ("Conv", "ConvInteger"):
        return dims[0], dims[1] * int(n.attr("group", 1))
    if n.op == "Gemm" and n.attr("transB", 0):
        return dims[0], dims[1]
    return dims[-1], dims[-2]


# ---- values through groups --------------------------------------------------------------------
def _input(n: Node, k: int) -> Value | None:
    return n.inputs[k] if len(n.inputs) > k else None


def _outer(v: Value | None, group: Node | None) -> Value | None:
    """A value of a group's body that is one of the body's inputs is the group's input there."""
    body: Graph | None = group.body if group is not None else None
    if v is None or group is None or body is None:
        return v
    k = next((k for k, u in enumerate(body.inputs) if u is v), None)
    return v if k is None else _input(group, k)


def _producer(v: Value | None, op: str) -> Node | None:
    return v.producer if v is not None and v.producer is not None and v.producer.op == op else None

