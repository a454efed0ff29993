"""The kernels of dynamic int8 (``--quantize int8-dynamic``) beside the integer product: the row
scale (``max |x|`` per row), the quantizer (``round(x / s) + 128`` to u8) and a GELU epilogue in the
product's write-back. Each must be vectorised (TVM 0.27 scalarises a whole loop for one ``erf`` or
``nearbyint`` call) and give the same numbers as the definition."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tvm
from tvm import te, tirx

from targets.base import get_target
from targets.lowering.packed_int8 import dense_int8, pack, reduction_last_dense
from targets.schedules import machine_of, schedule_kernel
from targets.schedules.dot import AVX2_MADDUBS
from targets.schedules.int8 import vector_math

TARGET = get_target("x86").tvm_target("znver3")  # AVX2, no VNNI: vpmaddubsw


def _scheduled(tensors: list[te.Tensor]) -> tuple[tirx.PrimFunc, str]:
    func = te.create_prim_func(tensors)
    with TARGET:
        return schedule_kernel(func, TARGET, machine_of(TARGET))


def _run(func: tirx.PrimFunc, *arrays: np.ndarray) -> np.ndarray:
    lib = tvm.tirx.build(func.with_attr("global_symbol", "kernel"), target=TARGET)
    args = [tvm.runtime.tensor(a) for a in arrays]
    lib["kernel"](*args)
    return args[-1].numpy()


def _asm(func: tirx.PrimFunc) -> str:
    return str(tvm.tirx.build(func.with_attr("global_symbol", "kernel"), target=TARGET).inspect_source("asm"))


def test_quantizer_rounds_half_to_even_in_vectors() -> None:
    rows, n = 8, 384
    x = te.placeholder((1, rows, n), "float32", "x")
    s = te.placeholder((1, rows, 1), "float32", "s")
    q = te.compute(x.shape, lambda b, r, c: tirx.nearbyint(x[b, r, c] / s[b, r, 0]) + tirx.const(128.0, "float32"))
    out = te.compute(x.shape, lambda *i: q(*i).astype("uint8"))
    func, rule = _scheduled([x, s, out])
    assert rule == "quantize"
    rng = np.random.default_rng(0)
    # powers of two: x / s is exact, so every second value is an exact tie k + 0.5
    scale = (2.0 ** -rng.integers(3, 8, (1, rows, 1))).astype(np.float32)
    levels = rng.integers(-126, 126, (1, rows, n)) + np.where(np.arange(n) % 2, 0.5, 0.3)
    xv = (levels * scale).astype(np.float32)
    want = (np.round(xv / scale) + 128).astype(np.uint8)  # numpy rounds half to even, as ONNX Round
    assert np.array_equal(_run(func, xv, scale, np.zeros(xv.shape, np.uint8)), want)
    assert "vroundps" in _asm(func)  # one vector instruction, not a scalar loop


def test_row_peak_is_exact_and_vectorised() -> None:
    x = te.placeholder((1, 32, 1536), "float32", "x")
    k = te.reduce_axis((0, 1536), "k")
    a = te.compute(x.shape, lambda *i: tirx.abs(x(*i)), name="abs")
    peak = te.compute((1, 32, 1), lambda b, r, _: te.max(a[b, r, k], axis=k), name="peak")
    func, rule = _scheduled([x, peak])
    assert rule == "row-peak"
    xv = np.random.default_rng(1).standard_normal((1, 32, 1536)).astype(np.float32)
    assert np.array_equal(_run(func, xv, np.zeros((1, 32, 1), np.float32)), np.abs(xv).max(-1, keepdims=True))
    assert "vmaxps" in _asm(func)


def test_row_peak_leaves_sums_alone() -> None:
    """Partial sums would round differently from the serial loop; only a max is taken."""
    x = te.placeholder((1, 32, 1536), "float32", "x")
    k = te.reduce_axis((0, 1536), "k")
    total = te.compute((1, 32, 1), lambda b, r, _: te.sum(x[b, r, k], axis=k), name="total")
    _, rule = _scheduled([x, total])
    assert rule != "row-peak"


def _gelu_product(rows: int, k: int, n: int) -> tuple[list[te.Tensor], np.ndarray]:
    """u8 [1, rows, k] x i8 [k, n] (zero point 128), dequantized per column and row, bias, GELU."""
    rng = np.random.default_rng(2)
    w = rng.integers(-40, 41, (k, n)).astype(np.int32)
    packed = pack(AVX2_MADDUBS, reduction_last_dense(w, AVX2_MADDUBS.depth))
    a = te.placeholder((1, rows, k), "uint8", "a")
    wp = te.placeholder(packed.packed.shape, "int8", "wp")
    colsum = te.placeholder((n,), "int32", "colsum")
    za = te.placeholder((), "uint8", "za")
    ws = te.placeholder((n,), "float32", "ws")
    xs = te.placeholder((1, rows, 1), "float32", "xs")
    bias = te.placeholder((n,), "float32", "bias")
    acc = dense_int8(a, wp, colsum, za, shift=0, act_dtype="uint8", kernel=AVX2_MADDUBS.name)
    y = te.compute(acc.shape, lambda b, r, c: acc[b, r, c].astype("float32") * ws[c] * xs[b, r, 0] + bias[c])
    g = te.compute(y.shape, lambda *i: y(*i) * (tirx.const(0.5, "float32") + tirx.erf(
        y(*i) * tirx.const(math.sqrt(0.5), "float32")) * tirx.const(0.5, "float32")))
    return [a, wp, colsum, za, ws, xs, bias, g], w


def test_gelu_epilogue_is_vectorised_and_accurate() -> None:
    rows, k, n = 32, 64, 256
    tensors, w = _gelu_product(rows, k, n)
    func, rule = _scheduled(tensors)
    assert rule == "int8-contraction"
    assert "T.erf" not in func.script()  # erf as vector arithmetic, not a call that scalarises the loop
    rng = np.random.default_rng(3)
    av = rng.integers(0, 256, (1, rows, k)).astype(np.uint8)
    ws = rng.uniform(0.001, 0.01, n).astype(np.float32)
    xs = rng.uniform(0.01, 0.05, (1, rows, 1)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    packed = pack(AVX2_MADDUBS, reduction_last_dense(w, AVX2_MADDUBS.depth))
    got = _run(func, av, packed.packed, packed.colsum, np.array(128, np.uint8), ws, xs, bias,
               np.zeros((1, rows, n), np.float32))
    y = ((av.astype(np.int64) - 128) @ w).astype(np.float64) * ws * xs + bias
    want = y * 0.5 * (1 + np.vectorize(math.erf)(y / math.sqrt(2)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # float32 epilogue, erf to 3e-7


def test_one_accumulator_allocation_per_column_panel() -> None:
    """TVM 0.27 takes each local buffer from the workspace pool (a call pair): the tile's int32
    accumulators are one region per parallel task, all rows of its column panel, not one per
    row tile."""
    rows = 32
    tensors, _ = _gelu_product(rows, 64, 256)
    func, _ = _scheduled(tensors)
    mod = tvm.tirx.transform.BindTarget(TARGET.with_host(TARGET))(tvm.IRModule({"main": func}))
    pipeline, host_passes, _ = tvm.tirx.get_default_tir_pipeline(TARGET)
    text = host_passes()(pipeline(mod)).script()
    allocs = [line for line in text.splitlines() if "TVMBackendAllocWorkspace" in line]
    assert len(allocs) == 1, allocs
    nbytes = int(allocs[0].split("T.uint64(")[1].split(")")[0])
    assert nbytes % (rows * AVX2_MADDUBS.lanes * 4) == 0, nbytes


def test_vector_math_keeps_other_dtypes() -> None:
    """float64 erf keeps libm's precision: only float32 calls are rewritten."""
    x = te.placeholder((8,), "float64", "x")
    y = te.compute((8,), lambda i: tirx.erf(x[i]))
    func = te.create_prim_func([x, y])
    assert "T.erf" in vector_math(func).script()


@pytest.mark.parametrize("op", [tirx.erf, tirx.nearbyint])
def test_vector_math_rewrites_float32(op: object) -> None:
    x = te.placeholder((8,), "float32", "x")
    y = te.compute((8,), lambda i: op(x[i]))  # type: ignore[operator]
    text = vector_math(te.create_prim_func([x, y])).script()
    assert "T.erf" not in text and "T.nearbyint" not in text
