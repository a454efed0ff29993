"""The reference: seeded random inputs and onnxruntime runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from compiler.errors import EffarchError
from compiler.frontends.onnx import import_onnx
from compiler.ir import DType, Graph, TensorType
from compiler.numerics.reference import random_inputs, run_onnxruntime
from tests.frontends.models import conv_mlp


def _graph_with_inputs() -> Graph:
    g = Graph("inputs")
    g.add_input("f", TensorType(DType.F16, (3, 4)))
    g.add_input("i", TensorType(DType.I64, (50,)))
    g.add_input("b", TensorType(DType.BOOL, (50,)))
    return g


def test_random_inputs_are_seeded_and_typed() -> None:
    g = _graph_with_inputs()
    a, b, c = random_inputs(g, seed=7), random_inputs(g, seed=7), random_inputs(g, seed=8)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["f"], c["f"])
    assert a["f"].dtype == np.float16 and a["f"].shape == (3, 4)
    assert a["i"].dtype == np.int64 and set(np.unique(a["i"])) == {0, 1, 2}
    assert a["b"].dtype == np.bool_ and set(np.unique(a["b"])) == {False, True}


def test_symbolic_dims_need_a_shape() -> None:
    g = import_onnx(conv_mlp())
    with pytest.raises(EffarchError, match=r"input 'x'.*--shape x=1x3x8x8"):
        random_inputs(g)
    assert random_inputs(g, shapes={"x": (2, 3, 8, 8)})["x"].shape == (2, 3, 8, 8)


def test_run_onnxruntime_accepts_graph_model_and_path(tmp_path: Path) -> None:
    model = conv_mlp()
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path))
    g = import_onnx(model)
    inputs = random_inputs(g, shapes={"x": (1, 3, 8, 8)})
    results = [run_onnxruntime(src, inputs)["y"] for src in (g, model, path, str(path))]
    assert results[0].shape == (1, 5)
    np.testing.assert_allclose(results[0].sum(axis=1), [1.0], rtol=1e-5)  # softmax rows sum to one
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_run_onnxruntime_reports_missing_inputs_and_files(tmp_path: Path) -> None:
    with pytest.raises(EffarchError, match=r"missing inputs \['x'\]"):
        run_onnxruntime(conv_mlp(), {})
    with pytest.raises(EffarchError, match="not found"):
        run_onnxruntime(tmp_path / "none.onnx", {})
