"""Verifier: a valid graph passes; each rule is broken once and reported; all problems at once."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.ir import DType, Graph, Node, TensorType, Value
from compiler.ir.parser import parse_graph
from compiler.ir.verifier import VerifyError, broadcast_shapes, find_problems, verify

VALID = """\
graph net(%x: f32[batch,3,8,8], %ids: i64[batch]) -> (%y, %n, %m) {
  %w = const f32[4,3,3,3] @0123456789abcdef
  %b = const f32[4] [0.0, 1.0, 2.0, 3.0]
  %s = const f32[1,4,1,1] [1.0, 2.0, 3.0, 4.0]
  %c = Conv(%x, %w, %b) {pads=[1,1,1,1]} : f32[batch,4,8,8]
  %d = Mul(%c, %s) : f32[batch,4,8,8]
  %f = Flatten(%d) : f32[batch,256]
  %wt = Transpose(%f) : f32[256,batch]
  %g = Gemm(%f, %wt) : f32[batch,batch]
  %y = Relu(%g) : f32[batch,batch]
  %k = Cast(%ids) {to=1} : f32[batch]
  %e = Less(%k, %k) : bool[batch]
  %n = Not(%e) : bool[batch]
  %m = Shape(%x) : i64[4]
  %z = com.effarch::Anything(%m) : u8[?]
}
"""


def problems_of(text: str) -> list[str]:
    return find_problems(parse_graph(text))


def test_valid_graph_passes() -> None:
    verify(parse_graph(VALID))


def test_every_problem_is_listed_after_a_summary_line() -> None:
    text = VALID.replace("Mul(%c, %s) : f32", "Mul(%c, %ids) : i64").replace("{to=1}", "{to=7}")
    with pytest.raises(VerifyError) as info:
        verify(parse_graph(text))
    lines = str(info.value).splitlines()
    assert lines[0] == "graph net fails verification with 3 problem(s):"
    assert len(lines) == 4 and all(line.startswith("  node #") for line in lines[1:])
    assert "node #1 Mul -> %d: inputs must share a dtype, got f32, i64" in lines[1]


H = "graph g(%x: f32[2,3], %i: i64[2,3], %b: bool[2,3]) -> (%y) {\n"


@pytest.mark.parametrize(("body", "expected"), [
    ("  %y = Relu(%z) : f32[2,3]\n  %z = Neg(%x) : f32[2,3]\n",
     "node #0 Relu -> %y input 0 %z is produced by the later node #1; nodes must be in topological"),
    ("  %y = Foo(%x) : f32[2,3]\n", "op 'Foo' is not in compiler.ir.ops.SUPPORTED_OPS"),
    ("  %y = Relu(%x) : ?\n", "value %y has no type"),
    ("  %y = Add(%x, %i) : f32[2,3]\n", "node #0 Add -> %y: inputs must share a dtype, got f32, i64"),
    ("  %y = Add(%x, %x) : i64[2,3]\n", "output dtype is i64 but the input dtype makes it f32"),
    ("  %y = Sub(%x, %c) : f32[2,3]\n  %c = const f32[2] [1.0, 2.0]\n",
     "input shapes f32[2,3] and f32[2] do not broadcast (axis -1)"),
    ("  %y = Div(%x, %x) : f32[3,3]\n", "output shape f32[3,3] contradicts the broadcast"),
    ("  %y = Mul(%x, %x) : f32[2,3,1]\n", "output shape f32[2,3,1] contradicts the broadcast"),
    ("  %y = Equal(%x, %x) : f32[2,3]\n", "output dtype is f32 but a comparison makes it bool"),
    ("  %y = And(%b, %x) : bool[2,3]\n", "inputs must be bool, got f32"),
    ("  %y = Conv(%i, %i) : i64[2,3]\n", "input 0 must be a float tensor, got i64"),
    ("  %y = Conv(%x, %x) : f32[2,3]\n", "input 0 has rank 2, expected at least 3"),
    ("  %w = const f32[1,1,1] [1.0]\n  %y = Conv(%v, %w) : f32[1,1,1,1]\n  %v = const f32[1,1,1,1] [1.0]\n",
     "weight rank 3 differs from input rank 4"),
    ("  %v = const f32[1,1,1] [1.0]\n  %y = Conv(%v, %v, %x) : f32[1,1,1]\n", "bias must have rank 1, got 2"),
    ("  %y = Conv(%x) : f32[2,3]\n", "needs two inputs"),
    ("  %c = const f32[] [1.0]\n  %y = MatMul(%x, %c) : f32[2,3]\n", "input 1 has rank 0, expected at least"),
    ("  %c = const f32[1,1,1] [1.0]\n  %y = Gemm(%x, %x, %c) : f32[2,3]\n", "input C has rank 3"),
    ("  %y = Gemm(%x, %i) : f32[2,3]\n", "inputs must share a dtype, got f32, i64"),
    ("  %y = Cast(%x) {to=7} : f32[2,3]\n", "output dtype is f32 but to=7 makes it i64"),
    ("  %y = Cast(%x) : f32[2,3]\n", "the 'to' attribute (an ONNX dtype code) is missing"),
    ("  %y = Cast(%x) {to=14} : f32[2,3]\n", "ONNX element type 14 is not supported"),
    ("  %y = Shape(%x) : i32[2]\n", "output dtype is i32 but Shape makes it i64"),
    ("  %y = IsNaN(%x) : f32[2,3]\n", "output dtype is f32 but IsNaN makes it bool"),
])
def test_each_rule_reports_its_problem(body: str, expected: str) -> None:
    problems = problems_of(H + body + "}\n")
    assert any(expected in p for p in problems), problems


def test_symbolic_and_unknown_dims_are_not_guessed() -> None:
    body = ("  %y = Add(%p, %q) : f32[n,3]\n  %z = Add(%p, %r) : f32[*]\n")
    text = "graph g(%p: f32[n,3], %q: f32[1,3], %r: f32[?,1]) -> (%y, %z) {\n" + body + "}\n"
    verify(parse_graph(text))


def test_broadcast_shapes() -> None:
    assert broadcast_shapes([(2, 1, 4), (3, 1)]) == ([2, 3, 4], [])
    assert broadcast_shapes([("n", 1), (1, 5)]) == ([None, 5], [])
    assert broadcast_shapes([(2, 3), (4, 3)])[1] == [2]


def _small() -> tuple[Graph, Value, Node]:
    g = parse_graph(H + "  %y = Relu(%x) : f32[2,3]\n}\n")
    return g, g.inputs[0], g.nodes[0]


def test_stale_and_missing_uses_are_reported() -> None:
    g, x, relu = _small()
    x.uses.append((relu, 5))
    assert any("%x.uses does not match the node inputs: 1 stale (Relu input 5), 0 missing" in p
               for p in find_problems(g))
    x.uses.clear()
    assert any("%x.uses does not match the node inputs: 0 stale (none), 1 missing" in p
               for p in find_problems(g))


def test_foreign_values_outputs_and_graph_membership_are_reported() -> None:
    g, x, relu = _small()
    stranger = Value("stranger", TensorType(DType.F32, (2, 3)))
    relu.set_input(0, stranger)
    g.outputs.append(Value("ghost", TensorType(DType.F32, (1,))))
    relu.graph = None
    relu.outputs[0].index = 3
    problems = "\n".join(find_problems(g))
    assert "input 0 %stranger is not a graph input, a constant or a node output of this graph" in problems
    assert "graph output 1 %ghost is not defined in this graph" in problems
    assert "node #0 Relu -> %y has node.graph set to None, not this graph" in problems
    assert "output 0 %y records producer/index Relu/3" in problems


def test_duplicate_names_nodes_and_inputs_with_producers_are_reported() -> None:
    g, x, relu = _small()
    g.nodes.append(relu)
    x.producer = relu
    g.inputs[1].name = "x"
    problems = "\n".join(find_problems(g))
    assert "appears more than once in graph.nodes" in problems
    assert "graph input %x has a producer (Relu)" in problems
    assert "value name %x is used by 2 values; names must be unique" in problems


def test_constant_problems_are_reported() -> None:
    g, _, _ = _small()
    c = g.add_constant("c", np.zeros((2,), np.float32))
    g.constants["renamed"] = g.constants.pop("c")
    c.type = TensorType(DType.F32, (3,))
    bare = Value("bare", TensorType(DType.F32, (1,)))
    g.constants["bare"] = bare
    problems = "\n".join(find_problems(g))
    assert "constant %c is stored under the key 'renamed'" in problems
    assert "constant %c is typed f32[3] but its payload is f32[2]" in problems
    assert "constant %bare has neither a payload nor a digest" in problems
