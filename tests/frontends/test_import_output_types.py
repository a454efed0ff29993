"""Types the importer fills where onnx's model-wide shape inference leaves a value untyped."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compiler.frontends.onnx import import_onnx
from compiler.ir.verifier import verify


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[str],
           inits: list[onnx.TensorProto]) -> onnx.ModelProto:
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs]
    graph = helper.make_graph(nodes, "g", inputs, outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def test_group_normalization_output_has_its_input_type() -> None:
    # onnx infers no shape through GroupNormalization's function body; the output is shaped like x.
    inits = [numpy_helper.from_array(np.ones(4, np.float32), "s"),
             numpy_helper.from_array(np.zeros(4, np.float32), "b")]
    node = helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=2)
    g = import_onnx(_model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3, 3])], ["y"], inits))
    assert g.outputs[0].type is not None and g.outputs[0].type.shape == (1, 4, 3, 3)


def test_omitted_middle_output_is_typed() -> None:
    # LSTM with Y and Y_c but no Y_h: the unnamed Y_h still needs a type for the verifier.
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((1, 12, 2)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal((1, 12, 3)).astype(np.float32), "R")]
    node = helper.make_node("LSTM", ["X", "W", "R"], ["Y", "", "Y_c"], hidden_size=3)
    g = import_onnx(_model([node], [helper.make_tensor_value_info("X", TensorProto.FLOAT, [5, 2, 2])], ["Y", "Y_c"],
                           inits))
    verify(g)
    omitted = g.nodes[0].outputs[1]
    assert omitted.type is not None and omitted.type.shape == (1, 2, 3)
