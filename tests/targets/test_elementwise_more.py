"""lowering.elementwise_more beyond what the ONNX backend cases check: sinh/cosh through the x86
schedules (vectorised exp, no libm), TopK on the full uint64 range and with ties, Einsum forms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from compiler.frontends.onnx import import_onnx
from targets.build import build
from targets.lowering import LoweringError
from targets.lowering.to_relax import lower
from targets.runtime import load_artifact
from tests.targets import run_lowered


def _model(op: str, inputs: list[np.ndarray], attrs: dict, consts: dict[str, np.ndarray] | None = None,
           outputs: int = 1, opset: int = 21) -> onnx.ModelProto:
    names = [f"x{i}" for i in range(len(inputs))]
    consts = consts or {}
    node = helper.make_node(op, names + list(consts), [f"y{i}" for i in range(outputs)], **attrs)
    infos = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
             for n, a in zip(names, inputs, strict=True)]
    graph = helper.make_graph(
        [node], op, infos,
        [helper.make_empty_tensor_value_info(f"y{i}") for i in range(outputs)],
        [numpy_helper.from_array(v, n) for n, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(op: str, inputs: list[np.ndarray], attrs: dict, consts: dict[str, np.ndarray] | None = None,
         outputs: int = 1) -> list[np.ndarray]:
    m = _model(op, inputs, attrs, consts, outputs)
    return run_lowered(lower(import_onnx(m)), {f"x{i}": a for i, a in enumerate(inputs)})


@pytest.mark.parametrize(("op", "exact"), [("Sinh", np.sinh), ("Cosh", np.cosh)])
def test_sinh_cosh_build_for_x86_and_keep_precision_near_zero(op: str, exact: object, tmp_path: Path) -> None:
    # Vectorised x86 kernels once failed to build with tirx.sinh/cosh ("unknown intrinsic").
    x = np.concatenate([np.linspace(-20, 20, 4001), [1e-8, -1e-6, 0.0, 0.4999, 0.5, 0.5001]]).astype(np.float32)
    path = build(import_onnx(_model(op, [x], {})), tmp_path / "m.effarch").path
    got = load_artifact(path, cache_dir=tmp_path / "cache").run({"x0": x})["y0"]
    want = exact(x.astype(np.float64))  # type: ignore[operator]
    np.testing.assert_allclose(got, want, rtol=4e-7, atol=0)  # relative: sinh(1e-8) is 1e-8, not 0


def test_topk_uint64_orders_the_whole_range() -> None:
    # Through int64 with the top bit flipped: 2**63 and above must not sort as negatives.
    u = np.array([0, 2**63, 2**64 - 1, 5, 2**63 - 1], np.uint64)
    values, indices = _run("TopK", [u], {}, {"k": np.array([5], np.int64)}, outputs=2)
    assert values.tolist() == [2**64 - 1, 2**63, 2**63 - 1, 5, 0] and indices.tolist() == [2, 1, 4, 3, 0]
    values, indices = _run("TopK", [u], {"largest": 0}, {"k": np.array([2], np.int64)}, outputs=2)
    assert values.tolist() == [0, 5] and indices.tolist() == [0, 3]


@pytest.mark.parametrize("largest", [1, 0])
def test_topk_ties_take_the_lower_index_first(largest: int) -> None:
    x = np.random.default_rng(0).integers(0, 4, (3, 500)).astype(np.float32)
    values, indices = _run("TopK", [x], {"largest": largest, "axis": 1}, {"k": np.array([200], np.int64)}, outputs=2)
    order = np.argsort(-x if largest else x, axis=1, kind="stable")[:, :200]
    np.testing.assert_array_equal(indices, order)
    np.testing.assert_array_equal(values, np.take_along_axis(x, order, 1))


@pytest.mark.parametrize(("equation", "shapes"), [
    ("ii->i", [(3, 3)]), ("ij,jk", [(2, 3), (3, 4)]), ("...ij,...jk->...ik", [(2, 2, 3), (2, 3, 4)]),
    ("i,j->ij", [(3,), (4,)]), ("bii->bi", [(2, 3, 3)]), ("ij->", [(3, 4)]),
])
def test_einsum_forms(equation: str, shapes: list[tuple[int, ...]]) -> None:
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    (got,) = _run("Einsum", xs, {"equation": equation})
    np.testing.assert_allclose(got, np.einsum(equation, *xs), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("op", "opset"), [("CumSum", 21), ("CumProd", 26)])
def test_cumulative_axis_of_two_values_is_refused(op: str, opset: int) -> None:
    # One helper lowers both; CumProd once read the first value and ignored the rest.
    m = _model(op, [np.ones((2, 3), np.float32)], {}, {"axis": np.array([0, 1], np.int64)}, opset=opset)
    with pytest.raises(LoweringError, match=rf"\({op}\): axis must hold one value, got \[0, 1\]"):
        lower(import_onnx(m))
