"""The rule framework: a toy RuleSet run through the shared harness, near-miss notes, provenance."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.errors import EffarchError
from compiler.ir import Node
from compiler.ir.parser import parse_graph
from compiler.pass_manager import PassContext
from compiler.pass_manager.rules import (
    Match,
    MatchResult,
    Rewriter,
    Rule,
    RuleSet,
    forward,
    is_fill,
    producer,
    users_reason,
)


def _relu_relu(node: Node) -> MatchResult:
    inner = producer(node.inputs[0], "Relu")
    return forward(node, node.inputs[0]) if inner is not None else None


def _neg_neg(node: Node) -> MatchResult:
    inner = producer(node.inputs[0], "Neg")
    if inner is None:
        return None
    reason = users_reason(inner.outputs[0], node.graph, "inner Neg")
    return reason or Match(node, absorbed=(inner,), forward=inner.inputs[0])


def _mul_two(node: Node) -> MatchResult:
    if not is_fill(node.inputs[1], 2.0):
        return "multiplier is not the constant 2"
    return Match(node, bind={"x": node.inputs[0]})


def _add_self(rw: Rewriter, m: Match) -> None:
    x = m.bind["x"]
    rw.replace(m.anchor.outputs[0], rw.node("Add", [x, x], types=[m.anchor.outputs[0].type]).outputs[0])


class Toy(RuleSet):
    name = "toy-rules"
    description = "rules for testing the framework"
    rules = (
        Rule("relu-relu", "Relu(Relu(x)) -> Relu(x)", ("Relu",), _relu_relu),
        Rule("neg-neg", "Neg(Neg(x)) -> x", ("Neg",), _neg_neg),
        Rule("mul-two", "Mul(x, 2) -> Add(x, x)", ("Mul",), _mul_two, _add_self),
    )


CHAIN = """
graph main(%x: f32[2,3]) -> (%y) {
  %two = const f32[] [2.0]
  %a = Relu(%x) : f32[2,3]  # torch:act1
  %b = Relu(%a) : f32[2,3]  # torch:act2
  %c = Relu(%b) : f32[2,3]  # torch:act3
  %y = Mul(%c, %two) : f32[2,3]  # torch:scale
}
"""


def test_rules_rewrite_to_a_fixed_point_with_provenance_and_fired_notes() -> None:
    from tests.passes.harness import check_pass

    result = check_pass(Toy(), parse_graph(CHAIN), expect="""
        graph main(%x: f32[2,3]) -> (%y) {
          %two = const f32[] [2.0]
          %a = Relu(%x) : f32[2,3]  # torch:act1
          %y = Add(%a, %a) : f32[2,3]  # torch:scale <toy-rules:mul-two>
        }
    """)
    # Nodes are named by their source, so notes point at the PyTorch modules.
    fired = [(n.rule, n.node) for n in result.notes if n.fired]
    assert fired == [("relu-relu", "torch:act2"), ("relu-relu", "torch:act3"), ("mul-two", "torch:scale")]
    assert all(n.reason.startswith(("Relu(Relu(x))", "Mul(x, 2)")) for n in result.notes if n.fired)


def test_near_miss_is_a_note_with_the_reason() -> None:
    from tests.passes.harness import check_not_fired

    g = parse_graph(CHAIN.replace("[2.0]", "[3.0]").replace("%b = Relu(%a)", "%b = Neg(%a)")
                    .replace("%c = Relu(%b)", "%c = Sigmoid(%b)"))
    result = check_not_fired(Toy(), g, "multiplier is not the constant 2")
    assert [(n.rule, n.node) for n in result.notes] == [("mul-two", "torch:scale")]


def test_absorbed_node_with_another_user_is_a_near_miss() -> None:
    from tests.passes.harness import check_not_fired

    g = parse_graph("""
        graph main(%x: f32[4]) -> (%y, %n) {
          %n = Neg(%x) : f32[4]
          %y = Neg(%n) : f32[4]
        }
    """)
    check_not_fired(Toy(), g, "inner Neg output %n is a graph output")


def test_merged_provenance_and_graph_output_keeps_its_name() -> None:
    from tests.passes.harness import check_pass

    g = parse_graph("""
        graph main(%x: f32[4]) -> (%y) {
          %e = Exp(%x) : f32[4]  # torch:exp
          %n = Neg(%e) : f32[4]  # torch:n1
          %y = Neg(%n) : f32[4]  # torch:n2
        }
    """)
    result = check_pass(Toy(), g, expect="""
        graph main(%x: f32[4]) -> (%y) {
          %y = Exp(%x) : f32[4]  # torch:exp
        }
    """)
    assert [v.name for v in result.graph.outputs] == ["y"]


def test_forward_to_a_graph_input_output_is_refused_with_a_reason() -> None:
    from tests.passes.harness import check_not_fired

    g = parse_graph("""
        graph main(%x: f32[4]) -> (%y) {
          %r = Relu(%x) : f32[4]
          %y = Relu(%r) : f32[4]
        }
    """)
    # Relu(Relu(x)) forwards %r, a node output: allowed, %r takes the name %y.
    result = Toy().run(g.clone(), PassContext())
    assert result.modified and [n.op for n in result.graph.nodes] == ["Relu"]
    assert result.graph.outputs[0].name == "y"
    h = parse_graph("""
        graph main(%x: f32[4]) -> (%y) {
          %n = Neg(%x) : f32[4]
          %y = Neg(%n) : f32[4]
        }
    """)
    check_not_fired(Toy(), h, "%y is a graph output and %x cannot take its name")


def test_forward_with_a_different_type_is_refused() -> None:
    from tests.passes.harness import check_not_fired

    g = parse_graph("""
        graph main(%x: f32[4]) -> (%y) {
          %n = Neg(%x) : f32[4]
          %m = Neg(%n) : f32[?]
          %y = Exp(%m) : f32[4]
        }
    """)
    check_not_fired(Toy(), g, "%x is f32[4] but %m is f32[?]")


def test_rules_option_restricts_the_pass_and_unknown_rules_are_errors() -> None:
    g = parse_graph(CHAIN)
    result = Toy(rules=("mul-two",)).run(g, PassContext())
    assert {n.rule for n in result.notes if n.fired} == {"mul-two"}
    assert [n.op for n in result.graph.nodes].count("Relu") == 3
    with pytest.raises(EffarchError, match="has no rule 'relu-rellu'.*relu-relu"):
        Toy(rules=("relu-rellu",))


def test_new_constants_are_read_only() -> None:
    g = parse_graph(CHAIN)
    node = g.nodes[-1]
    rw = Rewriter(g, "toy-rules", Toy.rules[2], Match(node))
    c = rw.constant("k", np.ones(3, np.float32))
    assert c.const is not None and not c.const.flags.writeable
