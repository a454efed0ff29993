"""Small ONNX models built with onnx.helper for the frontend tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def make_model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
               outputs: list[onnx.ValueInfoProto], initializers: list[onnx.TensorProto] | None = None,
               opset: int = 21) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "test", inputs, outputs, initializer=initializers or [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def f32(name: str, shape: list[int | str] | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def conv_mlp(seed: int = 0) -> onnx.ModelProto:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> Softmax, with weights as initializers."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal((5, 4)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["g"], name="fc", transB=1, alpha=1.0),
        helper.make_node("Softmax", ["g"], ["y"], name="softmax"),
    ]
    return make_model(nodes, [f32("x", ["N", 3, 8, 8])], [f32("y", ["N", 5])], inits)


def reduce_split_opset13() -> onnx.ModelProto:
    """Opset-13 forms the importer must rewrite: ReduceMean/ReduceMax axes attributes, Split without sizes."""
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], name="mean", axes=[2], keepdims=1),
        helper.make_node("ReduceMax", ["x"], ["mx"], name="max", axes=[1], keepdims=0),
        helper.make_node("Split", ["x"], ["s0", "s1"], name="split", axis=2),
        helper.make_node("Sub", ["s0", "m"], ["y0"], name="sub"),
    ]
    outs = [f32("y0", [2, 3, 2]), f32("mx", [2, 4]), f32("s1", [2, 3, 2])]
    return make_model(nodes, [f32("x", [2, 3, 4])], outs, opset=13)
