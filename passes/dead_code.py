"""eliminate-dead-code: remove nodes none of whose outputs reach a graph output, and unused constants.

Graph inputs stay even when unused: they are the model's interface.
"""

from __future__ import annotations

from compiler.ir import Graph, Node
from compiler.pass_manager import Note, Pass, PassContext, PassResult, register_pass


@register_pass
class EliminateDeadCode(Pass):
    name = "eliminate-dead-code"
    description = "remove nodes whose outputs never reach a graph output, and unused constants"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        live = live_nodes(graph)
        notes: list[Note] = []
        # Reverse order removes users before producers, so every removed node's outputs are unused.
        for node in reversed(graph.nodes_snapshot()):
            if id(node) not in live:
                notes.append(Note.at(node, "dead-node", "no output reaches a graph output", fired=True))
                graph.remove_node(node)
        unused = sorted(k for k, v in graph.constants.items() if not v.uses and v not in graph.outputs)
        graph.remove_unused_constants()
        notes += [Note("unused-constant", f"removed unused constant %{k}", fired=True) for k in unused]
        kept = [Note("unused-input", f"graph input %{v.name} is unused; kept: inputs are the model's "
                     "interface") for v in graph.inputs if not v.uses and v not in graph.outputs]
        return PassResult(graph, bool(notes), notes + kept)


def live_nodes(graph: Graph) -> set[int]:
    """ids of the nodes some graph output depends on."""
    live: set[int] = set()
    stack: list[Node] = [v.producer for v in graph.outputs if v.producer is not None]
    while stack:
        node = stack.pop()
        if id(node) in live:
            continue
        live.add(id(node))
        stack += [v.producer for v in node.inputs if v is not None and v.producer is not None]
    return live
