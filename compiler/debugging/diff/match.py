"""Matching the nodes of graph A to the nodes of graph B: provenance first, then structure.

1. Provenance: nodes with the same ``provenance.source`` are the same node (within a source, the
   same node name first, then the same op in graph order). A B node whose ``provenance.merged``
   names sources it did not already carry in A absorbed the A nodes with those sources: a fusion.
2. Structure, for the rest: see ``compiler.debugging.diff.structure``.
"""

from __future__ import annotations

import logging

from compiler.debugging.diff.sides import Matching, Side, attr_key
from compiler.debugging.diff.structure import match_by_structure, match_small_pieces, propagate
from compiler.ir import Node, Value
from compiler.ir.printer import value_digest

__all__ = ["Matching", "Side", "attr_key", "match_nodes", "same_payload"]

log = logging.getLogger(__name__)


# ---- 1. provenance ----------------------------------------------------------------------------
def match_by_provenance(a: Side, b: Side, m: Matching) -> None:
    groups_b = b.by_source()
    for source, ia in a.by_source().items():
        for i, j in _pair_same_op_first(a, ia, b, groups_b.get(source, [])):
            m.add(i, j, "provenance")
    _find_fusions(a, b, m)


def _pair_same_op_first(a: Side, ia: list[int], b: Side, jb: list[int]) -> list[tuple[int, int]]:
    """Within one source: the same node name first (exporters name nodes uniquely and passes keep
    the name of the node they rewrite), then the same op in graph order, then a node that became
    another op (``Conv`` -> ``FusedConv``, an op inside a group's body, or the last one left)."""
    by_name = {b.nodes[j].name: j for j in jb if b.nodes[j].name}
    pairs = [(i, by_name[a.nodes[i].name]) for i in ia if a.nodes[i].name in by_name]
    rest_a = [i for i in ia if i not in {p for p, _ in pairs}]
    rest_b = [j for j in jb if j not in {q for _, q in pairs}]
    for related in (_same_op, _became):
        for i in list(rest_a):
            j = next((j for j in rest_b if related(a.nodes[i], b.nodes[j])), None)
            if j is not None:
                pairs.append((i, j))
                rest_a.remove(i)
                rest_b.remove(j)
    if len(rest_a) == len(rest_b) == 1:
        pairs.append((rest_a[0], rest_b[0]))
    return pairs


def _same_op(x: Node, y: Node) -> bool:
    return x.qualified_op == y.qualified_op


def _became(x: Node, y: Node) -> bool:
    in_body = y.body is not None and any(n.qualified_op == x.qualified_op for n in y.body.nodes)
    return in_body or x.op in y.op


def _find_fusions(a: Side, b: Side, m: Matching) -> None:
    """A B node whose ``merged`` gained sources absorbed the unmatched A nodes with those sources
    that connect to its A counterpart (a source can name several nodes, e.g. a ReLU module used
    twice; each use fuses into a different node)."""
    groups_a = a.by_source()
    taken = set(m.pairs)
    b_to_a = {j: i for i, j in m.pairs.items()}
    for j, node in enumerate(b.nodes):
        head = b_to_a.get(j)
        old = a.nodes[head].provenance.merged if head is not None else ()
        new_sources = {s for s in node.provenance.merged if s not in old}
        candidates = {i for s in new_sources for i in groups_a.get(s, []) if i not in taken}
        absorbed = _connected(a, head, candidates) if head is not None else candidates
        if absorbed:
            m.absorbed[j] = sorted(absorbed)
            m.taken_b.add(j)
            taken |= absorbed


def _connected(a: Side, head: int, candidates: set[int]) -> set[int]:
    """The candidates reachable from ``head`` through candidates, along edges either way."""
    found: set[int] = set()
    frontier = [head]
    while frontier:
        i = frontier.pop()
        near = [a.producer(v) for v in a.nodes[i].inputs] + [u for u, _ in a.users[i] if isinstance(u, int)]
        for k in near:
            if k in candidates and k not in found:
                found.add(k)
                frontier.append(k)
    return found


def match_nodes(a: Side, b: Side) -> Matching:
    m = Matching()
    match_by_provenance(a, b, m)
    log.debug("provenance matched %d of %d nodes", len(m.pairs), len(a.nodes))
    propagate(a, b, m, list(m.pairs.items()))
    match_by_structure(a, b, m)
    match_small_pieces(a, b, m)
    log.debug("matched %d nodes, %d fusions", len(m.pairs), len(m.absorbed))
    return m


def same_payload(va: Value, vb: Value) -> bool:
    return str(va.type) == str(vb.type) and value_digest(va) == value_digest(vb)
