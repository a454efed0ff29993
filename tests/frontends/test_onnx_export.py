"""ONNX exporter: valid opset-21 models, same numbers as the source, stable round trips, provenance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import compiler.frontends.onnx_export as onnx_export
from compiler.errors import EffarchError
from compiler.frontends.onnx import import_onnx
from compiler.frontends.onnx_export import save_onnx, to_onnx
from compiler.ir import DType, Graph, Provenance, TensorType
from compiler.numerics.reference import random_inputs, run_onnxruntime
from tests.frontends.models import conv_mlp, reduce_split_opset13

# Same onnxruntime kernels on both sides; float32 differences only from reordered reductions.
F32_TOL = {"rtol": 1e-6, "atol": 1e-6}
SHAPES = {"x": (2, 3, 8, 8)}


def _assert_same_outputs(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(b[name], a[name], **F32_TOL)


@pytest.mark.parametrize(("build", "shapes"), [(conv_mlp, SHAPES), (reduce_split_opset13, None)])
def test_export_runs_like_the_original(build, shapes) -> None:  # type: ignore[no-untyped-def]
    model = build()
    g = import_onnx(model)
    exported = to_onnx(g)
    onnx.checker.check_model(exported, full_check=True)
    assert [(o.domain, o.version) for o in exported.opset_import] == [("", 21)]
    inputs = random_inputs(g, seed=3, shapes=shapes)
    _assert_same_outputs(run_onnxruntime(model, inputs), run_onnxruntime(exported, inputs))


def test_export_import_export_is_stable() -> None:
    first = to_onnx(import_onnx(conv_mlp()))
    second = to_onnx(import_onnx(first))
    first.metadata_props.clear()  # source_sha256 differs by design: it hashes each source
    second.metadata_props.clear()
    assert onnx.printer.to_text(first) == onnx.printer.to_text(second)
    assert first.SerializeToString(deterministic=True) == second.SerializeToString(deterministic=True)


def test_symbolic_dims_are_written_as_dim_param() -> None:
    exported = to_onnx(import_onnx(conv_mlp()))
    dims = exported.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [3, 8, 8]
    assert {vi.name for vi in exported.graph.value_info} >= {"c", "r", "p", "f", "g"}


def test_provenance_and_unique_names_survive_the_round_trip() -> None:
    g = Graph("prov")
    x = g.add_input("x", TensorType(DType.F32, (2,)))
    a = g.make_node("Relu", [x], provenance=Provenance("block.act")).outputs[0]
    rewritten = Provenance("block.act").rewritten("fuse", "relu-relu", merged=("block.act2",))
    b = g.make_node("Relu", [a], provenance=rewritten).outputs[0]
    g.outputs = [b]
    exported = to_onnx(g)
    onnx.checker.check_model(exported, full_check=True)
    assert [n.name for n in exported.graph.node] == ["block.act", "block.act_1"]
    back = import_onnx(exported)
    assert [n.provenance for n in back.nodes] == [Provenance("block.act"), rewritten]


def test_custom_domain_gets_an_opset_import() -> None:
    g = Graph("custom")
    x = g.add_input("x", TensorType(DType.F32, (2,)))
    g.outputs = [g.make_node("FusedThing", [x], domain="effarch", types=[x.type]).outputs[0]]
    exported = to_onnx(g)
    assert ("effarch", 1) in [(o.domain, o.version) for o in exported.opset_import]


def test_unused_optional_outputs_are_omitted() -> None:
    g = import_onnx(conv_mlp())
    x = g.inputs[0]
    drop = g.make_node("Dropout", [x], num_outputs=2, before=g.nodes[0])
    g.nodes[1].set_input(0, drop.outputs[0])
    node = to_onnx(g).graph.node[0]
    assert node.op_type == "Dropout" and list(node.output) == [drop.outputs[0].name]


def test_save_onnx_writes_a_loadable_file(tmp_path: Path) -> None:
    g = import_onnx(conv_mlp())
    path = save_onnx(g, tmp_path / "sub" / "m.onnx")
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.onnx"]
    inputs = random_inputs(g, shapes=SHAPES)
    _assert_same_outputs(run_onnxruntime(g, inputs), run_onnxruntime(path, inputs))


def test_save_onnx_uses_external_data_for_large_constants(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 100)  # the real one is 1.8 GB
    g = import_onnx(conv_mlp())
    path = save_onnx(g, tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    back = import_onnx(path)
    for name, v in g.constants.items():
        np.testing.assert_array_equal(back.constants[name].const, v.const)  # type: ignore[arg-type]


def test_failed_save_leaves_no_file(tmp_path: Path) -> None:
    g = import_onnx(conv_mlp())
    g.constants["w"].const = None
    g.constants["w"].const_digest = "sha256:abc"
    with pytest.raises(EffarchError, match="constant 'w' has no data"):
        save_onnx(g, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []
