"""A networkx view of a graph, for graph algorithms (ancestors, dominators, cycles, drawing).

Keys: an IR node is its index in ``graph.nodes``; graph inputs, constants and graph outputs are
``("input", name)``, ``("const", name)`` and ``("output", position)``. Every networkx node has a
``kind`` ("node", "input", "constant", "output"); IR nodes also carry ``op``, ``domain``,
``name``, ``provenance`` (its text), ``attrs`` and ``ir`` (the ``Node`` itself). One edge per
node input, producer -> user, with ``value`` (the value's name) and ``index`` (the input
position; for an output edge, the output position). The view is a snapshot: later edits to the
graph do not show in it.
"""

from __future__ import annotations

from collections.abc import Hashable

import networkx as nx

from compiler.ir.core import Value
from compiler.ir.graph import Graph


def to_networkx(g: Graph) -> nx.MultiDiGraph:
    view = nx.MultiDiGraph(name=g.name)
    source: dict[int, Hashable] = {}
    for v in g.inputs:
        source[id(v)] = _add_source(view, ("input", v.name), "input", v)
    for v in g.constants.values():
        source[id(v)] = _add_source(view, ("const", v.name), "constant", v)
    for i, n in enumerate(g.nodes):
        view.add_node(i, kind="node", op=n.op, domain=n.domain, name=n.name,
                      provenance=str(n.provenance), attrs=dict(n.attrs), ir=n)
        source.update((id(v), i) for v in n.outputs)
    for i, n in enumerate(g.nodes):
        for j, inp in enumerate(n.inputs):
            _add_edge(view, source, inp, i, j)
    for k, out in enumerate(g.outputs):
        view.add_node(("output", k), kind="output", name=out.name, type=out.type)
        _add_edge(view, source, out, ("output", k), k)
    return view


def _add_source(view: nx.MultiDiGraph, key: Hashable, kind: str, v: Value) -> Hashable:
    view.add_node(key, kind=kind, name=v.name, type=v.type)
    return key


def _add_edge(view: nx.MultiDiGraph, source: dict[int, Hashable], v: Value | None,
              user: Hashable, index: int) -> None:
    # Omitted inputs and values from outside the graph have no producer here (the verifier
    # reports the latter); they get no edge.
    if v is not None and id(v) in source:
        view.add_edge(source[id(v)], user, value=v.name, index=index)
