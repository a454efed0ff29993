"""The graph: ordered nodes, graph inputs and outputs, and named constants.

Nodes are kept in a topological order. Editing while iterating is safe when iterating over
``list(graph.nodes)`` or ``graph.nodes_snapshot()``; removed nodes have ``node.graph is None``.
Constant payloads (numpy arrays) are treated as immutable: passes make new arrays, never write
into existing ones, so ``clone()`` can share them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from compiler.ir.core import AttrValue, Node, Provenance, Value
from compiler.ir.types import TensorType

if TYPE_CHECKING:
    import networkx as nx


class Graph:
    __slots__ = ("name", "inputs", "outputs", "constants", "nodes", "metadata", "_names", "_counter")

    def __init__(self, name: str = "main") -> None:
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.constants: dict[str, Value] = {}
        self.nodes: list[Node] = []
        self.metadata: dict[str, str] = {}
        self._names: set[str] = set()
        self._counter = itertools.count()

    # ---- naming -------------------------------------------------------------------------------
    def fresh_name(self, hint: str = "") -> str:
        """A value name unused in this graph, derived from ``hint`` when given."""
        base = hint or "v"
        if hint and hint not in self._names:
            self._names.add(hint)
            return hint
        while True:
            name = f"{base}_{next(self._counter)}" if hint else str(next(self._counter))
            if name not in self._names:
                self._names.add(name)
                return name

    def value(self, hint: str = "", type: TensorType | None = None) -> Value:
        return Value(self.fresh_name(hint), type)

    def _claim(self, v: Value) -> None:
        if v.name in self._names:
            v.name = self.fresh_name(v.name)
        else:
            self._names.add(v.name)

    # ---- building -----------------------------------------------------------------------------
    def add_input(self, name: str, type: TensorType) -> Value:
        v = Value(name, type)
        self._claim(v)
        self.inputs.append(v)
        return v

    def add_constant(self, name: str, array: np.ndarray) -> Value:
        v = Value(name, TensorType.of(array))
        self._claim(v)
        v.const = array
        self.constants[v.name] = v
        return v

    def make_node(
        self,
        op: str,
        inputs: Iterable[Value | None],
        attrs: dict[str, AttrValue] | None = None,
        *,
        num_outputs: int = 1,
        types: list[TensorType | None] | None = None,
        domain: str = "",
        name: str = "",
        provenance: Provenance | None = None,
        before: Node | None = None,
        output_names: list[str] | None = None,
    ) -> Node:
        """Create a node with fresh output values and insert it (at the end, or before ``before``)."""
        types = types or [None] * num_outputs
        names = output_names or [""] * num_outputs
        outs = [self.value(n, t) for n, t in zip(names, types, strict=True)]
        node = Node(op, list(inputs), attrs, outs, domain=domain, name=name, provenance=provenance)
        return self.insert(node, before=before)

    def insert(self, node: Node, *, before: Node | None = None) -> Node:
        for v in node.outputs:
            if v.name not in self._names:
                self._names.add(v.name)
        node.graph = self
        if before is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(self.nodes.index(before), node)
        return node

    def remove_node(self, node: Node) -> None:
        """Remove a node whose outputs are unused (replace its uses first)."""
        for v in node.outputs:
            if v.uses or v in self.outputs:
                raise ValueError(f"cannot remove {node!r}: output %{v.name} is still used")
        node.detach_inputs()
        self.nodes.remove(node)
        node.graph = None

    def remove_unused_constants(self) -> int:
        dead = [k for k, v in self.constants.items() if not v.uses and v not in self.outputs]
        for k in dead:
            del self.constants[k]
        return len(dead)

    def replace_value(self, old: Value, new: Value) -> None:
        """Replace every use of ``old`` by ``new``, graph outputs included."""
        old.replace_all_uses_with(new)
        self.outputs = [new if o is old else o for o in self.outputs]

    # ---- queries ------------------------------------------------------------------------------
    def nodes_snapshot(self) -> list[Node]:
        return list(self.nodes)

    def values(self) -> Iterator[Value]:
        yield from self.inputs
        yield from self.constants.values()
        for n in self.nodes:
            yield from n.outputs

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.qualified_op] = counts.get(n.qualified_op, 0) + 1
        return dict(sorted(counts.items()))

    def topological_sort(self) -> None:
        """Reorder nodes so producers come before users (stable for already-sorted graphs)."""
        placed: set[int] = set()
        order: list[Node] = []
        pending = list(self.nodes)
        while pending:
            rest = []
            for n in pending:
                deps = [v.producer for v in n.inputs if v is not None and v.producer is not None]
                if all(id(d) in placed for d in deps):
                    order.append(n)
                    placed.add(id(n))
                else:
                    rest.append(n)
            if len(rest) == len(pending):
                raise ValueError(f"graph has a cycle through {rest[0]!r}")
            pending = rest
        self.nodes = order

    def clone(self) -> Graph:
        """A structural deep copy; constant arrays are shared (they are immutable by convention)."""
        g = Graph(self.name)
        g.metadata = dict(self.metadata)
        vmap: dict[int, Value] = {}

        def copy_value(v: Value) -> Value:
            nv = Value(v.name, v.type)
            nv.const, nv.const_digest = v.const, v.const_digest
            vmap[id(v)] = nv
            g._names.add(nv.name)
            return nv

        g.inputs = [copy_value(v) for v in self.inputs]
        g.constants = {k: copy_value(v) for k, v in self.constants.items()}
        for n in self.nodes:
            ins = [None if v is None else vmap[id(v)] for v in n.inputs]
            outs = [copy_value(v) for v in n.outputs]
            nn = Node(n.op, ins, dict(n.attrs), outs, domain=n.domain, name=n.name,
                      provenance=n.provenance, body=None if n.body is None else n.body.clone())
            nn.graph = g
            g.nodes.append(nn)
        g.outputs = [vmap[id(v)] for v in self.outputs]
        return g

    def to_networkx(self) -> nx.MultiDiGraph:
        from compiler.ir.nxview import to_networkx

        return to_networkx(self)

    def __repr__(self) -> str:
        return f"Graph({self.name}: {len(self.inputs)} inputs, {len(self.nodes)} nodes, {len(self.outputs)} outputs)"
