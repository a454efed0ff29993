"""quantize-static, integer-ops and the calibration methods: through the shared harness, with
calibration data drawn like the harness's random inputs, plus the accuracy-budget search."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from compiler.compression import CompressionData
from compiler.compression.budget import keep_float_within_budget
from compiler.compression.calibrate import activation_range, collect, uint8_params
from compiler.errors import EffarchError
from compiler.ir import DType, Graph, TensorType
from compiler.numerics.accuracy import Score
from compiler.numerics.datasets import Dataset
from compiler.numerics.reference import run_onnxruntime
from compiler.pass_manager import PassContext
from passes.integer_ops import IntegerOps
from passes.quantize import REDUCED_LEVELS, QuantizeStatic, pair_safe_levels, quantize_for_products, quantize_weight
from tests.passes.harness import check_not_fired, check_pass


def _t(shape: tuple[int, ...], dtype: DType = DType.F32) -> TensorType:
    return TensorType(dtype, shape)


def conv_relu_gemm(seed: int = 0, *, transB: int = 1) -> Graph:
    """x[4,3,6,6] -> Conv 3x3 (8) -> Relu -> Reshape -> Gemm (5): weights of several magnitudes."""
    rng = np.random.default_rng(seed)
    g = Graph()
    x = g.add_input("x", _t((4, 3, 6, 6)))
    w = (rng.normal(0, 1, (8, 3, 3, 3)) * rng.uniform(0.1, 2.0, (8, 1, 1, 1))).astype(np.float32)
    conv = g.make_node("Conv", [x, g.add_constant("w", w), g.add_constant("b", rng.normal(0, 1, 8).astype(np.float32))],
                       {"pads": [1, 1, 1, 1], "kernel_shape": [3, 3]}, types=[_t((4, 8, 6, 6))], output_names=["c"])
    relu = g.make_node("Relu", [conv.outputs[0]], types=[_t((4, 8, 6, 6))], output_names=["r"])
    flat = g.make_node("Reshape", [relu.outputs[0], g.add_constant("shape", np.array([4, 288]))],
                       types=[_t((4, 288))], output_names=["f"])
    b = rng.normal(0, 0.1, (5, 288) if transB else (288, 5)).astype(np.float32)
    gemm = g.make_node("Gemm", [flat.outputs[0], g.add_constant("wg", b), g.add_constant("bg", np.ones(5, np.float32))],
                       {"transB": transB, "alpha": 0.5}, types=[_t((4, 5))], output_names=["y"])
    g.outputs = [gemm.outputs[0]]
    return g


def _calibration(g: Graph, n: int = 64, seed: int = 1) -> CompressionData:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *g.inputs[0].type.static_shape()[1:])).astype(np.float32)  # type: ignore[union-attr]
    return CompressionData(calibration=Dataset({"x": x}, None, "test"))


def _tol(g: Graph, fraction: float = 0.05) -> tuple[float, float]:
    """Absolute error allowed: ``fraction`` of the largest output on the harness's inputs."""
    from compiler.numerics.reference import random_inputs

    y = next(iter(run_onnxruntime(g, random_inputs(g, 0)).values()))
    return 0.0, fraction * float(np.max(np.abs(y)))


@pytest.mark.parametrize("transB", [0, 1])
def test_static_quantization_writes_qdq_and_keeps_the_numbers(transB: int) -> None:
    g = conv_relu_gemm(transB=transB)
    ctx = PassContext(data=_calibration(g))

    def qdq(after: Graph) -> bool:
        counts = after.op_counts()
        assert counts["QuantizeLinear"] == 2 and counts["DequantizeLinear"] == 4, counts  # 2 activations, 2 weights
        weights = [v for v in after.constants.values() if v.const is not None and v.const.dtype == np.int8
                   and v.const.ndim > 1]
        assert len(weights) == 2
        return True

    result = check_pass(QuantizeStatic(), g, expect=qdq, ctx=ctx, tol=_tol(g))
    assert sum(n.fired for n in result.notes) == 2


def test_weights_are_symmetric_per_output_channel() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (6, 4, 3, 3)).astype(np.float32) * np.arange(1, 7, dtype=np.float32).reshape(6, 1, 1, 1)
    q, scales = quantize_weight(w, 0)
    assert q.dtype == np.int8 and scales.shape == (6,)
    assert np.all(np.abs(q).reshape(6, -1).max(axis=1) == 127)  # every channel uses its full range
    error = np.abs(q.astype(np.float32) * scales.reshape(6, 1, 1, 1) - w)
    assert np.all(error <= scales.reshape(6, 1, 1, 1) / 2 + 1e-7)
    assert np.all(np.diff(scales) > 0)  # channel c's scale follows its magnitude


