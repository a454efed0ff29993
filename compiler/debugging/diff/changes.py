"""From a node matching to a ``GraphDiff``: what changed on each matched node, fusions, constants."""

from __future__ import annotations

import numpy as np

from compiler.debugging.diff.compression import compression_view
from compiler.debugging.diff.match import Matching, Side, attr_key, match_nodes, same_payload
from compiler.debugging.diff.model import Change, ConstantChange, Fused, GraphDiff, NodeRef, Rewritten
from compiler.ir import Graph, Node, Value
from compiler.ir.printer import format_attr, format_type


def diff_graphs(a: Graph, b: Graph, label_a: str = "a", label_b: str = "b") -> GraphDiff:
    """The node-level diff of ``a`` (before) and ``b`` (after)."""
    sa, sb = Side(a), Side(b)
    m = match_nodes(sa, sb)
    consts = match_constants(sa, sb, m)
    d = GraphDiff(label_a, label_b, len(a.nodes), len(b.nodes), dict(m.pairs), dict(m.how))
    cmp = _Comparer(sa, sb, m, consts)
    heads = _record_fusions(sa, sb, m, d, cmp)
    for i, j in sorted(m.pairs.items()):
        changes = cmp.changes(i, j)
        if changes and j not in heads:
            d.rewritten.append(Rewritten(_ref(sa, i), _ref(sb, j), m.how[i], changes))
    absorbed = m.absorbed_a()
    d.removed = [_ref(sa, i) for i in range(len(a.nodes)) if i not in m.pairs and i not in absorbed]
    matched_b = set(m.pairs.values()) | set(m.absorbed)
    d.added = [_ref(sb, j) for j in range(len(b.nodes)) if j not in matched_b]
    _record_constants(a, b, consts, d)
    d.compression = compression_view(sa, sb, d.matches)
    return d


def _ref(side: Side, i: int) -> NodeRef:
    return NodeRef.of(side.nodes[i], i)


def _record_fusions(sa: Side, sb: Side, m: Matching, d: GraphDiff, cmp: _Comparer) -> set[int]:
    b_to_a = {j: i for i, j in m.pairs.items()}
    for j, absorbed in sorted(m.absorbed.items()):
        head = [b_to_a[j]] if j in b_to_a else []
        old = sa.nodes[head[0]].provenance.rewrites if head else ()
        rules = tuple(r for r in sb.nodes[j].provenance.rewrites if r not in old)
        attrs = tuple(c for c in cmp.changes(head[0], j) if c.what == "attr") if head else ()
        d.fused.append(Fused(tuple(_ref(sa, i) for i in sorted(head + absorbed)), _ref(sb, j), rules, attrs))
    return set(m.absorbed)


# ---- constants --------------------------------------------------------------------------------
def match_constants(sa: Side, sb: Side, m: Matching) -> dict[str, str]:
    """Constant name in A -> name in B: by name, then by the matched consumer slot they feed."""
    ca, cb = sa.graph.constants, sb.graph.constants
    pairs = {name: name for name in ca if name in cb}
    taken_b = set(pairs.values())
    for i, j in m.pairs.items():
        for va, vb in zip(sa.nodes[i].inputs, sb.nodes[j].inputs, strict=False):
            if _free_const(va, ca, pairs) and _free_const(vb, cb, taken_b):
                pairs[va.name] = vb.name  # type: ignore[union-attr]  # checked by _free_const
                taken_b.add(vb.name)  # type: ignore[union-attr]
    return pairs


def _free_const(v: Value | None, consts: dict[str, Value], taken: object) -> bool:
    return v is not None and consts.get(v.name) is v and v.name not in taken  # type: ignore[operator]


def _record_constants(a: Graph, b: Graph, pairs: dict[str, str], d: GraphDiff) -> None:
    for name_a, name_b in pairs.items():
        va, vb = a.constants[name_a], b.constants[name_b]
        if not same_payload(va, vb):
            how = "name" if name_a == name_b else "consumer"
            d.constants.append(ConstantChange(name_a, name_b, how, format_type(va.type), format_type(vb.type),
                                              max_abs_change(va, vb)))
    d.constants_removed = sorted(set(a.constants) - set(pairs))
    d.constants_added = sorted(set(b.constants) - set(pairs.values()))


