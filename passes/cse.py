"""eliminate-common-subexpressions: merge nodes that compute the same thing, and equal constants.

Rules:
- ``same-constant``: two constants with equal dtype, shape and bytes -> one (the first by name)
- ``same-node``: op(a, b) {attrs} twice -> once; inputs compare by identity, constants by content
  (dtype, shape and bytes), so two equal weights loaded twice still merge. Commutative ops compare
  their inputs as a multiset: Add(a, b) and Add(b, a) merge.
The first node in graph order stays and merges the other's provenance; the other's users read the
first's outputs. A graph output keeps its name (the kept value takes it); when both are graph
outputs nothing merges. Nondeterministic ops and group nodes (their bodies) never merge.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from compiler.ir import Graph, Node, Value
from compiler.ir.printer import value_digest
from compiler.pass_manager import Note, Pass, PassContext, PassResult, register_pass
from compiler.pass_manager.fingerprint import attrs_key
from compiler.pass_manager.rules import forward_refusal
from passes.fold_constants import NONDETERMINISTIC

COMMUTATIVE = frozenset({"Add", "Mul", "Max", "Min", "Sum", "Mean", "And", "Or", "Xor", "Equal"})


@register_pass
class EliminateCommonSubexpressions(Pass):
    name = "eliminate-common-subexpressions"
    description = "merge nodes with the same op, attributes and inputs, and constants with the same content"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        notes = merge_constants(graph, self.name)
        seen: dict[tuple[Any, ...], Node] = {}
        for node in graph.nodes_snapshot():
            key = node_key(node)
            if key is None:
                continue
            kept = seen.setdefault(key, node)
            if kept is not node:
                notes.append(self.merge(graph, kept, node))
        return PassResult(graph, any(n.fired for n in notes), notes)

    def merge(self, graph: Graph, kept: Node, dup: Node) -> Note:
        for old, new in zip(dup.outputs, kept.outputs, strict=True):
            refusal = forward_refusal(graph, old, new)
            if refusal:
                return Note.at(dup, "same-node", f"same as %{new.name}, but {refusal}")
        for old, new in zip(dup.outputs, kept.outputs, strict=True):
            _replace(graph, old, new)
        merged = (dup.provenance.source, *dup.provenance.merged)
        kept.provenance = kept.provenance.rewritten(self.name, "same-node", tuple(s for s in merged if s))
        graph.remove_node(dup)
        return Note.at(kept, "same-node", f"merged {dup.op} %{dup.outputs[0].name} into this node", fired=True)


def node_key(node: Node) -> tuple[Any, ...] | None:
    """What makes two nodes compute the same outputs, or None for nodes that never merge."""
    if node.body is not None or node.op in NONDETERMINISTIC:
        return None
    ins = [value_key(v) for v in node.inputs]
    if node.op in COMMUTATIVE and not node.domain:
        ins = sorted(ins, key=repr)
    types = tuple(str(v.type) for v in node.outputs)
    return (node.domain, node.op, attrs_key(node.attrs), tuple(ins), types)


def value_key(v: Value | None) -> Any:
    if v is None:
        return None
    if v.is_constant:
        return ("const", value_digest(v))
    return id(v)


def merge_constants(graph: Graph, pass_name: str) -> list[Note]:
    """Point every user of a constant at the first (by name) constant with the same content."""
    notes: list[Note] = []
    first: dict[str | None, Value] = {}
    for name in sorted(graph.constants):
        v = graph.constants[name]
        if not v.uses or v in graph.outputs:
            continue
        kept = first.setdefault(value_digest(v), v)
        if kept is v or not _same_payload(kept, v):
            continue
        v.replace_all_uses_with(kept)
        notes.append(Note("same-constant", f"users of %{name} now read %{kept.name}, its equal", fired=True))
    return notes


def _same_payload(a: Value, b: Value) -> bool:
    # The digest is 64 bits of sha256; compare the bytes too before merging weights.
    if a.const is None or b.const is None:
        return a.const_digest is not None and a.const_digest == b.const_digest
    return a.const.dtype == b.const.dtype and np.array_equal(a.const, b.const, equal_nan=True)


def _replace(graph: Graph, old: Value, new: Value) -> None:
    if old in graph.outputs:
        old.name, new.name = new.name, old.name  # the interface keeps its name
    graph.replace_value(old, new)