@pytest.mark.parametrize("axis", [1, 0])
def test_matrix_weights_take_as_many_levels_as_int16_pairs_allow(axis: int) -> None:
    rng = np.random.default_rng(5)
    w = rng.normal(0, 1, (129, 48)).astype(np.float32)  # [K, N], odd K: the last row pairs with 0
    w[:, 3] = 0.0  # an all-zero column
    w_in = w if axis == 1 else np.ascontiguousarray(w.T)
    q, scales = quantize_for_products(w_in, axis, REDUCED_LEVELS)
    q = q if axis == 1 else q.T
    assert q.dtype == np.int8 and scales.shape == (48,)
    pairs = np.concatenate([q, np.zeros((1, 48), np.int8)]).astype(np.int64).reshape(-1, 2, 48)
    assert np.clip(pairs, 0, None).sum(1).max() <= 128 and np.clip(-pairs, 0, None).sum(1).max() <= 128
    levels = pair_safe_levels(w)
    assert levels.min() >= REDUCED_LEVELS and levels.mean() > 90  # most columns well past 7 bits
    seven_bit = quantize_weight(w, 1, REDUCED_LEVELS)
    err = np.abs(q * scales - w).mean()
    assert err < 0.75 * np.abs(seven_bit[0] * seven_bit[1] - w).mean()
    assert np.all(np.abs(q * scales - w) <= scales / 2 + 1e-6)  # rounding only, never a clip
    assert not np.any(q[:, 3])


def test_bias_correction_removes_the_mean_error_of_rounded_weights() -> None:
    g = conv_relu_gemm(seed=3)
    data = _calibration(g, n=128)
    errors = []
    for correct in (False, True):
        q = g.clone()
        QuantizeStatic(bias_correction=correct).run(q, PassContext(data=data))
        x = data.calibration.inputs["x"]  # type: ignore[union-attr]
        # the mean over all the samples it was measured on: what the correction targets
        diffs = [run_onnxruntime(q, {"x": x[i:i + 4]})["y"] - run_onnxruntime(g, {"x": x[i:i + 4]})["y"]
                 for i in range(0, len(x), 4)]
        errors.append(float(np.abs(np.mean(np.concatenate(diffs), axis=0)).mean()))
    assert errors[1] < errors[0], errors


def relu_matmul_add(seed: int = 4) -> Graph:
    """x[4,64] -> Relu -> MatMul (24) -> Add(bias): a Linear as exporters write it, bias apart."""
    rng = np.random.default_rng(seed)
    g = Graph()
    x = g.add_input("x", _t((4, 64)))
    r = g.make_node("Relu", [x], types=[_t((4, 64))], output_names=["r"])
    mm = g.make_node("MatMul", [r.outputs[0], g.add_constant("w", rng.normal(0, 1, (64, 24)).astype(np.float32))],
                     types=[_t((4, 24))], output_names=["m"])
    add = g.make_node("Add", [g.add_constant("b", rng.normal(0, 1, 24).astype(np.float32)), mm.outputs[0]],
                      types=[_t((4, 24))], output_names=["y"])
    g.outputs = [add.outputs[0]]
    return g


def test_bias_correction_reaches_the_add_after_a_matmul() -> None:
    g = relu_matmul_add()
    data = _calibration(g, n=256)
    x = data.calibration.inputs["x"]  # type: ignore[union-attr]
    errors, biases = [], []
    for correct in (False, True):
        q = g.clone()
        QuantizeStatic(bias_correction=correct).run(q, PassContext(data=data))
        diffs = [run_onnxruntime(q, {"x": x[i:i + 4]})["y"] - run_onnxruntime(g, {"x": x[i:i + 4]})["y"]
                 for i in range(0, len(x), 4)]
        errors.append(float(np.abs(np.mean(np.concatenate(diffs), axis=0)).mean()))
        add = next(n for n in q.nodes if n.op == "Add")
        biases.append(add.inputs[0].const if add.inputs[0] is not None else None)
    assert errors[1] < errors[0] / 2, errors
    assert biases[0] is not None and biases[1] is not None and not np.array_equal(biases[0], biases[1])


