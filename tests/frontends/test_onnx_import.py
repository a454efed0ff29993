"""ONNX importer: opset checks, the unsupported-ops report, normalisation, constants, types, provenance."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.errors import EffarchError, UnsupportedOpsError
from compiler.frontends.onnx import import_onnx, module_path_from_namespace
from compiler.frontends.onnx_export import to_onnx
from compiler.ir import DType, TensorType
from compiler.numerics.reference import random_inputs, run_onnxruntime
from tests.frontends.models import conv_mlp, f32, make_model, reduce_split_opset13

# float32 reductions reorder sums; both sides run the same onnxruntime kernels, so this is generous.
F32_TOL = {"rtol": 1e-6, "atol": 1e-6}


def test_unsupported_ops_are_all_listed_in_one_error() -> None:
    nodes = [helper.make_node("StringNormalizer", ["x"], [f"s{i}"], name=f"strings_{i}") for i in range(7)]
    nodes += [helper.make_node("NonMaxSuppression", ["x", "x"], [f"n{i}"], name=f"nms_{i}") for i in range(2)]
    nodes += [helper.make_node("Relu", ["x"], ["r"], name="fine"),
              helper.make_node("Frob", ["x"], ["z"], name="custom", domain="com.acme")]
    model = make_model(nodes, [f32("x", [4])], [f32("r", [4])])
    with pytest.raises(UnsupportedOpsError) as info:
        import_onnx(model)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("unsupported operators (3 types, 10 nodes): StringNormalizer x7 [strings_0, strings_1, "
                          "strings_2, strings_3, strings_4, ...], NonMaxSuppression x2 [nms_0, nms_1], "
                          "com.acme::Frob x1 [custom]")
    assert "compiler/ir/ops.py" in msg and "Relu" not in msg


def test_subgraph_ops_are_unsupported() -> None:
    branch = helper.make_graph([helper.make_node("Identity", ["x"], ["o"])], "b", [], [f32("o", [1])])
    node = helper.make_node("If", ["c"], ["y"], name="if0", then_branch=branch, else_branch=branch)
    model = make_model([node], [helper.make_tensor_value_info("c", TensorProto.BOOL, [])], [f32("y", [1])])
    with pytest.raises(UnsupportedOpsError, match=r"If x1 \[if0\]"):
        import_onnx(model)


@pytest.mark.parametrize("opset", [6, 29])
def test_opset_outside_7_to_28_names_the_fix(opset: int) -> None:
    relu = helper.make_node("Relu", ["x"], ["y"])
    model = make_model([relu], [f32("x", [1])], [f32("y", [1])], opset=opset)
    with pytest.raises(EffarchError, match=f"ONNX opset {opset} is not supported.*re-export the model with opset 21"):
        import_onnx(model)


@pytest.mark.parametrize("opset", [7, 9, 11, 22, 25, 28])
def test_opsets_7_to_28_are_read(opset: int) -> None:
    relu = helper.make_node("Relu", ["x"], ["y"])
    model = make_model([relu], [f32("x", [1])], [f32("y", [1])], opset=opset)
    g = import_onnx(model)
    assert [n.op for n in g.nodes] == ["Relu"] and g.metadata["source_opset"] == str(opset)
    assert ("version converter" in g.metadata["import_notes"]) == (opset < 13)


def test_opset13_reductions_and_split_are_normalised_to_opset21() -> None:
    model = reduce_split_opset13()
    g = import_onnx(model)
    by_op = {n.op: n for n in g.nodes}
    for op, axes in (("ReduceMean", [2]), ("ReduceMax", [1])):
        node = by_op[op]
        assert "axes" not in node.attrs
        axes_value = node.inputs[1]
        assert axes_value is not None and axes_value.const is not None
        np.testing.assert_array_equal(axes_value.const, np.array(axes, dtype=np.int64))
    assert by_op["Split"].attrs == {"axis": 2, "num_outputs": 2}
    assert g.metadata["opset"] == "13"
    inputs = random_inputs(g, seed=1)
    expected = run_onnxruntime(model, inputs)
    actual = run_onnxruntime(to_onnx(g), inputs)
    assert expected.keys() == actual.keys()
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], **F32_TOL)


def test_external_data_is_loaded(tmp_path: Path) -> None:
    model = conv_mlp()
    path = tmp_path / "model.onnx"
    onnx.save_model(conv_mlp(), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    assert (tmp_path / "weights.bin").stat().st_size > 0
    g = import_onnx(path)
    for init in model.graph.initializer:
        const = g.constants[init.name].const
        assert const is not None
        np.testing.assert_array_equal(const, numpy_helper.to_array(init))
    assert g.metadata["source_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_constant_node_forms_become_graph_constants() -> None:
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.array([5.0, 7.0], dtype=np.float32), "sv"),
        numpy_helper.from_array(np.array([1, 4], dtype=np.int64), "si"), [2, 3])
    forms = {
        "value": (dict(value=numpy_helper.from_array(np.arange(6, dtype=np.int32).reshape(2, 3))),
                  np.arange(6, dtype=np.int32).reshape(2, 3)),
        "value_float": (dict(value_float=2.5), np.array(2.5, dtype=np.float32)),
        "value_floats": (dict(value_floats=[1.0, 2.0]), np.array([1.0, 2.0], dtype=np.float32)),
        "value_int": (dict(value_int=3), np.array(3, dtype=np.int64)),
        "value_ints": (dict(value_ints=[1, 2, 3]), np.array([1, 2, 3], dtype=np.int64)),
        "sparse_value": (dict(sparse_value=sparse), np.array([[0, 5, 0], [0, 7, 0]], dtype=np.float32)),
    }
    nodes = [helper.make_node("Constant", [], [name], **kw) for name, (kw, _) in forms.items()]
    outs = [helper.make_tensor_value_info(name, TensorProto.UNDEFINED, None) for name in forms]
    g = import_onnx(make_model(nodes, [], outs))
    assert g.nodes == []
    for name, (_, expected) in forms.items():
        const = g.constants[name].const
        assert const is not None and const.dtype == expected.dtype
        np.testing.assert_array_equal(const, expected)
    assert [v.name for v in g.outputs] == list(forms)


def test_string_constant_is_a_clear_error() -> None:
    node = helper.make_node("Constant", [], ["s"], name="label", value_string="hello")
    model = make_model([node], [], [helper.make_tensor_value_info("s", TensorProto.STRING, [])])
    with pytest.raises(EffarchError, match="Constant node 'label'.*strings are not supported"):
        import_onnx(model)


def test_unsupported_element_type_is_a_clear_error() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.COMPLEX64, [2])
    model = make_model([helper.make_node("Abs", ["x"], ["y"])], [x],
                       [helper.make_tensor_value_info("y", TensorProto.COMPLEX64, [2])])
    with pytest.raises(EffarchError, match="value 'x' has element type complex64"):
        import_onnx(model)


def test_initializer_listed_as_input_becomes_constant() -> None:
    model = conv_mlp()
    model.graph.input.extend([helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3, 3, 3])])
    g = import_onnx(model)
    assert [v.name for v in g.inputs] == ["x"]
    assert "w" in g.constants


def test_types_symbolic_dims_and_metadata() -> None:
    model = conv_mlp()
    model.producer_name, model.producer_version = "maker", "1.2"
    g = import_onnx(model)
    assert g.inputs[0].type == TensorType(DType.F32, ("N", 3, 8, 8))
    types = {v.name: v.type for n in g.nodes for v in n.outputs}
    assert types["c"] == TensorType(DType.F32, ("N", 4, 8, 8))
    assert types["f"] == TensorType(DType.F32, ("N", 4))
    assert g.outputs[0].type == TensorType(DType.F32, ("N", 5))
    assert g.metadata["producer"] == "maker 1.2"
    digest = hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()
    assert g.metadata["source_sha256"] == digest
    assert [n.provenance.source for n in g.nodes] == ["conv", "relu", "pool", "flatten", "fc", "softmax"]
    gemm = next(n for n in g.nodes if n.op == "Gemm")
    assert gemm.attrs == {"transB": 1, "alpha": 1.0}


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EffarchError, match="not found"):
        import_onnx(tmp_path / "nope.onnx")


def test_torch_namespace_becomes_module_path() -> None:
    ns = (": __main__.Net/layer1.0: torchvision.models.resnet.BasicBlock/conv1: torch.nn.modules.conv.Conv2d/"
          "conv2d: aten.conv2d.default")
    assert module_path_from_namespace(ns) == "layer1.0.conv1"  # relative segment names
    full = (": __main__.M/block: __main__.Block/block.seq: torch.nn.Sequential/block.seq.0: torch.nn.Linear/"
            "linear: aten.linear.default")
    assert module_path_from_namespace(full) == "block.seq.0"  # torch 2.13 writes full paths
    assert module_path_from_namespace(": __main__.Net/add: aten.add.Tensor") == ""
    node = helper.make_node("Relu", ["x"], ["y"], name="node_relu")
    ns = ": __main__.Net/act: torch.nn.Relu/relu: aten.relu.default"
    node.metadata_props.add(key="namespace", value=ns)
    g = import_onnx(make_model([node], [f32("x", [2])], [f32("y", [2])]))
    assert g.nodes[0].provenance.source == "act"
    assert g.nodes[0].name == "node_relu"


@pytest.mark.parametrize("second", ["node", "input"])
def test_a_value_written_twice_is_refused_naming_both_writers(second: str) -> None:
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="a")]
    nodes.append(helper.make_node("Neg", ["x"], ["y" if second == "node" else "x"], name="b"))
    model = make_model(nodes, [f32("x", [2])], [f32("y", [2])])
    writer = "node 'a'" if second == "node" else "graph input"
    with pytest.raises(EffarchError, match=f"is written by {writer} and by node 'b'.*assigns each value once"):
        import_onnx(model)
