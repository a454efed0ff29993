"""Weight-only quantized MatMul/Gemm (quantize-weights) run as one kernel that reads the 8-bit or
packed 4-bit weight and computes in float (lowering.weight_only, schedules.weight_only): never as a
dequantize kernel writing the float weight followed by a float matmul. Numbers are checked against
numpy's product of the dequantized weight."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax, tirx

from compiler.driver import optimize
from compiler.ir import DType, Graph, TensorType
from compiler.numerics.reference import run_onnxruntime
from targets.base import get_target
from targets.build import lowering_options
from targets.lowering.to_relax import Lowered, lower
from targets.lowering.weight_only import DenseWeight, pack_int4, pack_int8
from targets.schedules import ScheduleReport
from targets.schedules.pipeline import cpu_pipeline

X86 = get_target("x86")
K, N = 64, 48
# float32 sums of 64 products of |x| <= 4, |w| <= 1, in a different order than numpy's
TOL = 1e-4


def _t(shape: tuple[int, ...]) -> TensorType:
    return TensorType(DType.F32, shape)


def _model(rows: tuple[int, ...], gemm: bool = False) -> Graph:
    """x -> MatMul(W1) + b -> Gelu -> MatMul(W2), or the same with Gemm(transB=1, alpha) products."""
    rng = np.random.default_rng(0)
    g = Graph()
    x = g.add_input("x", _t((*rows, K)))
    w1 = rng.uniform(-1, 1, (N, K) if gemm else (K, N)).astype(np.float32)
    w2 = rng.uniform(-1, 1, (N, N)).astype(np.float32)
    b = g.add_constant("b", rng.uniform(-1, 1, N).astype(np.float32))
    if gemm:
        h = g.make_node("Gemm", [x, g.add_constant("w1", w1), b], {"transB": 1, "alpha": 0.5},
                        types=[_t((*rows, N))], output_names=["h"]).outputs[0]
    else:
        m = g.make_node("MatMul", [x, g.add_constant("w1", w1)], types=[_t((*rows, N))], output_names=["m"])
        h = g.make_node("Add", [m.outputs[0], b], types=[_t((*rows, N))], output_names=["h"]).outputs[0]
    a = g.make_node("Gelu", [h], types=[_t((*rows, N))], output_names=["a"]).outputs[0]
    y = g.make_node("MatMul", [a, g.add_constant("w2", w2)], types=[_t((*rows, N))], output_names=["y"])
    g.outputs = [y.outputs[0]]
    return g


def _quantized(g: Graph, bits: int, fuse: bool = True) -> Graph:
    scheme = "quantize-weights{bits=8}" if bits == 8 else "quantize-weights{bits=4,group=16}"
    out, _ = optimize(g, scheme + (",fuse-operators" if fuse else ""))
    return out


def _reference(g: Graph, x: np.ndarray) -> list[np.ndarray]:
    """onnxruntime running the quantized (unfused) graph."""
    return list(run_onnxruntime(g, {"x": x}).values())


def _build(g: Graph) -> tuple[relax.VirtualMachine, Lowered, ScheduleReport, tvm.IRModule]:
    target = X86.tvm_target(None)
    lowered = lower(g, **lowering_options(X86, None, 2))
    report = ScheduleReport()
    scheduled = cpu_pipeline(target, stop_after_schedules=True)(lowered.mod)
    ex = tvm.compile(lowered.mod, target=target, relax_pipeline=cpu_pipeline(target, report=report))
    return relax.VirtualMachine(ex, tvm.cpu()), lowered, report, scheduled


def _run(vm: relax.VirtualMachine, lowered: Lowered, x: np.ndarray) -> np.ndarray:
    out = vm["main"](tvm.runtime.tensor(x), *[tvm.runtime.tensor(p) for p in lowered.params])
    return np.asarray(out[0].numpy())


def _float_buffers(mod: tvm.IRModule) -> list[tuple[str, int]]:
    """(kernel, elements) of every float32 buffer a kernel takes or writes."""
    found = []
    for gv, f in mod.functions_items():
        if isinstance(f, tirx.PrimFunc):
            for param in f.params:
                buf = param.ty  # a tirx BufferType: the kernel's tensor argument
                if str(buf.dtype) == "float32":
                    found.append((gv.name_hint, int(np.prod([int(d) for d in buf.shape]))))
    return found


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("rows, gemm", [((2, 16), False), ((1, 1), False), ((24,), True), ((1,), True)])
def test_weight_only_product_is_one_kernel_on_small_weights(bits: int, rows: tuple[int, ...], gemm: bool) -> None:
    g = _model(rows, gemm)
    x = np.random.default_rng(1).uniform(-4, 4, (*rows, K)).astype(np.float32)
    expected = _reference(_quantized(g, bits, fuse=False), x)[0]
    vm, lowered, report, scheduled = _build(_quantized(g, bits))
    np.testing.assert_allclose(_run(vm, lowered, x), expected, rtol=TOL, atol=TOL * np.abs(expected).max())
    # Both products are weight-only kernels; nothing else reads or writes a float weight.
    products = [k for k, rule in report.rules.items() if rule == "weight-only"]
    assert len(products) == 2, report.rules
    weights = {K * N, N * N}
    assert not [(k, n) for k, n in _float_buffers(scheduled) if n in weights], report.rules
    # The weights travel packed: int8 one per byte, int4 two per byte (plus the float scales and bias).
    integer = sum(p.nbytes for p in lowered.params if p.dtype in (np.int8, np.uint8))
    assert integer == (K * N + N * N) * bits // 8, [(n, p.dtype, p.shape) for n, p in zip(
        lowered.param_names, lowered.params, strict=True)]
    assert not [p for p in lowered.params if p.dtype == np.float32 and p.size in weights]


def test_a_dequantized_weight_read_as_a_tensor_is_still_computed() -> None:
    """The same DequantizeLinear result is also a graph output: it is lowered as a tensor then."""
    g = _quantized(_model((4,), gemm=False), 8, fuse=False)
    dq = next(n for n in g.nodes if n.op == "DequantizeLinear" and n.outputs[0].uses[0][0].op == "MatMul")
    g.outputs = [*g.outputs, dq.outputs[0]]
    x = np.random.default_rng(2).uniform(-4, 4, (4, K)).astype(np.float32)
    vm, lowered, report, _ = _build(g)
    out = vm["main"](tvm.runtime.tensor(x), *[tvm.runtime.tensor(p) for p in lowered.params])
    expected = _reference(g, x)
    np.testing.assert_allclose(out[0].numpy(), expected[0], rtol=TOL, atol=TOL * np.abs(expected[0]).max())
    w = dq.inputs[0]
    assert w is not None and w.const is not None and dq.inputs[1] is not None and dq.inputs[1].const is not None
    np.testing.assert_array_equal(out[1].numpy(), w.const.astype(np.float32) * dq.inputs[1].const)
    assert "weight-only" in report.rules.values()  # the second product still reads its weight itself


@pytest.mark.parametrize("signed", [True, False])
def test_int4_panels_hold_two_columns_per_byte(signed: bool) -> None:
    rng = np.random.default_rng(3)
    q = rng.integers(-8, 8, (32, 24)) if signed else rng.integers(0, 16, (32, 24))
    w = DenseWeight(q, rng.uniform(0.5, 1, (2, 24)).astype(np.float32), 16, 4, signed)
    packed, scales = pack_int4(w, 16)  # 24 columns: two panels, the second padded with zeros
    assert packed.shape == (2, 32, 8) and packed.dtype == np.uint8 and scales.shape == (2, 2, 16)
    low, high = (packed & 15).astype(np.int64), (packed >> 4).astype(np.int64)
    nibbles = np.concatenate([low, high], axis=2) - (8 if signed else 0)  # [panel, K, 16]
    unpacked = nibbles.transpose(1, 0, 2).reshape(32, 32)
    np.testing.assert_array_equal(unpacked[:, :24], q)
    assert not scales[1, :, 8:].any()
    eight, _ = pack_int8(DenseWeight(q, w.scale, 16, 8, True), 16)
    np.testing.assert_array_equal(eight.transpose(1, 0, 2).reshape(32, 32)[:, :24], q)
