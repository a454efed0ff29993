"""simplify through the shared harness: each rule fires on its law and refuses its near-misses."""

from __future__ import annotations

import pytest

from compiler.ir import Graph
from compiler.ir.parser import parse_graph
from compiler.pass_manager import PassContext
from passes.simplify import Simplify
from tests.passes.harness import check_not_fired, check_pass


def _fires(body: str, rule: str, *, inputs: str = "%x: f32[2,3]", out: str = "%y") -> list[str]:
    """Run simplify on a graph ending in ``%r`` and check %r was forwarded; returns the fired rules."""
    g = parse_graph(f"graph main({inputs}) -> ({out}) {{\n{body}\n  %y = Exp(%r) : f32[2,3]\n}}\n")
    result = check_pass(Simplify(), g, expect=_exp_of_x)
    fired = [n.rule for n in result.notes if n.fired]
    assert rule in fired, f"{rule} did not fire: {[str(n) for n in result.notes]}"
    return fired


def _exp_of_x(g: Graph) -> bool:
    exp = [n for n in g.nodes if n.op == "Exp"]
    return len(exp) == 1 and exp[0].inputs[0] is g.inputs[0]


CASES = {
    "identity": "  %r = Identity(%x) : f32[2,3]",
    "dropout": "  %ratio = const f32[] [0.5]\n  %r = Dropout(%x, %ratio) : f32[2,3]",
    "mul-one": "  %one = const f32[3] [1.0, 1.0, 1.0]\n  %r = Mul(%one, %x) : f32[2,3]",
    "add-zero": "  %z = const f32[] [0.0]\n  %r = Add(%x, %z) : f32[2,3]",
    "sub-zero": "  %z = const f32[1,3] [0.0, 0.0, 0.0]\n  %r = Sub(%x, %z) : f32[2,3]",
    "div-one": "  %one = const f32[] [1.0]\n  %r = Div(%x, %one) : f32[2,3]",
    "reshape-same": "  %s = const i64[2] [0, -1]\n  %r = Reshape(%x, %s) : f32[2,3]",
    "transpose-identity": "  %r = Transpose(%x) {perm=[0, 1]} : f32[2,3]",
    "transpose-inverse": "  %t = Transpose(%x) : f32[3,2]\n  %r = Transpose(%t) {perm=[1, 0]} : f32[2,3]",
    "cast-same": "  %r = Cast(%x) {to=1} : f32[2,3]",
    "cast-roundtrip": "  %d = Cast(%x) {to=11} : f64[2,3]\n  %r = Cast(%d) {to=1} : f32[2,3]",
    "expand-same": "  %s = const i64[2] [1, 3]\n  %r = Expand(%x, %s) : f32[2,3]",
}


@pytest.mark.parametrize("op", ["Relu", "Abs", "Floor", "Ceil", "Round"])
def test_an_idempotent_op_applied_twice_is_applied_once(op: str) -> None:
    g = parse_graph(f"""
        graph main(%x: f32[2,3]) -> (%y) {{
          %a = {op}(%x) : f32[2,3]
          %b = {op}(%a) : f32[2,3]
          %y = Exp(%b) : f32[2,3]
        }}
    """)
    check_pass(Simplify(), g, expect=f"""
        graph main(%x: f32[2,3]) -> (%y) {{
          %a = {op}(%x) : f32[2,3]
          %y = Exp(%a) : f32[2,3]
        }}
    """)


def test_two_different_ops_in_a_row_are_no_candidate() -> None:
    g = parse_graph("""
        graph main(%x: f32[2,3]) -> (%y) {
          %a = Abs(%x) : f32[2,3]
          %y = Relu(%a) : f32[2,3]
        }
    """)
    assert Simplify().run(g, PassContext()).notes == []


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule_removes_its_no_op(rule: str) -> None:
    _fires(CASES[rule], rule)


def test_reshape_to_its_own_shape_of() -> None:
    _fires("  %s = Shape(%x) : i64[2]\n  %r = Reshape(%x, %s) : f32[2,3]", "reshape-same")


def test_two_transposes_compose_into_one() -> None:
    g = parse_graph("""
        graph main(%x: f32[2,3,4,5]) -> (%y) {
          %a = Transpose(%x) {perm=[0, 2, 1, 3]} : f32[2,4,3,5]
          %b = Transpose(%a) {perm=[0, 1, 3, 2]} : f32[2,4,5,3]
          %y = Exp(%b) : f32[2,4,5,3]
        }
    """)
    check_pass(Simplify(), g, expect="""
        graph main(%x: f32[2,3,4,5]) -> (%y) {
          %b = Transpose(%x) {perm=[0, 2, 3, 1]} : f32[2,4,5,3]  #= ["", ["simplify:transpose-compose"], []]
          %y = Exp(%b) : f32[2,4,5,3]
        }
    """)


def test_exact_cast_chain_becomes_one_cast() -> None:
    g = parse_graph("""
        graph main(%x: i8[2,3]) -> (%y) {
          %a = Cast(%x) {to=6} : i32[2,3]
          %b = Cast(%a) {to=1} : f32[2,3]
          %y = Exp(%b) : f32[2,3]
        }
    """)
    check_pass(Simplify(), g, expect="""
        graph main(%x: i8[2,3]) -> (%y) {
          %b = Cast(%x) {to=1} : f32[2,3]  #= ["", ["simplify:cast-chain"], []]
          %y = Exp(%b) : f32[2,3]
        }
    """)


