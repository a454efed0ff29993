"""Integer kernels the quantized zoo models need beyond plain convolutions: depthwise ConvInteger
(MobileNetV2) and a FusedMatMul group whose MatMulInteger takes its activation zero point at run
time (MiniLM with ``--quantize int8-dynamic``). Both reduce in int32, with no float arithmetic in the
reduction, and match numpy exactly (depthwise) or within float rounding of the scales (the group)."""

from __future__ import annotations

import numpy as np
import pytest
from tvm import tirx

from compiler.ir import parse_graph
from targets.build import lowering_options
from targets.lowering.to_relax import lower
from targets.schedules.common import _row_lanes
from targets.schedules.pipeline import cpu_pipeline
from tests.targets.test_int8_kernels import X86, _conv_reference, _graph, _run

DEPTHWISE = """graph main(%x: {a}[1,24,9,9], %za: {a}[]) -> (%y) {{
  %w = const i8[24,1,3,3] @?
  %y = ConvInteger(%x, %w, %za) {{group=24, pads=[1,0,1,2], strides=[{s},{s}]}} : i32[1,24,{o},{o2}]
}}"""


def _scheduled(g: object, kernel: str) -> str:
    """The scheduled TIR of the one kernel whose name contains ``kernel``."""
    target = X86.tvm_target(None)
    lowered = lower(g, **lowering_options(X86, None, 2))  # type: ignore[arg-type]
    with target:
        mod = cpu_pipeline(target, stop_after_schedules=True)(lowered.mod)
    (func,) = [f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc) and kernel in gv.name_hint]
    return str(func.script())


def _reduction_lines(tir: str, block: str) -> list[str]:
    """The statements of the reduction block ``block`` (its update, not the init)."""
    lines = tir.splitlines()
    start = next(i for i, ln in enumerate(lines) if f'T.sblock("{block}' in ln and "init" not in ln)
    return [ln for ln in lines[start:start + 12] if "=" in ln and "T.axis" not in ln]


@pytest.mark.parametrize("act, stride", [("u8", 1), ("u8", 2), ("i8", 1)])
def test_depthwise_conv_integer_is_exact_in_int32(act: str, stride: int) -> None:
    rng = np.random.default_rng(stride)
    w = rng.integers(-128, 128, (24, 1, 3, 3), dtype=np.int8)
    dtype = np.uint8 if act == "u8" else np.int8
    info = np.iinfo(dtype)
    x = rng.integers(info.min, info.max + 1, (1, 24, 9, 9), dtype=dtype)
    o, o2 = (9, 9) if stride == 1 else (5, 5)
    g = _graph(DEPTHWISE.format(a=act, s=stride, o=o, o2=o2), w)
    got, report, params = _run(g, {"x": x, "za": np.asarray(7, dtype)})
    want = np.concatenate([_conv_reference(x[:, c:c + 1], w[c:c + 1], 7, stride) for c in range(24)], axis=1)
    np.testing.assert_array_equal(got, want)
    assert report.rules.get("int8_depthwise") == "contraction", report.rules
    assert "w.HWC" in params or any(p.endswith("HWC") for p in params), params
    update = _reduction_lines(_scheduled(g, "int8_depthwise"), "int8_depthwise_update")
    assert update and not any("float" in ln for ln in update), update


# A MatMulInteger as quantize-dynamic writes it and fuse-operators groups it: the activation's zero
# point and scale come from DynamicQuantizeLinear at run time; weight scales per column, then bias.
DYNAMIC = """graph main(%a: u8[1,32,64], %za: u8[], %sa: f32[]) -> (%y) {
  %w = const i8[64,48] @?
  %sw = const f32[48] @?
  %b = const f32[48] @?
  %y = effarch::FusedMatMul(%a, %w, %za, %sw, %sa, %b) : f32[1,32,48]
    graph matmul-bias-act(%a: u8[1,32,64], %w: i8[64,48], %za: u8[], %sw: f32[48], %sa: f32[], %b: f32[48]) -> (%y) {
      %i = MatMulInteger(%a, %w, %za) : i32[1,32,48]
      %f = Cast(%i) {to=1} : f32[1,32,48]
      %m = Mul(%f, %sw) : f32[1,32,48]
      %s = Mul(%m, %sa) : f32[1,32,48]
      %y = Add(%s, %b) : f32[1,32,48]
    }
}"""


def test_fused_matmul_integer_with_a_run_time_zero_point() -> None:
    rng = np.random.default_rng(7)
    w = rng.integers(-127, 128, (64, 48), dtype=np.int8)
    sw = (rng.random(48) * 0.01 + 0.001).astype(np.float32)
    b = rng.standard_normal(48).astype(np.float32)
    g = parse_graph(DYNAMIC)
    for name, value in (("w", w), ("sw", sw), ("b", b)):
        g.constants[name].const = value
    a = rng.integers(0, 256, (1, 32, 64), dtype=np.uint8)
    za, sa = np.asarray(131, np.uint8), np.asarray(0.02, np.float32)
    got, report, _ = _run(g, {"a": a, "za": za, "sa": sa})
    exact = (a.astype(np.int64) - 131) @ w.astype(np.int64)
    want = exact.astype(np.float32) * sw * sa + b
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # float32 scales; the sum itself is exact
    (kernel,) = [k for k in report.rules if k.startswith("effarch_matmul")]
    assert report.rules[kernel] == "int8-contraction", report.rules
    update = _reduction_lines(_scheduled(g, "effarch_matmul"), "int8_dense_update")
    assert any("llvm.x86" in ln for ln in update) and not any("float" in ln for ln in update), update


@pytest.mark.parametrize("n, row, lanes, want", [(58 * 58 * 144, 144, 32, 16), (1024, 64, 32, 32), (96, 3, 8, 8)])
def test_injective_vectors_stay_within_a_row(n: int, row: int, lanes: int, want: int) -> None:
    assert _row_lanes(n, row, lanes) == want
