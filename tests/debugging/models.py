"""Small models and a deliberately wrong pass shared by the debugging tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from compiler.ir import Graph
from compiler.pass_manager import Pass, PassContext, PassResult

# x -> MatMul(w) -> Add(b) -> Relu, where b = Mul(b0, two) is foldable, plus a Shape chain left
# for fold-constants, so correct passes have something to do before and after the wrong one.
W = np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(4, 3)


def small_onnx(path: Path) -> Path:
    inits = [
        helper.make_tensor("w", TensorProto.FLOAT, [4, 3], W.ravel().tolist()),
        helper.make_tensor("b0", TensorProto.FLOAT, [3], [0.5, -0.25, 1.0]),
        helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
    ]
    nodes = [
        helper.make_node("Mul", ["b0", "two"], ["b"], name="bias_scale"),
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Add", ["h", "b"], ["hb"], name="bias"),
        helper.make_node("Relu", ["hb"], ["y"], name="act"),
    ]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


class FlipSign(Pass):
    """Deliberately wrong: replaces every used float constant by its negation."""

    name = "flip-sign"
    description = "deliberately wrong test pass: negates float constants"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        targets = [v for v in graph.constants.values() if v.const is not None and v.const.dtype.kind == "f" and v.uses]
        for v in targets:
            graph.replace_value(v, graph.add_constant(graph.fresh_name(v.name + "_neg"), -v.const))
        graph.remove_unused_constants()
        return PassResult(graph, bool(targets))


def symbolic_batch_onnx(path: Path) -> Path:
    """x[batch,4] -> Reshape(x, Shape(x)) -> MatMul(w) -> Add(Mul(b0, two)): Shape cannot fold, Mul can."""
    inits = [
        helper.make_tensor("w", TensorProto.FLOAT, [4, 3], W.ravel().tolist()),
        helper.make_tensor("b0", TensorProto.FLOAT, [3], [0.5, -0.25, 1.0]),
        helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
    ]
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="x_shape"),
        helper.make_node("Reshape", ["x", "s"], ["r"], name="same_shape"),
        helper.make_node("Mul", ["b0", "two"], ["b"], name="bias_scale"),
        helper.make_node("MatMul", ["r", "w"], ["h"], name="mm"),
        helper.make_node("Add", ["h", "b"], ["y"], name="bias"),
    ]
    graph = helper.make_graph(nodes, "symbolic", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


class Crash(Pass):
    """Deliberately broken: fails on any graph with a MatMul."""

    name = "crash-on-matmul"
    description = "deliberately broken test pass: raises on MatMul"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if "MatMul" in graph.op_counts():
            raise ValueError("MatMul is not handled")
        return PassResult(graph, False)
