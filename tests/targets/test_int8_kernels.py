"""Integer kernels: MatMulInteger / ConvInteger with constant weights run on the CPU's integer
dot-product instructions, exactly (int32 results compare bit for bit with numpy's int64 arithmetic),
and a fused requantizing epilogue stays in the same kernel."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import relax

from compiler.ir import Graph, parse_graph
from targets.base import get_target
from targets.build import lowering_options
from targets.lowering.to_relax import Lowered, lower
from targets.schedules import ScheduleReport
from targets.schedules.dot import AVX2_MADDUBS, AVX2_MADDWD, choose_kernel, maddubs_exact
from targets.schedules.pipeline import cpu_pipeline

X86 = get_target("x86")

MATMUL = """graph main(%a: {a}[2,24,40], %za: {a}[]) -> (%y) {{
  %w = const i8[40,64] @?
  %zw = const i8[] [{zw}]
  %y = MatMulInteger(%a, %w, %za, %zw) : i32[2,24,64]
}}"""

CONV = """graph main(%x: {a}[1,12,9,9], %za: {a}[]) -> (%y) {{
  %w = const i8[32,12,3,3] @?
  %y = ConvInteger(%x, %w, %za) {{pads=[1,0,1,2], strides=[{s},{s}]}} : i32[1,32,{o},{o2}]
}}"""


def _graph(text: str, w: np.ndarray) -> Graph:
    g = parse_graph(text)
    g.constants["w"].const = w
    return g


def _build(g: Graph, cpu: str | None) -> tuple[tvm.runtime.Executable, Lowered, ScheduleReport]:
    target = X86.tvm_target(cpu)
    lowered = lower(g, **lowering_options(X86, cpu, 2))
    report = ScheduleReport()
    return tvm.compile(lowered.mod, target=target, relax_pipeline=cpu_pipeline(target, report=report)), lowered, report


def _run(g: Graph, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, ScheduleReport, list[str]]:
    ex, lowered, report = _build(g, None)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    args = [tvm.runtime.tensor(np.asarray(inputs[n])) for n in lowered.input_names]
    result = vm["main"](*args, *[tvm.runtime.tensor(p) for p in lowered.params])
    return result[0].numpy(), report, lowered.param_names


def _int8_rule(report: ScheduleReport) -> list[str]:
    return [k for k, rule in report.rules.items() if rule == "int8-contraction"]


def _conv_reference(x: np.ndarray, w: np.ndarray, za: int, stride: int,
                    pads: tuple[int, int, int, int] = (1, 0, 1, 2)) -> np.ndarray:
    """ONNX ConvInteger: ``pads`` ([top, left, bottom, right]) hold the zero point."""
    xp = np.pad(x.astype(np.int64) - za, [(0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])])
    kh, kw = w.shape[2:]
    oh, ow = (xp.shape[2] - kh) // stride + 1, (xp.shape[3] - kw) // stride + 1
    out = np.zeros((1, w.shape[0], oh, ow), np.int64)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j].astype(np.int64))
    return out


# Full-range weights cannot take vpmaddubsw (255 * (127 + 127) saturates int16); |w| <= 64 can. The
# weight's zero point is taken off first: w - (-3) reaches 67 from |w| <= 64, but not from |w| <= 60.
@pytest.mark.parametrize("act, zw, wmax, kernel", [
    ("u8", 0, 127, AVX2_MADDWD.name), ("u8", 0, 64, AVX2_MADDUBS.name), ("i8", 0, 127, AVX2_MADDWD.name),
    ("i8", 0, 64, AVX2_MADDUBS.name), ("u8", -3, 64, AVX2_MADDWD.name), ("u8", -3, 60, AVX2_MADDUBS.name),
])
def test_matmul_integer_is_exact_on_the_avx2_kernels(act: str, zw: int, wmax: int, kernel: str) -> None:
    rng = np.random.default_rng(wmax)
    w = rng.integers(-wmax, wmax + 1, (40, 64), dtype=np.int8)
    w[:2] = wmax  # the worst pair: the largest weights under the largest activations
    dtype = np.uint8 if act == "u8" else np.int8
    info = np.iinfo(dtype)
    a = rng.integers(info.min, info.max + 1, (2, 24, 40), dtype=dtype)
    a[..., :2] = info.max
    za = dtype(7)
    got, report, params = _run(_graph(MATMUL.format(a=act, zw=zw), w), {"a": a, "za": np.asarray(za)})
    want = (a.astype(np.int64) - int(za)) @ (w.astype(np.int64) - zw)
    np.testing.assert_array_equal(got, want)
    assert _int8_rule(report), report.rules
    if X86.int8_isa(None) == "avx2":
        assert any(kernel.removeprefix("effarch_") in p for p in params), params


@pytest.mark.parametrize("act, stride", [("u8", 1), ("i8", 2)])
def test_conv_integer_is_exact_and_pads_with_the_zero_point(act: str, stride: int) -> None:
    rng = np.random.default_rng(stride)
    w = rng.integers(-128, 128, (32, 12, 3, 3), dtype=np.int8)
    dtype = np.uint8 if act == "u8" else np.int8
    x = rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max + 1, (1, 12, 9, 9), dtype=dtype)
    za = dtype(-5 if act == "i8" else 200)
    want = _conv_reference(x, w, int(za), stride)
    text = CONV.format(a=act, s=stride, o=want.shape[2], o2=want.shape[3])
    got, report, _ = _run(_graph(text, w), {"x": x, "za": np.asarray(za)})
    np.testing.assert_array_equal(got, want)
    assert _int8_rule(report), report.rules


def test_maddubs_is_chosen_only_where_no_pair_can_saturate() -> None:
    assert maddubs_exact(np.array([[64, 64, -64, -64]]))
    assert maddubs_exact(np.array([[127, -128, 1, -1]]))  # 255 * 127 and 255 * -128 fit int16
    assert not maddubs_exact(np.array([[65, 64, 0, 0]]))  # 255 * 129 = 32895 > 32767
    assert not maddubs_exact(np.array([[0, 0, -65, -64]]))
    assert choose_kernel("avx2", np.array([[65, 64, 0, 0]])) == AVX2_MADDWD
    assert choose_kernel("avx2", np.array([[127, -128, 0, 0]])) == AVX2_MADDUBS


def _disassembly(ex: tvm.runtime.Executable, tmp_path: Path) -> str:
    so = tmp_path / "m.so"
    ex.export_library(str(so))
    return subprocess.run(["objdump", "-d", str(so)], capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("cpu", ["znver4", "cascadelake"])
def test_vnni_cpus_get_vpdpbusd(cpu: str, tmp_path: Path) -> None:
    w = np.random.default_rng(0).integers(-128, 128, (32, 12, 3, 3), dtype=np.int8)
    ex, _, report = _build(_graph(CONV.format(a="u8", s=1, o=9, o2=11), w), cpu)
    assert _int8_rule(report), report.rules
    assert "vpdpbusd" in _disassembly(ex, tmp_path)


def test_integer_reduction_does_not_run_in_float(tmp_path: Path) -> None:
    """The scheduled kernel reduces with the integer instruction, no float arithmetic anywhere."""
    w = np.random.default_rng(1).integers(-128, 128, (40, 64), dtype=np.int8)
    target = X86.tvm_target(None)
    lowered = lower(_graph(MATMUL.format(a="u8", zw=0), w), **lowering_options(X86, None, 2))
    with target:
        mod = cpu_pipeline(target, stop_after_schedules=True)(lowered.mod)
    (name,) = [gv.name_hint for gv, f in mod.functions_items() if "int8_dense" in gv.name_hint]
    text = mod[name].script()
    assert "llvm.x86.avx2.pmadd" in text or "vpdpbusd" in text
    assert "float" not in text
    ex, _, _ = _build(_graph(MATMUL.format(a="u8", zw=0), w), None)
    asm = _disassembly(ex, tmp_path)
    assert ("vpmaddwd" in asm or "vpdpbusd" in asm) and "vfmadd" not in asm  # AVX2 or VNNI host


# A quantized conv block as fuse-operators groups it: the integer conv, then dequantize (cast, scale),
# bias, ReLU and requantize to u8, all in one group.
FUSED_CONV = """graph main(%x: u8[1,16,8,8]) -> (%q) {{
  %w = const i8[32,16,3,3] @?
  %q = effarch::FusedConv(%x, %w) : u8[1,32,8,8]
    graph qconv(%x: u8[1,16,8,8], %w: i8[32,16,3,3]) -> (%q) {{
      %za = const u8[] [3]
      %s = const f32[] [0.0005]
      %b = const f32[1,32,1,1] [{bias}]
      %sq = const f32[] [0.05]
      %zq = const u8[] [5]
      %c = ConvInteger(%x, %w, %za) {{pads=[1,1,1,1]}} : i32[1,32,8,8]
      %f = Cast(%c) {{to=1}} : f32[1,32,8,8]
      %m = Mul(%f, %s) : f32[1,32,8,8]
      %a = Add(%m, %b) : f32[1,32,8,8]
      %r = Relu(%a) : f32[1,32,8,8]
      %q = QuantizeLinear(%r, %sq, %zq) : u8[1,32,8,8]
    }}
}}"""


def test_fused_requantizing_epilogue_runs_in_the_integer_kernel() -> None:
    rng = np.random.default_rng(3)
    w = rng.integers(-128, 128, (32, 16, 3, 3), dtype=np.int8)
    bias = rng.standard_normal(32).astype(np.float32)
    x = rng.integers(0, 256, (1, 16, 8, 8), dtype=np.uint8)
    g = _graph(FUSED_CONV.format(bias=", ".join(f"{b!r}" for b in bias.tolist())), w)
    got, report, _ = _run(g, {"x": x})
    assert _int8_rule(report) == [k for k in report.rules if k.startswith("effarch_conv")], report.rules
    real = _conv_reference(x, w, 3, 1, pads=(1, 1, 1, 1))
    real = np.maximum(real.astype(np.float32) * np.float32(0.0005) + bias.reshape(1, -1, 1, 1), 0)
    want = np.clip(np.round(real / np.float32(0.05)) + 5, 0, 255)
    # float rounding ties may land either side (LLVM may contract the multiply-add): at most 1 apart
    assert np.abs(got.astype(np.int32) - want).max() <= 1
    assert np.mean(got == want) > 0.99
