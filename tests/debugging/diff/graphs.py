"""Graphs for diff tests: a generated large graph and a perturbed copy with known changes."""

from __future__ import annotations

import random
from dataclasses import dataclass

from compiler.ir import DType, Graph, Node, TensorType, Value

T = TensorType(DType.F32, (4,))
UNARY = ("Relu", "Sigmoid", "Tanh", "Neg", "Abs")
BINARY = ("Add", "Mul", "Sub")


def random_graph(n: int, seed: int = 0) -> Graph:
    """``n`` elementwise nodes over one input; each reads recent values, so the graph is deep."""
    rng = random.Random(seed)
    g = Graph("big")
    values: list[Value] = [g.add_input("x", T)]
    for _ in range(n):
        values.append(_random_node(g, rng, values).outputs[0])
    g.outputs = [values[-1]]
    return g


def _random_node(g: Graph, rng: random.Random, values: list[Value]) -> Node:
    pick = lambda: values[max(0, len(values) - 1 - int(rng.expovariate(0.3)))]  # noqa: E731
    kind = rng.random()
    if kind < 0.15:
        return g.make_node("LeakyRelu", [pick()], {"alpha": round(rng.random(), 2)}, types=[T])
    if kind < 0.55:
        return g.make_node(rng.choice(UNARY), [pick()], types=[T])
    return g.make_node(rng.choice(BINARY), [pick(), pick()], types=[T])


@dataclass
class Perturbed:
    graph: Graph
    removed: list[int]  # indices in the original
    added: int
    attr_changed: list[int]  # indices in the original


def perturb(g: Graph, count: int, seed: int = 1) -> Perturbed:
    """Remove ``count`` unary nodes (bypassed), insert ``count`` Neg nodes, change ``count`` alphas."""
    rng = random.Random(seed)
    h = g.clone()
    index = {id(n): i for i, n in enumerate(h.nodes)}
    leaky = [n for n in h.nodes if n.op == "LeakyRelu"]
    changed = rng.sample(leaky, count)
    for n in changed:
        n.attrs["alpha"] = n.attrs["alpha"] + 10.0
    unary = [n for n in h.nodes if n.op in UNARY and n.outputs[0] not in h.outputs]
    gone = rng.sample(unary, count)
    for n in gone:
        h.replace_value(n.outputs[0], n.inputs[0])  # type: ignore[arg-type]
        h.remove_node(n)
    for n in rng.sample([n for n in h.nodes if n not in changed], count):
        v = n.outputs[0]
        new = h.make_node("Exp", [v], types=[T], before=h.nodes[h.nodes.index(n) + 1])
        for user, slot in list(v.uses):
            if user is not new:
                user.set_input(slot, new.outputs[0])
        h.outputs = [new.outputs[0] if o is v else o for o in h.outputs]
    return Perturbed(h, sorted(index[id(n)] for n in gone), count, sorted(index[id(n)] for n in changed))
