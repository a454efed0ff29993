"""The networkx view: node kinds and attributes, edges per input, graph algorithms on it."""

from __future__ import annotations

import networkx as nx

from compiler.ir.parser import parse_graph

TEXT = """\
graph g(%x: f32[2], %unused: f32[2]) -> (%out, %x) {
  %c = const f32[2] [1.0, 2.0]
  %a = Relu(%x) : f32[2]  # layers.0
  %b = Add(%a, %a) {alpha=1} : f32[2]  # layers.1
  %dead = Neg(%unused) : f32[2]
  %out = com.effarch::Fused(%b, _, %c) : f32[2] name="fused_3"  # layers.2 <fuse:rule>
}
"""


def test_nodes_and_edges_mirror_the_graph() -> None:
    g = parse_graph(TEXT)
    view = g.to_networkx()
    assert view.nodes[1] == {"kind": "node", "op": "Add", "domain": "", "name": "layers.1",
                             "provenance": "layers.1", "attrs": {"alpha": 1}, "ir": g.nodes[1]}
    assert view.nodes[3]["provenance"] == "layers.2 <fuse:rule>" and view.nodes[3]["name"] == "fused_3"
    assert view.nodes[("input", "x")]["kind"] == "input"
    assert view.nodes[("const", "c")]["kind"] == "constant"
    assert view.nodes[("output", 1)] == {"kind": "output", "name": "x", "type": g.inputs[0].type}
    assert [(v, d["index"]) for _, v, d in view.out_edges(1, data=True)] == [(3, 0)]
    assert sorted((d["value"], d["index"]) for _, _, d in view.in_edges(1, data=True)) == [("a", 0), ("a", 1)]
    assert sorted(d["index"] for _, _, d in view.in_edges(3, data=True)) == [0, 2]  # input 1 omitted
    assert view.has_edge(("input", "x"), ("output", 1))
    edges = sum(len([v for v in n.inputs if v is not None]) for n in g.nodes) + len(g.outputs)
    assert view.number_of_edges() == edges and view.number_of_nodes() == len(g.nodes) + 2 + 1 + 2


def test_graph_algorithms_on_the_view() -> None:
    g = parse_graph(TEXT)
    view = g.to_networkx()
    assert nx.is_directed_acyclic_graph(view)
    assert nx.ancestors(view, ("output", 0)) == {0, 1, 3, ("input", "x"), ("const", "c")}
    live = set().union(*(nx.ancestors(view, ("output", k)) for k in range(len(g.outputs))))
    assert [i for i, _ in enumerate(g.nodes) if i not in live] == [2]  # only %dead is dead
    assert all(u < v for u, v in view.edges() if isinstance(u, int) and isinstance(v, int))
    assert list(nx.lexicographical_topological_sort(view.subgraph(range(len(g.nodes))))) == [0, 1, 2, 3]