def test_without_calibration_data_it_says_what_to_pass() -> None:
    with pytest.raises(EffarchError, match="--calibration"):
        QuantizeStatic().run(conv_relu_gemm(), PassContext())


def test_a_product_of_two_activations_is_not_quantized_and_says_why() -> None:
    g = Graph()
    a, b = g.add_input("a", _t((2, 4))), g.add_input("b", _t((4, 3)))
    mm = g.make_node("MatMul", [a, b], types=[_t((2, 3))], output_names=["y"])
    g.outputs = [mm.outputs[0]]
    check_not_fired(QuantizeStatic(), g, "weight is not a constant")


def test_keep_float_option_leaves_named_layers_in_float() -> None:
    g = conv_relu_gemm()
    out = g.clone()
    QuantizeStatic(keep_float=("y",)).run(out, PassContext(data=_calibration(g)))
    assert out.op_counts()["QuantizeLinear"] == 1 and out.op_counts()["Gemm"] == 1
    gemm = next(n for n in out.nodes if n.op == "Gemm")
    assert gemm.inputs[1] is not None and gemm.inputs[1].const is not None  # float weight, untouched


# ---- integer-ops ----------------------------------------------------------------------------------
def _quantized(transB: int = 1) -> Graph:
    g = conv_relu_gemm(transB=transB)
    QuantizeStatic().run(g, PassContext(data=_calibration(g)))
    return g


@pytest.mark.parametrize("transB", [0, 1])
def test_integer_ops_compute_the_same_numbers_on_integers(transB: int) -> None:
    g = _quantized(transB)

    def integer(after: Graph) -> bool:
        counts = after.op_counts()
        assert counts.get("ConvInteger") == 1 and counts.get("MatMulInteger") == 1, counts
        assert "Conv" not in counts and "Gemm" not in counts, counts
        return True

    check_pass(IntegerOps(), g, expect=integer, tol=(1e-5, 1e-4))  # the same products, in i32


def test_integer_ops_refuse_an_asymmetric_weight() -> None:
    g = _quantized()
    dq = next(n for n in g.nodes if n.op == "DequantizeLinear" and n.inputs[0] is not None
              and n.inputs[0].name == "w_i8")
    zp = g.add_constant("w_zp_odd", np.full(8, 3, np.int8))
    dq.set_input(2, zp)
    result = IntegerOps().run(g.clone(), PassContext())
    assert any("zero point is not 0" in n.reason for n in result.notes if not n.fired)


# ---- calibration methods --------------------------------------------------------------------------
def _heavy_tailed() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.concatenate([np.maximum(rng.standard_normal(100_000), 0), [60.0]]).astype(np.float32)


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_histogram_methods_clip_outliers_that_minmax_keeps(method: str) -> None:
    a = _heavy_tailed()
    stats = collect(lambda: [{"a": a[:50_001]}, {"a": a[50_001:]}], ["a"], method)["a"]
    lo, hi = activation_range(stats, method)
    assert (stats.lo, stats.hi) == (0.0, 60.0)
    assert lo == 0.0 and 2.0 < hi < 10.0, hi  # most of N(0,1)+ kept, the one outlier clipped
    assert activation_range(stats, "minmax") == (0.0, 60.0)


def test_uint8_parameters_make_zero_exact() -> None:
    scale, zp = uint8_params(-1.0, 3.0)
    assert zp == round(1.0 / scale) and abs(-zp * scale + 1.0) < scale
    assert uint8_params(0.0, 2.55) == (pytest.approx(0.01), 0)


# ---- the accuracy budget --------------------------------------------------------------------------
@dataclass(frozen=True)
class _Layer:
    index: int
    label: str


class _FakeData:
    """Scores where quantizing layer i costs ``costs[i]`` points, additively."""

    def __init__(self, costs: list[float], max_drop: float) -> None:
        self.costs, self.max_drop = costs, max_drop

    def baseline(self) -> Score:
        return Score("top-1", 90.0, 100)

    def score(self, g: Graph) -> Score:
        chosen = [int(i) for i in g.metadata["chosen"].split(",") if i]
        return Score("top-1", 90.0 - sum(self.costs[i] for i in chosen), 100)


def _trial(chosen: list[_Layer]) -> Graph:
    g = Graph()
    g.metadata["chosen"] = ",".join(str(x.index) for x in chosen)
    return g


