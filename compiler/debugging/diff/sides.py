"""The two sides of a diff (graphs with their nodes indexed) and the matching being built."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np

from compiler.ir import Graph, Node, Value


@dataclass
class Matching:
    """Node matches (A index -> B index), how each was found, and fusions (B index -> A indices)."""

    pairs: dict[int, int] = field(default_factory=dict)
    how: dict[int, str] = field(default_factory=dict)
    absorbed: dict[int, list[int]] = field(default_factory=dict)
    taken_b: set[int] = field(default_factory=set)  # B indices matched (pairs' values) or fused into

    def add(self, i: int, j: int, how: str) -> None:
        self.pairs[i] = j
        self.how[i] = how
        self.taken_b.add(j)

    def free_a(self, i: int, absorbed: dict[int, int]) -> bool:
        return i not in self.pairs and i not in absorbed

    def free_b(self, j: int) -> bool:
        return j not in self.taken_b

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
