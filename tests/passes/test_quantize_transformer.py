"""quantize-dynamic and quantize-weights (the transformer schemes) through the shared harness."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.ir import DType, Graph, TensorType
from compiler.pass_manager import PassContext
from passes.quantize_dynamic import QuantizeDynamic
from passes.quantize_weights import QuantizeWeights
from tests.passes.harness import check_not_fired, check_pass


def _t(shape: tuple[int, ...]) -> TensorType:
    return TensorType(DType.F32, shape)


def two_projections(k: int = 64) -> Graph:
    """x[2,8,K] feeds two MatMuls (a shared activation) and one Gemm-like MatMul chain."""
    rng = np.random.default_rng(0)
    g = Graph()
    x = g.add_input("x", _t((2, 8, k)))
    a = g.make_node("MatMul", [x, g.add_constant("wa", rng.normal(0, 0.2, (k, 32)).astype(np.float32))],
                    types=[_t((2, 8, 32))], output_names=["a"])
    b = g.make_node("MatMul", [x, g.add_constant("wb", rng.normal(0, 0.2, (k, 32)).astype(np.float32))],
                    types=[_t((2, 8, 32))], output_names=["b"])
    s = g.make_node("Add", [a.outputs[0], b.outputs[0]], types=[_t((2, 8, 32))], output_names=["y"])
    g.outputs = [s.outputs[0]]
    return g


def _tol(fraction: float) -> tuple[float, float]:
    return fraction, fraction


def test_dynamic_quantizes_each_activation_once_and_keeps_the_numbers() -> None:
    def shape(after: Graph) -> bool:
        counts = after.op_counts()
        assert counts.get("DynamicQuantizeLinear") == 1 and counts.get("MatMulInteger") == 2, counts
        assert "MatMul" not in counts
        return True

    pass_ = QuantizeDynamic(rows=False)
    check_pass(pass_, two_projections(), expect=shape, tol=(0.0, 0.2))  # |y| <= 7.5: 3%


def test_dynamic_per_row_scales_each_row_once_with_one_zero_point() -> None:
    def shape(after: Graph) -> bool:
        counts = after.op_counts()
        assert counts.get("ReduceMax") == 1 and counts.get("MatMulInteger") == 2, counts
        assert "DynamicQuantizeLinear" not in counts and "MatMul" not in counts
        for n in after.nodes:
            if n.op == "MatMulInteger":
                zero = n.inputs[2].const if n.inputs[2] is not None else None
                assert zero is not None and zero.dtype == np.uint8 and int(zero) == 128  # a scalar: packed kernels
        return True

    check_pass(QuantizeDynamic(), two_projections(), expect=shape, tol=(0.0, 0.2))


def test_dynamic_per_row_follows_a_loud_row_better_than_per_tensor() -> None:
    """One token 30x louder than the rest: per tensor its range swamps the others' steps."""
    g = two_projections()
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (2, 8, 64)).astype(np.float32)
    x[0, 3] *= 30
    ref = g.clone()
    want = _run(ref, x)[0, :3]  # the quiet rows beside the loud one
    errors = {}
    for rows in (False, True):
        out = QuantizeDynamic(rows=rows).run(g.clone(), PassContext()).graph
        errors[rows] = float(np.abs(_run(out, x)[0, :3] - want).max())
    assert errors[True] < errors[False] / 4, errors


def _run(g: Graph, x: np.ndarray) -> np.ndarray:
    from compiler.numerics.reference import run_onnxruntime

    return np.asarray(next(iter(run_onnxruntime(g, {"x": x}).values())))


def test_dynamic_leaves_activation_products_alone_and_says_why() -> None:
    g = Graph()
    a, b = g.add_input("a", _t((2, 4))), g.add_input("b", _t((4, 3)))
    g.outputs = [g.make_node("MatMul", [a, b], types=[_t((2, 3))], output_names=["y"]).outputs[0]]
    check_not_fired(QuantizeDynamic(), g, "weight is not a constant")


@pytest.mark.parametrize("bits,group", [(8, 32), (4, 32), (4, 16)])
def test_weight_only_stores_small_weights_and_keeps_the_numbers(bits: int, group: int) -> None:
    def small(after: Graph) -> bool:
        dqs = [n for n in after.nodes if n.op == "DequantizeLinear"]
        assert len(dqs) == 2
        w = dqs[0].inputs[0]
        assert w is not None and w.type is not None
        assert w.type.dtype is (DType.I8 if bits == 8 else DType.I4)
        scales = dqs[0].inputs[1]
        assert scales is not None and scales.const is not None
        assert scales.const.shape == ((32,) if bits == 8 else (64 // group, 32))
        return True

    check_pass(QuantizeWeights(bits=bits, group=group), two_projections(), expect=small,
               tol=(0.0, 0.1 if bits == 8 else 1.2))  # |y| <= 7.5; int4 steps are 1/7 of a block's range


def test_int4_groups_must_divide_the_reduction() -> None:
    check_not_fired(QuantizeWeights(bits=4, group=48), two_projections(k=64), "not a multiple of the group size 48")


def test_int4_error_shrinks_with_smaller_groups() -> None:
    from passes.quantize_weights import quantize_int4

    rng = np.random.default_rng(1)
    w = rng.standard_normal((128, 16)).astype(np.float32) * rng.uniform(0.1, 4.0, (128, 1)).astype(np.float32)
    errors = []
    for group in (128, 32, 8):
        q, s = quantize_int4(w, 0, group)
        back = q.astype(np.float32).reshape(128 // group, group, 16) * s[:, None, :]
        errors.append(float(np.abs(back.reshape(128, 16) - w).mean()))
    assert errors[0] > errors[1] > errors[2], errors