def max_abs_change(va: Value, vb: Value) -> float | None:
    if va.const is None or vb.const is None or va.const.shape != vb.const.shape:
        return None
    if va.const.size == 0:
        return 0.0
    delta = va.const.astype(np.float64) - vb.const.astype(np.float64)
    return float(np.max(np.abs(delta)))


# ---- matched nodes ----------------------------------------------------------------------------
class _Comparer:
    """Compares matched nodes; inputs count as equal when they come from matched places."""

    def __init__(self, sa: Side, sb: Side, m: Matching, consts: dict[str, str]) -> None:
        self.sa, self.sb, self.m, self.consts = sa, sb, m, consts
        self.absorbed = m.absorbed_a()

    def changes(self, i: int, j: int) -> tuple[Change, ...]:
        na, nb = self.sa.nodes[i], self.sb.nodes[j]
        out: list[Change] = []
        if na.qualified_op != nb.qualified_op:
            out.append(Change("op", "", na.qualified_op, nb.qualified_op))
        out += _attr_changes(na, nb)
        out += self._input_changes(na, nb)
        out += _type_changes(na, nb)
        new_rules = [r for r in nb.provenance.rewrites if r not in na.provenance.rewrites]
        if new_rules:
            out.append(Change("rewrites", "", ",".join(na.provenance.rewrites), ",".join(new_rules)))
        return tuple(out)

    def _input_changes(self, na: Node, nb: Node) -> list[Change]:
        ins_a, ins_b = list(na.inputs), list(nb.inputs)
        width = max(len(ins_a), len(ins_b))
        ins_a += [None] * (width - len(ins_a))
        ins_b += [None] * (width - len(ins_b))
        return [Change("input", str(k), self._describe(self.sa, va), self._describe(self.sb, vb))
                for k, (va, vb) in enumerate(zip(ins_a, ins_b, strict=True)) if not self._same_input(va, vb)]

    def _same_input(self, va: Value | None, vb: Value | None) -> bool:
        if va is None or vb is None:
            return va is vb
        pa, pb = self.sa.producer(va), self.sb.producer(vb)
        if pa is not None and pb is not None:
            if self.absorbed.get(pa) == pb:
                return True  # the producer was fused into pb
            return self.m.pairs.get(pa) == pb and va.index == vb.index
        if pa is not None or pb is not None:
            return False
        if va.name in self.sa.graph.constants:
            return self.consts.get(va.name) == vb.name
        return va.name == vb.name and vb.name not in self.sb.graph.constants

    @staticmethod
    def _describe(side: Side, v: Value | None) -> str:
        if v is None:
            return "_"
        p = side.producer(v)
        if p is not None:
            return f"%{v.name} from {NodeRef.of(side.nodes[p], p)}"
        kind = "const" if v.name in side.graph.constants else "input"
        return f"%{v.name} ({kind} {format_type(v.type)})"


def _attr_changes(na: Node, nb: Node) -> list[Change]:
    out = []
    for key in sorted(set(na.attrs) | set(nb.attrs)):
        a, b = na.attrs.get(key), nb.attrs.get(key)
        if a is None or b is None or attr_key(a) != attr_key(b):
            out.append(Change("attr", key, _attr_text(a), _attr_text(b)))
    return out


def _attr_text(value: object) -> str:
    return "(absent)" if value is None else format_attr(value)


def _type_changes(na: Node, nb: Node) -> list[Change]:
    ta = [format_type(v.type) for v in na.outputs]
    tb = [format_type(v.type) for v in nb.outputs]
    if len(ta) != len(tb):
        return [Change("type", "*", ", ".join(ta), ", ".join(tb))]
    return [Change("type", str(k), x, y) for k, (x, y) in enumerate(zip(ta, tb, strict=True)) if x != y]
