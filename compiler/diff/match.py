"""Matching the nodes of graph A to the nodes of graph B: provenance first, then structure.

1. Provenance: nodes with the same ``provenance.source`` are the same node (within a source, the
   same op pairs first, in graph order). A B node whose ``provenance.merged`` names sources it did
   not already carry in A absorbed the A nodes with those sources: a fusion.
2. Structure: Weisfeiler-Lehman-style signatures over the unmatched nodes, where a matched
   neighbour counts as a fixed anchor shared by both sides, so signatures agree exactly where the
   neighbourhoods do. Levels go from strict (op, attributes, inputs and users, three hops) to loose
   (op and one side of the neighbourhood); equal signatures pair in graph order. Each round of
   matches adds anchors, so rounds repeat until none matches more.
3. What is left, in small weakly connected pieces, goes to networkx's ISMAGS: the largest common
   subgraph of two pieces pairs nodes whose every neighbour changed. It is exponential in the
   worst case, hence only on pieces of at most ``NX_PIECE_LIMIT`` nodes.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from compiler.ir import Graph, Node, Value
from compiler.ir.printer import value_digest

log = logging.getLogger(__name__)

NX_PIECE_LIMIT = 12
NX_BUDGET = 2000  # piece comparisons at most, so many small leftovers cannot take minutes
MAX_ROUNDS = 200


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


@dataclass
class Matching:
    """Node matches (A index -> B index), how each was found, and fusions (B index -> A indices)."""

    pairs: dict[int, int] = field(default_factory=dict)
    how: dict[int, str] = field(default_factory=dict)
    absorbed: dict[int, list[int]] = field(default_factory=dict)

    def add(self, i: int, j: int, how: str) -> None:
        self.pairs[i] = j
        self.how[i] = how

    def absorbed_a(self) -> dict[int, int]:
        """A index of every absorbed node -> the B index of the node it was fused into."""
        return {i: j for j, sources in self.absorbed.items() for i in sources}


def attr_key(value: object) -> Hashable:
    """A hashable stand-in for an attribute value (arrays by dtype, shape and bytes)."""
    if isinstance(value, np.ndarray):
        return ("tensor", str(value.dtype), value.shape, value.tobytes())
    if isinstance(value, (list, tuple)):
        return tuple(attr_key(x) for x in value)
    return value  # type: ignore[return-value]  # str, int, float are hashable


def attrs_key(node: Node) -> Hashable:
    return tuple(sorted((k, attr_key(v)) for k, v in node.attrs.items()))


class Side:
    """One graph with its nodes indexed, producers and users precomputed."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.nodes = graph.nodes
        index = {id(n): i for i, n in enumerate(self.nodes)}
        self.index = index
        self.users: list[list[tuple[Hashable, int]]] = [[] for _ in self.nodes]
        for i, n in enumerate(self.nodes):
            for v in n.outputs:
                self.users[i] += [(index[id(u)], slot) for u, slot in v.uses if id(u) in index]
        for k, v in enumerate(graph.outputs):
            if v.producer is not None and id(v.producer) in index:
                self.users[index[id(v.producer)]].append((("output", k), 0))

    def producer(self, v: Value | None) -> int | None:
        return None if v is None or v.producer is None else self.index.get(id(v.producer))

    def by_source(self) -> dict[str, list[int]]:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, n in enumerate(self.nodes):
            if n.provenance.source:
                groups[n.provenance.source].append(i)
        return groups


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


# ---- 2. structure -----------------------------------------------------------------------------
def match_by_structure(a: Side, b: Side, m: Matching) -> None:
    """Rounds of unique matches (each adds anchors); when they stall, one round that also pairs
    ambiguous signatures in graph order, and then unique rounds again."""
    for _ in range(MAX_ROUNDS):
        if _round(a, b, m, unique=True):
            continue
        if not _round(a, b, m, unique=False):
            return


def _round(a: Side, b: Side, m: Matching, *, unique: bool) -> bool:
    before = len(m.pairs)
    for level in LEVELS:
        _match_level(a, b, m, level, unique)
    return len(m.pairs) > before


def _match_level(a: Side, b: Side, m: Matching, level: Level, unique: bool) -> None:
    taken_a = set(m.pairs) | set(m.absorbed_a())
    taken_b = set(m.pairs.values()) | set(m.absorbed)
    anchors_a = {i: i for i in m.pairs}
    anchors_b = {j: i for i, j in m.pairs.items()}
    free_a = [i for i in range(len(a.nodes)) if i not in taken_a]
    free_b = [j for j in range(len(b.nodes)) if j not in taken_b]
    if not free_a or not free_b:
        return
    buckets_a = _buckets(signatures(a, free_a, anchors_a, level))
    buckets_b = _buckets(signatures(b, free_b, anchors_b, level))
    for sig, ia in buckets_a.items():
        jb = buckets_b.get(sig, [])
        # Unique: one node each side. Otherwise equal-size buckets pair in graph order.
        if (len(ia) == len(jb) == 1) or (not unique and jb):
            for i, j in zip(ia, jb, strict=False):
                m.add(i, j, "structure")


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


# ---- 3. small remainders ----------------------------------------------------------------------
def match_small_pieces(a: Side, b: Side, m: Matching) -> None:
    """Pairs of small unmatched pieces share their largest common subgraph (same ops, same edges):
    nodes whose every neighbour changed but which still sit in the same local structure."""
    pieces_b = _pieces(b, set(range(len(b.nodes))) - set(m.pairs.values()) - set(m.absorbed))
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


def match_nodes(a: Side, b: Side) -> Matching:
    m = Matching()
    match_by_provenance(a, b, m)
    log.debug("provenance matched %d of %d nodes", len(m.pairs), len(a.nodes))
    match_by_structure(a, b, m)
    match_small_pieces(a, b, m)
    log.debug("matched %d nodes, %d fusions", len(m.pairs), len(m.absorbed))
    return m


def same_payload(va: Value, vb: Value) -> bool:
    return str(va.type) == str(vb.type) and value_digest(va) == value_digest(vb)