def test_budget_keeps_the_fewest_most_sensitive_layers_in_float() -> None:
    layers = [_Layer(i, f"L{i}") for i in range(4)]
    chosen, notes = keep_float_within_budget(Graph(), layers, _trial, _FakeData([0.2, 3.0, 0.1, 1.5], 1.0))
    assert [x.index for x in chosen] == [0, 2]  # 1 (3.0) and 3 (1.5) back in float: 0.3 points lost
    kept = [n for n in notes if n.node]
    assert [n.node for n in kept] == ["L1", "L3"] and "costs 3.00 points" in kept[0].reason


def test_budget_met_by_the_fully_quantized_model_keeps_nothing_in_float() -> None:
    layers = [_Layer(i, f"L{i}") for i in range(3)]
    chosen, notes = keep_float_within_budget(Graph(), layers, _trial, _FakeData([0.1, 0.1, 0.1], 0.5))
    assert chosen == layers and len(notes) == 1 and "drop 0.30" in notes[0].reason


def test_budget_on_real_scores_keeps_the_layer_whose_input_range_is_ruined_in_float() -> None:
    """One calibration value of 1000 in input channel 0 makes minmax give the Conv's input a step of
    ~8: that layer costs most of the cosine, and a 0.5-point budget must keep exactly it in float.
    The Conv ignores channel 0 (zero weights), so the outlier does not reach the Gemm's input."""
    g = conv_relu_gemm(seed=5)
    w = g.constants["w"]
    assert w.const is not None
    ignored = w.const.copy()
    ignored[:, 0] = 0.0
    w.const = ignored
    rng = np.random.default_rng(2)
    calib = rng.standard_normal((32, 3, 6, 6)).astype(np.float32)
    calib[0, 0, 0, 0] = 1000.0
    test = rng.standard_normal((16, 3, 6, 6)).astype(np.float32)
    data = CompressionData(Dataset({"x": calib}, None, "calib"), Dataset({"x": test}, None, "test"),
                           max_drop=0.5, reference=g)
    result = QuantizeStatic().run(g.clone(), PassContext(data=data))
    kept = [n for n in result.notes if n.rule == "budget" and n.node]
    assert [n.node for n in kept] == ["Conv %c"], [str(n) for n in result.notes]
    assert result.graph.op_counts()["QuantizeLinear"] == 1  # only the Gemm's input
    assert data.score(result.graph).drop_from(data.baseline()) <= 0.5


def test_an_activation_with_one_loud_row_is_quantized_per_row_at_run_time() -> None:
    """x[4,16,64]: row 0 of every sample is 40x louder; per-tensor static scales would waste 256
    levels on it, so the MatMul reading it gets run-time per-row scales and its quiet rows stay exact."""
    rng = np.random.default_rng(7)
    g = Graph()
    x = g.add_input("x", _t((4, 16, 64)))
    mm = g.make_node("MatMul", [x, g.add_constant("w", rng.normal(0, 1, (64, 8)).astype(np.float32))],
                     types=[_t((4, 16, 8))], output_names=["y"])
    g.outputs = [mm.outputs[0]]
    calib = rng.normal(0, 1, (32, 16, 64)).astype(np.float32)
    calib[:, 0] *= 40
    data = CompressionData(calibration=Dataset({"x": calib}, None, "test"))
    feeds = {"x": calib[:4]}
    errors = {}
    for ratio in (0.0, 5.0):
        q = g.clone()
        result = QuantizeStatic(row_ratio=ratio).run(q, PassContext(data=data))
        per_row = "ReduceMax" in q.op_counts()
        assert per_row == (ratio > 0), q.op_counts()
        assert any("per-row" in n.reason for n in result.notes) == per_row
        errors[ratio] = float(np.abs(run_onnxruntime(q, feeds)["y"] - run_onnxruntime(g, feeds)["y"])[:, 1:].max())
    assert errors[5.0] < errors[0.0] / 4, errors


def test_row_ratios_compare_the_calibrated_range_with_the_typical_row() -> None:
    from passes.quantize_rows import per_row, row_ratios

    quiet = np.ones((2, 8, 4), np.float32)
    loud = quiet.copy()
    loud[1, 3] = -12.0
    ratios = row_ratios(iter([{"a": quiet, "b": loud}, {"a": quiet, "b": quiet}]), ["a", "b"])
    assert ratios == {"a": 1.0, "b": 12.0}
    assert per_row(ratios, 5.0) == {"b"} and per_row(ratios, 0.0) == set()
