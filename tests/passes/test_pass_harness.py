"""The harness must catch broken passes: wrong numbers, dishonest ``modified``, non-idempotence."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.ir import Graph
from compiler.ir.parser import parse_graph
from compiler.pass_manager import Pass, PassContext, PassResult
from tests.passes.harness import check_not_fired, check_pass

RELU = """
graph main(%x: f32[2,3]) -> (%y) {
  %y = Relu(%x) : f32[2,3]
}
"""


class ReluToAbs(Pass):
    """Wrong on purpose: Relu(x) -> Abs(x) differs for negative x."""

    name = "relu-to-abs"
    description = "a broken rewrite"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        changed = False
        for n in graph.nodes:
            if n.op == "Relu":
                n.op, changed = "Abs", True
        return PassResult(graph, changed)


class SilentRewrite(ReluToAbs):
    """A correct rewrite, Relu(x) -> Max(x, 0), that claims modified=False."""

    name = "silent-rewrite"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        zero = graph.add_constant("zero", np.zeros((), np.float32))
        for n in graph.nodes_snapshot():
            if n.op == "Relu":
                out = n.outputs[0]
                new = graph.make_node("Max", [n.inputs[0], zero], types=[out.type], before=n)
                graph.replace_value(out, new.outputs[0])
                graph.remove_node(n)
        return PassResult(graph, False)


class ClaimsChange(ReluToAbs):
    name = "claims-change"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        return PassResult(graph, True)


class AddsIdentityEveryRun(ReluToAbs):
    """Correct numbers, honest, but never reaches a fixed point."""

    name = "adds-identity"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        out = graph.outputs[0]
        ident = graph.make_node("Identity", [out], types=[out.type])
        graph.outputs = [ident.outputs[0]]
        return PassResult(graph, True)


class WritesIntoWeights(ReluToAbs):
    name = "writes-into-weights"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        for v in graph.constants.values():
            if v.const is not None and v.const.flags.writeable:
                # The input graph shares this array, so its numbers move too: only the payload check sees it.
                v.const += 1
        return PassResult(graph, False)


def test_wrong_numbers_are_caught() -> None:
    with pytest.raises(AssertionError, match="differs after the pass"):
        check_pass(ReluToAbs(), parse_graph(RELU))


def test_changing_the_graph_while_reporting_unmodified_is_caught() -> None:
    with pytest.raises(AssertionError, match="reported modified=False"):
        check_pass(SilentRewrite(), parse_graph(RELU))


def test_reporting_a_change_that_did_not_happen_is_caught() -> None:
    with pytest.raises(AssertionError, match="reported modified=True but changed nothing"):
        check_pass(ClaimsChange(), parse_graph(RELU))


def test_a_pass_that_never_reaches_a_fixed_point_is_caught() -> None:
    with pytest.raises(AssertionError, match="second run"):
        check_pass(AddsIdentityEveryRun(), parse_graph(RELU))


def test_writing_into_a_constant_payload_is_caught() -> None:
    g = parse_graph("""
        graph main(%x: f32[2]) -> (%y) {
          %b = const f32[2] [1.0, 2.0]
          %y = Add(%x, %b) : f32[2]
        }
    """)
    g.constants["b"].const = np.array([1.0, 2.0], np.float32)  # writable, shared with the clone
    with pytest.raises(AssertionError, match="wrote into an input constant"):
        check_pass(WritesIntoWeights(), g)


def test_wrong_expected_text_shows_a_diff() -> None:
    with pytest.raises(AssertionError, match=r"(?s)expected.*\+  %y = Abs"):
        check_pass(ReluToAbs(), parse_graph(RELU), expect=RELU, inputs={"x": np.ones((2, 3), np.float32)})


def test_check_not_fired_rejects_a_pass_that_fired() -> None:
    with pytest.raises(AssertionError, match="fired"):
        check_not_fired(ReluToAbs(), parse_graph(RELU), "anything")
