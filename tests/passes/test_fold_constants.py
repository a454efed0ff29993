"""fold-constants through the shared harness, plus its evaluators checked against onnx.reference."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.ir import Graph, TensorType
from compiler.ir.parser import parse_graph
from compiler.pass_manager import PassContext
from passes.fold_constants import FoldConstants, evaluate_node, evaluate_with_reference
from tests.passes.harness import check_not_fired, check_pass, payload

SHAPE_CHAIN = """
graph main(%x: f32[2,3,4]) -> (%y) {
  %i = const i64[] [0]
  %minus1 = const i64[1] [-1]
  %axes = const i64[1] [0]
  %s = Shape(%x) : i64[3]
  %d0 = Gather(%s, %i) {axis=0} : i64[]
  %d0u = Unsqueeze(%d0, %axes) : i64[1]
  %shp = Concat(%d0u, %minus1) {axis=0} : i64[2]
  %r = Reshape(%x, %shp) : f32[2,12]
  %y = Relu(%r) : f32[2,12]
}
"""


def test_shape_arithmetic_chain_on_static_input_folds_to_one_constant() -> None:
    # The Shape -> Gather -> Unsqueeze -> Concat chain folds in one run; leftovers are DCE's job.
    result = check_pass(FoldConstants(), parse_graph(SHAPE_CHAIN), expect="""
        graph main(%x: f32[2,3,4]) -> (%y) {
          %i = const i64[] [0]
          %minus1 = const i64[1] [-1]
          %axes = const i64[1] [0]
          %s = const i64[3] [2, 3, 4]
          %d0 = const i64[] [2]
          %d0u = const i64[1] [2]
          %shp = const i64[2] [2, -1]
          %r = Reshape(%x, %shp) : f32[2,12]
          %y = Relu(%r) : f32[2,12]
        }
    """)
    fired = [n for n in result.notes if n.fired]
    assert [n.rule for n in fired] == ["shape-of-static", "fold", "fold", "fold"]


def test_shape_of_symbolic_input_is_not_folded_and_says_why() -> None:
    text = SHAPE_CHAIN.replace("%x: f32[2,3,4]", "%x: f32[batch,3,4]").replace("f32[2,12]", "f32[batch,12]")
    check_not_fired(FoldConstants(), parse_graph(text), "not static")


def test_shape_with_start_folds_when_only_the_sliced_dims_are_static() -> None:
    g = parse_graph("""
        graph main(%x: f32[batch,3,4]) -> (%y) {
          %s = Shape(%x) {start=1} : i64[2]
          %y = Expand(%x, %s) : f32[batch,3,4]
        }
    """)
    result = FoldConstants().run(g, PassContext())
    assert result.modified and payload(g, "s").tolist() == [3, 4]


def test_size_of_static_input_folds() -> None:
    g = parse_graph("""
        graph main(%x: f32[2,3]) -> (%y) {
          %n = Size(%x) : i64[]
          %nf = Cast(%n) {to=1} : f32[]
          %y = Mul(%x, %nf) : f32[2,3]
        }
    """)
    result = check_pass(FoldConstants(), g)
    assert payload(result.graph, "nf").tolist() == 6.0


def test_weight_cast_and_transpose_fold_into_a_new_constant() -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 5)).astype(np.float16)
    g = Graph()
    x = g.add_input("x", TensorType.of(np.zeros((2, 5), np.float32)))
    wc = g.add_constant("w", w)
    cast = g.make_node("Cast", [wc], {"to": 1}, types=[TensorType.of(w.astype(np.float32))],
                       output_names=["wf"])
    wt = g.make_node("Transpose", [cast.outputs[0]], {"perm": [1, 0]},
                     types=[TensorType.of(w.T.astype(np.float32))], output_names=["wt"])
    mm = g.make_node("MatMul", [x, wt.outputs[0]], types=[TensorType.of(np.zeros((2, 4), np.float32))],
                     output_names=["y"])
    g.outputs = [mm.outputs[0]]

    def folded(result: Graph) -> None:
        assert [n.op for n in result.nodes] == ["MatMul"]
        new = result.nodes[0].inputs[1]
        assert new is not None and new.name == "wt" and new.const is not None
        np.testing.assert_array_equal(new.const, w.astype(np.float32).T)
        assert not new.const.flags.writeable  # folded payloads are immutable

    check_pass(FoldConstants(), g, expect=folded)


LARGE_FILL = """
graph main(%x: f32[512,1024]) -> (%y) {
  %shape = const i64[2] [512, 1024]
  %big = ConstantOfShape(%shape) {value=tensor<f32[1]>[1.5]} : f32[512,1024]
  %y = Add(%x, %big) : f32[512,1024]
}
"""


def test_size_guard_refuses_a_constant_of_shape_larger_than_one_mib() -> None:
    check_not_fired(FoldConstants(), parse_graph(LARGE_FILL), "size guard")


def test_size_guard_refuses_expand_of_a_small_constant() -> None:
    g = parse_graph("""
        graph main(%x: f32[131072,4]) -> (%y) {
          %row = const f32[1,4] [1.0, 2.0, 3.0, 4.0]
          %shape = const i64[2] [131072, 4]
          %e = Expand(%row, %shape) : f32[131072,4]
          %y = Add(%x, %e) : f32[131072,4]
        }
    """)
    check_not_fired(FoldConstants(), g, "size guard")


def test_size_limit_option_lets_a_larger_fold_through() -> None:
    text = LARGE_FILL.replace("512,1024", "256,1024").replace("[512, 1024]", "[256, 1024]")
    result = check_pass(FoldConstants(size_limit=4 << 20), parse_graph(text))
    assert payload(result.graph, "big").shape == (256, 1024)


def test_an_output_that_is_a_graph_output_stays_computed() -> None:
    g = parse_graph("""
        graph main(%x: f32[2]) -> (%x, %y) {
          %a = const f32[2] [1.0, 2.0]
          %y = Neg(%a) : f32[2]
        }
    """)
    check_not_fired(FoldConstants(), g, "graph output")


def test_ops_without_a_numpy_evaluator_fold_through_the_onnx_reference() -> None:
    g = parse_graph("""
        graph main(%x: i64[2,6]) -> (%y) {
          %a = const i64[2,3] [7, -7, 9, 4, -9, 5]
          %b = const i64[2,3] [2, 2, -4, 3, 2, -2]
          %reps = const i64[2] [1, 2]
          %q = Div(%a, %b) : i64[2,3]
          %t = Tile(%q, %reps) : i64[2,6]
          %y = Add(%x, %t) : i64[2,6]
        }
    """)
    result = check_pass(FoldConstants(), g)
    assert payload(result.graph, "q").tolist() == [[3, -3, -2], [1, -4, -2]]
    assert [n.op for n in result.graph.nodes] == ["Add"]


# Each numpy evaluator must agree exactly with onnx.reference on an awkward case.
NUMPY_CASES = [
    ("Slice", {}, [np.arange(24).reshape(4, 6), np.array([-1, 5]), np.array([-100, 1]), np.array([0, 1]),
                   np.array([-2, 3])]),
    ("Slice", {}, [np.arange(10.0), np.array([2]), np.array([1 << 62])]),
    ("Squeeze", {}, [np.zeros((1, 3, 1)), np.array([-1])]),
    ("Squeeze", {}, [np.zeros((1, 3, 1))]),
    ("Unsqueeze", {}, [np.arange(6).reshape(2, 3), np.array([-1, 0])]),
    ("Reshape", {}, [np.arange(12), np.array([4, -1])]),
    ("Reshape", {}, [np.arange(12).reshape(3, 4), np.array([0, -1])]),
    ("Flatten", {"axis": 0}, [np.arange(24.0).reshape(2, 3, 4)]),
    ("Flatten", {"axis": -1}, [np.arange(24.0).reshape(2, 3, 4)]),
    ("Gather", {"axis": 1}, [np.arange(12).reshape(3, 4), np.array([[-1, 0], [2, 1]])]),
    ("Transpose", {}, [np.arange(24).reshape(2, 3, 4)]),
    ("Range", {}, [np.array(1.0, np.float32), np.array(2.0, np.float32), np.array(0.25, np.float32)]),
    ("Range", {}, [np.array(10), np.array(1), np.array(-3)]),
    ("Expand", {}, [np.arange(3.0).reshape(3, 1), np.array([2, 1, 4])]),
    ("ConstantOfShape", {"value": np.array([7], np.int64)}, [np.array([2, 3])]),
    ("Cast", {"to": 7}, [np.array([1.7, -1.7, 2.5], np.float32)]),
    ("Max", {}, [np.array([1.0, 5.0]), np.array([[3.0], [0.0]]), np.array(2.0)]),
    ("Where", {}, [np.array([True, False]), np.array([1, 2]), np.array([[3], [4]])]),
    ("Sigmoid", {}, [np.array([-3.0, 0.0, 4.0], np.float32)]),
    ("Relu", {}, [np.array([-1, 0, 2], np.int32)]),
    ("Concat", {"axis": -1}, [np.zeros((2, 1)), np.ones((2, 3))]),
]


@pytest.mark.parametrize(("op", "attrs", "arrays"), NUMPY_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(NUMPY_CASES)])
def test_numpy_evaluators_match_the_onnx_reference(op: str, attrs: dict, arrays: list[np.ndarray]) -> None:
    g = Graph()
    ins = [g.add_constant(f"c{i}", a) for i, a in enumerate(arrays)]
    node = g.make_node(op, ins, attrs)
    got = evaluate_node(node)
    want = evaluate_with_reference(node, arrays)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-6)
