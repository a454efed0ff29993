"""Tests of targets/: lowering to Relax, conformance with ONNX, builds and runtime.

Shared helpers: compile a lowered module for the host CPU and run it; write an IR graph as an
ONNX model (small and local, so these tests do not depend on the exporter) for onnxruntime.
"""

from __future__ import annotations

import numpy as np
import onnx
import tvm
from onnx import helper
from tvm import relax

from compiler.ir.core import Value
from compiler.ir.graph import Graph
from targets.lowering.to_relax import Lowered


def run_lowered(lowered: Lowered, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Compile for llvm, run main with the inputs (in graph order) then the weights."""
    target = tvm.target.Target({"kind": "llvm"})
    ex = tvm.compile(lowered.mod, target=target, relax_pipeline=relax.get_default_pipeline(target))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    args = [tvm.runtime.tensor(np.asarray(inputs[n], order="C")) for n in lowered.input_names]
    args += [tvm.runtime.tensor(p) for p in lowered.params]
    result = vm["main"](*args)
    return [result[i].numpy() for i in range(len(result))]


def graph_to_onnx(g: Graph, opset: int = 21) -> onnx.ModelProto:
    """The same graph as an ONNX model: nodes, attributes, constants as initializers."""

    def info(v: Value) -> onnx.ValueInfoProto:
        if v.type is None:
            return helper.make_empty_tensor_value_info(v.name)
        shape = None if v.type.shape is None else list(v.type.shape)
        return helper.make_tensor_value_info(v.name, v.type.dtype.onnx_code, shape)

    nodes = [
        helper.make_node(
            n.op, ["" if v is None else v.name for v in n.inputs], [v.name for v in n.outputs],
            name=n.name or n.outputs[0].name,
            **{k: helper.make_tensor(k, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape, a.ravel())
               if isinstance(a, np.ndarray) else a for k, a in n.attrs.items()},
        )
        for n in g.nodes
    ]
    inits = [onnx.numpy_helper.from_array(v.const, v.name) for v in g.constants.values()]
    graph = helper.make_graph(nodes, g.name, [info(v) for v in g.inputs],
                              [info(v) for v in g.outputs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run_onnxruntime(g: Graph, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    model = graph_to_onnx(g)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return list(sess.run(None, inputs))
