"""eliminate-dead-code through the shared harness."""

from __future__ import annotations

from compiler.ir.parser import parse_graph
from passes.dead_code import EliminateDeadCode
from tests.passes.harness import check_not_fired, check_pass


def test_dead_branches_and_their_constants_are_removed() -> None:
    g = parse_graph("""
        graph main(%x: f32[2,4]) -> (%y) {
          %w = const f32[4,3] [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 1.0, 2.0, 3.0]
          %b = const f32[4] [1.0, 2.0, 3.0, 4.0]
          %unused = const f32[1] [0.0]
          %y = Add(%x, %b) : f32[2,4]
          %t = MatMul(%x, %w) : f32[2,3]
          %u = Relu(%t) : f32[2,3]
          %s0, %s1 = Split(%x) {axis=1, num_outputs=2} : f32[2,2], f32[2,2]
        }
    """)
    result = check_pass(EliminateDeadCode(), g, expect="""
        graph main(%x: f32[2,4]) -> (%y) {
          %b = const f32[4] [1.0, 2.0, 3.0, 4.0]
          %y = Add(%x, %b) : f32[2,4]
        }
    """)
    removed = sorted(n.reason for n in result.notes if n.fired and n.rule == "unused-constant")
    assert removed == ["removed unused constant %unused", "removed unused constant %w"]


def test_a_node_with_one_live_output_stays_whole() -> None:
    g = parse_graph("""
        graph main(%x: f32[2,4]) -> (%a) {
          %a, %b = Split(%x) {axis=1, num_outputs=2} : f32[2,2], f32[2,2]
          %c = Neg(%b) : f32[2,2]
        }
    """)
    check_pass(EliminateDeadCode(), g, expect=lambda out: [n.op for n in out.nodes] == ["Split"])


def test_unused_graph_inputs_are_kept_and_the_note_says_why() -> None:
    g = parse_graph("""
        graph main(%x: f32[2], %mask: f32[2]) -> (%y) {
          %y = Relu(%x) : f32[2]
        }
    """)
    check_not_fired(EliminateDeadCode(), g, "model's interface")
