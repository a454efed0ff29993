"""propagate-shapes through the shared harness, and its effect on fold-constants."""

from __future__ import annotations

import numpy as np

from compiler.ir import DType, Graph, TensorType
from compiler.ir.parser import parse_graph
from compiler.pass_manager import PassContext, PassManager, parse_pipeline
from passes.shapes import PropagateShapes, refine
from tests.passes.harness import check_not_fired, check_pass

# Shape arithmetic as exporters write it, with the result shapes left unknown.
RESHAPE_CHAIN = """
graph main(%x: f32[{x}]) -> (%y) {{
  %minus1 = const i64[1] [-1]
  %axes = const i64[1] [0]
  %i = const i64[] [0]
  %s = Shape(%x) : i64[?]
  %d0 = Gather(%s, %i) {{axis=0}} : i64[*]
  %d0u = Unsqueeze(%d0, %axes) : i64[*]
  %shp = Concat(%d0u, %minus1) {{axis=0}} : i64[?]
  %r = Reshape(%x, %shp) : f32[?,?]
  %s2 = Shape(%r) : i64[?]
  %y = Reshape(%x, %s2) : f32[*]
}}
"""


def test_static_input_makes_the_reshape_chain_static() -> None:
    check_pass(PropagateShapes(), parse_graph(RESHAPE_CHAIN.format(x="2,3,4")), expect="""
        graph main(%x: f32[2,3,4]) -> (%y) {
          %minus1 = const i64[1] [-1]
          %axes = const i64[1] [0]
          %i = const i64[] [0]
          %s = Shape(%x) : i64[3]
          %d0 = Gather(%s, %i) {axis=0} : i64[]
          %d0u = Unsqueeze(%d0, %axes) : i64[1]
          %shp = Concat(%d0u, %minus1) {axis=0} : i64[2]
          %r = Reshape(%x, %shp) : f32[2,12]
          %s2 = Shape(%r) : i64[2]
          %y = Reshape(%x, %s2) : f32[2,12]
        }
    """)


def test_then_fold_constants_folds_the_shape_of_the_reshaped_value() -> None:
    g = parse_graph(RESHAPE_CHAIN.format(x="2,3,4"))
    pipeline = parse_pipeline("propagate-shapes,fold-constants,eliminate-dead-code")
    out = PassManager(pipeline, PassContext()).run(g).graph
    assert [n.op for n in out.nodes] == ["Reshape"]  # %r's Reshape is dead once %s2 folded
    # Without propagate-shapes, Shape(%r) of f32[?,?] cannot fold.
    h = PassManager(parse_pipeline("fold-constants,eliminate-dead-code"), PassContext()).run(
        parse_graph(RESHAPE_CHAIN.format(x="2,3,4"))).graph
    assert "Shape" in [n.op for n in h.nodes]


def test_symbolic_batch_propagates_as_a_symbol() -> None:
    # ONNX does not resolve -1 against a symbolic dim (batch*12/batch), so that dim stays unknown.
    def batch_first(g: Graph) -> bool:
        types = {n.outputs[0].name: str(n.outputs[0].type) for n in g.nodes}
        return types["r"] == types["y"] == "f32[batch,?]" and types["shp"] == "i64[2]"

    check_pass(PropagateShapes(), parse_graph(RESHAPE_CHAIN.format(x="batch,3,4")), expect=batch_first,
               inputs={"x": np.zeros((2, 3, 4), np.float32)})


def test_types_already_static_are_no_change() -> None:
    g = parse_graph("""
        graph main(%x: f32[2,3]) -> (%y) {
          %y = Relu(%x) : f32[2,3]
        }
    """)
    assert not PropagateShapes().run(g, PassContext()).modified


def test_a_conflicting_type_is_kept_and_reported() -> None:
    g = parse_graph("""
        graph main(%x: f32[2,3]) -> (%y) {
          %t = Transpose(%x) : f32[2,3]
          %y = Relu(%t) : f32[2,3]
        }
    """)
    check_not_fired(PropagateShapes(), g, "ONNX infers f32[3,2], effarch says f32[2,3] (dim 0)")


def test_refine_never_loosens_a_dimension() -> None:
    ours = TensorType(DType.F32, (2, "n", None))
    assert refine(ours, TensorType(DType.F32, (None, None, "m"))) == TensorType(DType.F32, (2, "n", "m"))
    assert refine(ours, TensorType(DType.F32, None)) == ours
    assert refine(None, ours) == ours
    assert "rank 2" in str(refine(ours, TensorType(DType.F32, (2, 3))))


def test_weights_are_typed_without_their_data() -> None:
    g = parse_graph("""
        graph main(%x: f32[2,3]) -> (%y) {
          %w = const f32[3,4] [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 1.0, 2.0, 3.0]
          %m = MatMul(%x, %w) : f32[?,?]
          %y = Relu(%m) : f32[*]
        }
    """)
    result = check_pass(PropagateShapes(), g)
    assert [str(n.outputs[0].type) for n in result.graph.nodes] == ["f32[2,4]", "f32[2,4]"]
    assert result.graph.constants["w"].const is not None  # the graph itself keeps its weights
