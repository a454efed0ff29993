"""eliminate-common-subexpressions through the shared harness."""

from __future__ import annotations

from compiler.ir.parser import parse_graph
from compiler.pass_manager import PassContext
from passes.cse import EliminateCommonSubexpressions as CSE
from tests.passes.harness import check_not_fired, check_pass


def test_identical_nodes_and_equal_constants_merge() -> None:
    g = parse_graph("""
        graph main(%x: f32[2,3]) -> (%y) {
          %w1 = const f32[3] [1.0, 2.0, 3.0]
          %w2 = const f32[3] [1.0, 2.0, 3.0]
          %a = Mul(%x, %w1) : f32[2,3]  # torch:a
          %b = Mul(%w2, %x) : f32[2,3]  # torch:b
          %ea = Exp(%a) : f32[2,3]
          %eb = Exp(%b) : f32[2,3]
          %y = Sub(%ea, %eb) : f32[2,3]
        }
    """)
    result = check_pass(CSE(), g, expect="""
        graph main(%x: f32[2,3]) -> (%y) {
          %w1 = const f32[3] [1.0, 2.0, 3.0]
          %w2 = const f32[3] [1.0, 2.0, 3.0]
          %a = Mul(%x, %w1) : f32[2,3]  #= ["torch:a", ["eliminate-common-subexpressions:same-node"], ["torch:b"]]
          %ea = Exp(%a) : f32[2,3]  #= ["", ["eliminate-common-subexpressions:same-node"], []]
          %y = Sub(%ea, %ea) : f32[2,3]
        }
    """)
    assert [n.rule for n in result.notes if n.fired] == ["same-constant", "same-node", "same-node"]


def test_different_attributes_or_order_sensitive_inputs_do_not_merge() -> None:
    g = parse_graph("""
        graph main(%x: f32[2,3], %z: f32[2,3]) -> (%y) {
          %a = Sub(%x, %z) : f32[2,3]
          %b = Sub(%z, %x) : f32[2,3]
          %c = Softmax(%x) {axis=0} : f32[2,3]
          %d = Softmax(%x) {axis=1} : f32[2,3]
          %e = Add(%a, %b) : f32[2,3]
          %f = Add(%c, %d) : f32[2,3]
          %y = Add(%e, %f) : f32[2,3]
        }
    """)
    result = CSE().run(g.clone(), PassContext())
    assert not result.modified and result.notes == []


def test_duplicate_graph_outputs_keep_their_names() -> None:
    g = parse_graph("""
        graph main(%x: f32[2]) -> (%y, %z) {
          %r = Relu(%x) : f32[2]
          %y = Exp(%r) : f32[2]
          %r2 = Relu(%x) : f32[2]
          %z = Exp(%r2) : f32[2]
        }
    """)
    result = check_pass(CSE(), g, expect=lambda h: [n.op for n in h.nodes] == ["Relu", "Exp", "Exp"])
    skipped = [n.reason for n in result.notes if not n.fired]
    assert any("%z is a graph output and %y cannot take its name" in r for r in skipped)


def test_a_duplicate_feeding_only_a_graph_output_merges_and_the_output_keeps_its_name() -> None:
    g = parse_graph("""
        graph main(%x: f32[2]) -> (%y, %z) {
          %r = Relu(%x) : f32[2]
          %y = Exp(%r) : f32[2]
          %z = Relu(%x) : f32[2]
        }
    """)
    check_pass(CSE(), g, expect="""
        graph main(%x: f32[2]) -> (%y, %z) {
          %z = Relu(%x) : f32[2]  #= ["", ["eliminate-common-subexpressions:same-node"], []]
          %y = Exp(%z) : f32[2]
        }
    """)


def test_random_ops_never_merge() -> None:
    g = parse_graph("""
        graph main(%x: f32[2]) -> (%y) {
          %a = RandomNormalLike(%x) : f32[2]
          %b = RandomNormalLike(%x) : f32[2]
          %y = Sub(%a, %b) : f32[2]
        }
    """)
    result = CSE().run(g, PassContext())
    assert not result.modified


def test_two_equal_graph_outputs_do_not_merge_and_say_why() -> None:
    g = parse_graph("""
        graph main(%x: f32[2]) -> (%y, %z) {
          %y = Relu(%x) : f32[2]
          %z = Relu(%x) : f32[2]
        }
    """)
    check_not_fired(CSE(), g, "same as %y, but %z is a graph output and %y cannot take its name")