def test_cast_chain_with_a_shared_middle_stays() -> None:
    g = parse_graph("""
        graph main(%x: i8[2,3]) -> (%y, %a) {
          %a = Cast(%x) {to=6} : i32[2,3]
          %y = Cast(%a) {to=1} : f32[2,3]
        }
    """)
    check_not_fired(Simplify(), g, "the i32 cast output %a is a graph output")


def test_squeeze_then_unsqueeze_with_negative_axes() -> None:
    g = parse_graph("""
        graph main(%x: f32[2,1,3]) -> (%y) {
          %a = const i64[1] [1]
          %b = const i64[1] [-2]
          %s = Squeeze(%x, %a) : f32[2,3]
          %u = Unsqueeze(%s, %b) : f32[2,1,3]
          %y = Exp(%u) : f32[2,1,3]
        }
    """)
    check_pass(Simplify(), g, expect="""
        graph main(%x: f32[2,1,3]) -> (%y) {
          %a = const i64[1] [1]
          %b = const i64[1] [-2]
          %y = Exp(%x) : f32[2,1,3]
        }
    """)


def test_unsqueeze_then_squeeze() -> None:
    g = parse_graph("""
        graph main(%x: f32[2,3]) -> (%y) {
          %a = const i64[2] [0, 3]
          %u = Unsqueeze(%x, %a) : f32[1,2,3,1]
          %s = Squeeze(%u, %a) : f32[2,3]
          %y = Exp(%s) : f32[2,3]
        }
    """)
    check_pass(Simplify(), g, expect=lambda h: [n.op for n in h.nodes] == ["Exp"])


def test_chains_simplify_to_a_fixed_point_in_one_run() -> None:
    g = parse_graph("""
        graph main(%x: f32[2,3]) -> (%y) {
          %one = const f32[] [1.0]
          %i = Identity(%x) : f32[2,3]  # torch:id
          %t = Transpose(%i) : f32[3,2]
          %m = Mul(%t, %one) : f32[3,2]
          %u = Transpose(%m) : f32[2,3]
          %y = Relu(%u) : f32[2,3]
        }
    """)
    result = check_pass(Simplify(), g, expect=lambda h: [n.op for n in h.nodes] == ["Relu"])
    assert [n.rule for n in result.notes if n.fired] == ["identity", "mul-one", "transpose-inverse"]


def test_identity_from_input_to_output_stays_and_says_why() -> None:
    g = parse_graph("""
        graph main(%x: f32[2,3]) -> (%y) {
          %y = Identity(%x) : f32[2,3]
        }
    """)
    check_not_fired(Simplify(), g, "%y is a graph output and %x cannot take its name")


def test_graph_output_keeps_its_name_when_a_node_output_takes_it() -> None:
    g = parse_graph("""
        graph main(%x: f32[2,3]) -> (%y) {
          %e = Exp(%x) : f32[2,3]
          %y = Identity(%e) : f32[2,3]
        }
    """)
    check_pass(Simplify(), g, expect="""
        graph main(%x: f32[2,3]) -> (%y) {
          %y = Exp(%x) : f32[2,3]
        }
    """)


NEAR_MISSES = [
    ("broadcasting add of zeros", "%x: f32[3]", "  %z = const f32[2,3] [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]\n"
     "  %r = Add(%x, %z) : f32[2,3]", "%x is f32[3] but %r is f32[2,3]"),
    ("lossy cast chain", "%x: f32[2,3]", "  %h = Cast(%x) {to=10} : f16[2,3]\n  %r = Cast(%h) {to=1} : f32[2,3]",
     "f32 -> f16 -> f32 is lossy"),
    ("int truncation", "%x: f32[2,3]", "  %h = Cast(%x) {to=7} : i64[2,3]\n  %r = Cast(%h) {to=1} : f32[2,3]",
     "f32 -> i64 -> f32 is lossy"),
    ("shared transposes", "%x: f32[2,3,4]", "  %t = Transpose(%x) {perm=[1, 2, 0]} : f32[3,4,2]\n"
     "  %r = Transpose(%t) {perm=[1, 2, 0]} : f32[4,2,3]\n  %t2 = Neg(%t) : f32[3,4,2]",
     "the first Transpose output %t has 2 users"),
    ("dropout in training", "%x: f32[2,3]", "  %ratio = const f32[] [0.5]\n  %tm = const bool[] [true]\n"
     "  %r = Dropout(%x, %ratio, %tm) : f32[2,3]", "training_mode %tm is not the constant false"),
    ("squeeze other axes", "%x: f32[1,3,1]", "  %a = const i64[1] [0]\n  %b = const i64[1] [2]\n"
     "  %s = Squeeze(%x, %a) : f32[3,1]\n  %r = Unsqueeze(%s, %b) : f32[3,1,1]",
     "Squeeze axes [0] differ from Unsqueeze axes [2]"),
]


@pytest.mark.parametrize(("case", "inputs", "body", "reason"), NEAR_MISSES, ids=[c[0] for c in NEAR_MISSES])
def test_near_misses_say_why(case: str, inputs: str, body: str, reason: str) -> None:
    g = parse_graph(f"graph main({inputs}) -> (%y) {{\n{body}\n  %y = Neg(%r) : ?\n}}\n")
    check_not_fired(Simplify(), g, reason)


def test_mul_by_two_is_no_candidate_and_leaves_no_note() -> None:
    g = parse_graph("""
        graph main(%x: f32[2]) -> (%y) {
          %two = const f32[] [2.0]
          %y = Mul(%x, %two) : f32[2]
        }
    """)
    result = Simplify().run(g, PassContext())
    assert not result.modified and result.notes == []
