"""Structural matching of the nodes provenance left unmatched.

- Propagation: from each matched pair, an unmatched producer at the same input slot, or the one
  unmatched user of an output with that op and slot, with the same op on both sides, is the same
  node. Linear in the graph, and it walks long runs that signatures would need many rounds for.
- Weisfeiler-Lehman-style signatures over the unmatched nodes, where a matched neighbour counts as
  a fixed anchor shared by both sides, so signatures agree exactly where the neighbourhoods do.
  Levels go from strict (op, attributes, inputs and users, three hops) to loose (op and one side
  of the neighbourhood). Unique signatures match first; each round adds anchors and propagates
  from them. When rounds stall, equal signatures pair in graph order.
- What is left, in small weakly connected pieces, goes to networkx's ISMAGS: the largest common
  subgraph of two pieces pairs nodes whose every neighbour changed. It is exponential in the
  worst case, hence only on pieces of at most ``NX_PIECE_LIMIT`` nodes.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

import networkx as nx

from compiler.debugging.diff.sides import Matching, Side, attrs_key
from compiler.ir import Node, Value

log = logging.getLogger(__name__)

NX_PIECE_LIMIT = 12
NX_BUDGET = 2000  # piece comparisons at most, so many small leftovers cannot take minutes
MAX_ROUNDS = 30


@dataclass(frozen=True)
class Level:
    """One strictness level of structural signatures."""

    attrs: bool
    inputs: bool
    users: bool
    depth: int


LEVELS = (
    Level(attrs=True, inputs=True, users=True, depth=3),
    Level(attrs=True, inputs=True, users=True, depth=1),
    Level(attrs=True, inputs=True, users=False, depth=1),
    Level(attrs=True, inputs=False, users=True, depth=1),
    Level(attrs=False, inputs=True, users=False, depth=1),  # attributes changed
    Level(attrs=False, inputs=False, users=True, depth=1),  # attributes and inputs changed
)


# ---- signatures -----------------------------------------------------------------------------
def match_by_structure(a: Side, b: Side, m: Matching) -> None:
    """Rounds of unique matches (each adds anchors, then propagates from them); when they stall,
    or after ``MAX_ROUNDS``, one round that also pairs ambiguous signatures in graph order."""
    for _ in range(MAX_ROUNDS):
        if not _round(a, b, m, unique=True):
            break
    while _round(a, b, m, unique=False):
        pass


def _round(a: Side, b: Side, m: Matching, *, unique: bool) -> bool:
    before = len(m.pairs)
    for level in LEVELS:
        new = _match_level(a, b, m, level, unique)
        propagate(a, b, m, new)
    return len(m.pairs) > before


# ---- propagation ------------------------------------------------------------------------------
def propagate(a: Side, b: Side, m: Matching, seeds: list[tuple[int, int]]) -> None:
    absorbed = m.absorbed_a()
    queue = list(seeds)
    while queue:
        i, j = queue.pop()
        for p, q in [*_producer_pairs(a, b, i, j), *_user_pairs(a, b, i, j)]:
            if m.free_a(p, absorbed) and m.free_b(q) and _same_op(a.nodes[p], b.nodes[q]):
                m.add(p, q, "structure")
                queue.append((p, q))


def _same_op(x: Node, y: Node) -> bool:
    return x.qualified_op == y.qualified_op


def _producer_pairs(a: Side, b: Side, i: int, j: int) -> list[tuple[int, int]]:
    pairs = []
    for va, vb in zip(a.nodes[i].inputs, b.nodes[j].inputs, strict=False):
        p, q = a.producer(va), b.producer(vb)
        if p is not None and q is not None and va.index == vb.index:  # type: ignore[union-attr]
            pairs.append((p, q))
    return pairs


def _user_pairs(a: Side, b: Side, i: int, j: int) -> list[tuple[int, int]]:
    """Per output, users keyed by (op, slot) that occur exactly once on both sides."""
    pairs = []
    for va, vb in zip(a.nodes[i].outputs, b.nodes[j].outputs, strict=False):
        users_a, users_b = _users_by_key(a, va), _users_by_key(b, vb)
        pairs += [(users_a[k][0], users_b[k][0]) for k in users_a.keys() & users_b.keys()
                  if len(users_a[k]) == len(users_b[k]) == 1]
    return pairs


def _users_by_key(side: Side, v: Value) -> dict[tuple[str, int], list[int]]:
    users: dict[tuple[str, int], list[int]] = defaultdict(list)
    for node, slot in v.uses:
        k = side.index.get(id(node))
        if k is not None:
            users[(node.qualified_op, slot)].append(k)
    return users


def _match_level(a: Side, b: Side, m: Matching, level: Level, unique: bool) -> list[tuple[int, int]]:
    absorbed = m.absorbed_a()
    free_a = [i for i in range(len(a.nodes)) if m.free_a(i, absorbed)]
    free_b = [j for j in range(len(b.nodes)) if m.free_b(j)]
    if not free_a or not free_b:
        return []
    anchors_a = {i: i for i in m.pairs}
    anchors_b = {j: i for i, j in m.pairs.items()}
    buckets_a = _buckets(signatures(a, free_a, anchors_a, level))
    buckets_b = _buckets(signatures(b, free_b, anchors_b, level))
    new = []
    for sig, ia in buckets_a.items():
        jb = buckets_b.get(sig, [])
        # Unique: one node each side. Otherwise the bucket pairs in graph order.
        if (len(ia) == len(jb) == 1) or (not unique and jb):
            new += list(zip(ia, jb, strict=False))
    for i, j in new:
        m.add(i, j, "structure")
    return new


def _buckets(sig: dict[int, int]) -> dict[int, list[int]]:
    buckets: dict[int, list[int]] = defaultdict(list)
    for i, s in sig.items():
        buckets[s].append(i)
    return buckets


def signatures(side: Side, free: list[int], anchors: dict[int, int], level: Level) -> dict[int, int]:
    """WL refinement over the free nodes; anchored (matched) nodes keep a label shared by both sides."""
    sig = {i: hash(_base_label(side.nodes[i], level.attrs)) for i in free}
    for _ in range(level.depth):
        sig = {i: hash((sig[i], _input_terms(side, i, sig, anchors) if level.inputs else (),
                        _user_terms(side, i, sig, anchors) if level.users else ())) for i in free}
    return sig


def _base_label(node: Node, with_attrs: bool) -> Hashable:
    return (node.qualified_op, len(node.inputs), len(node.outputs), attrs_key(node) if with_attrs else None)


def _neighbour(k: Hashable, sig: dict[int, int], anchors: dict[int, int]) -> Hashable:
    if isinstance(k, int):
        return ("anchor", anchors[k]) if k in anchors else ("free", sig.get(k))
    return k  # a graph output slot: the same on both sides


def _input_terms(side: Side, i: int, sig: dict[int, int], anchors: dict[int, int]) -> tuple[Hashable, ...]:
    return tuple(_input_term(side, v, sig, anchors) for v in side.nodes[i].inputs)


def _input_term(side: Side, v: Value | None, sig: dict[int, int], anchors: dict[int, int]) -> Hashable:
    if v is None:
        return None
    p = side.producer(v)
    if p is not None:
        return (_neighbour(p, sig, anchors), v.index)
    if v.is_constant:
        # Constants count by type only, so a changed payload does not stop the match.
        return ("const", str(v.type))
    return ("input", v.name)


def _user_terms(side: Side, i: int, sig: dict[int, int], anchors: dict[int, int]) -> tuple[Hashable, ...]:
    return tuple(sorted((hash(_neighbour(k, sig, anchors)), slot) for k, slot in side.users[i]))


# ---- small remainders ----------------------------------------------------------------------
def match_small_pieces(a: Side, b: Side, m: Matching) -> None:
    """Pairs of small unmatched pieces share their largest common subgraph (same ops, same edges):
    nodes whose every neighbour changed but which still sit in the same local structure."""
    pieces_b = _pieces(b, {j for j in range(len(b.nodes)) if m.free_b(j)})
    budget = NX_BUDGET
    for piece_a in _pieces(a, set(range(len(a.nodes))) - set(m.pairs) - set(m.absorbed_a())):
        if budget < len(pieces_b):
            log.debug("structural matching stopped: more than %d small pieces to compare", NX_BUDGET)
            return
        budget -= len(pieces_b)
        best = max((_common(piece_a, pb) for pb in pieces_b), key=len, default={})
        for i, j in best.items():
            m.add(i, j, "structure")
        pieces_b = [pb.subgraph(set(pb) - set(best.values())).copy() for pb in pieces_b]


def _pieces(side: Side, free: set[int]) -> list[nx.DiGraph]:
    view = nx.DiGraph()
    for i in free:
        view.add_node(i, op=side.nodes[i].qualified_op)
        for v in side.nodes[i].inputs:
            p = side.producer(v)
            if p in free:
                view.add_edge(p, i)
    # A lone node was already compared with every candidate by the signature levels.
    return [view.subgraph(c).copy() for c in nx.weakly_connected_components(view)
            if 2 <= len(c) <= NX_PIECE_LIMIT]


def _common(ga: nx.DiGraph, gb: nx.DiGraph) -> dict[int, int]:
    """The largest common induced subgraph of two pieces, if it has an edge; else nothing."""
    if len(ga) < 2 or len(gb) < 2 or len(set(_ops(ga)) & set(_ops(gb))) == 0:
        return {}
    ismags = nx.algorithms.isomorphism.ISMAGS(ga, gb, node_match=lambda x, y: x["op"] == y["op"])
    mapping: dict[int, int] = next(iter(ismags.largest_common_subgraph()), {})
    return mapping if ga.subgraph(mapping).number_of_edges() else {}


def _ops(g: nx.DiGraph) -> Iterable[str]:
    return (d["op"] for _, d in g.nodes(data=True))
