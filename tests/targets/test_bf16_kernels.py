"""``--precision bf16`` on x86: matmuls and convolutions on AMX tiles (``tdpbf16ps``) where the CPU has
AMX-BF16 and the shape fills them, else on AVX512-BF16's ``vdpbf16ps``; operands rounded to bf16
(nearest, ties to even), products summed in fp32.

The machine code is checked on any x86 host (built for ``cooperlake``: AVX512-BF16 without AMX, and
``sapphirerapids``: AMX); the numbers where this machine has the instructions: against numpy and
PyTorch on the same bf16-rounded operands, where only the order of the fp32 sums may differ."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import tvm
from tvm import relax, te

from compiler.ir import Graph, parse_graph
from targets.base import get_target
from targets.build import lowering_options
from targets.lowering.packed_bf16 import computes_in_bf16, to_bf16
from targets.lowering.to_relax import Lowered, lower
from targets.schedules import ScheduleReport
from targets.schedules.amx import amx_rows, enable_amx
from targets.schedules.dot import AMX_BF16, AVX512_BF16, bf16_bits
from targets.schedules.pipeline import cpu_pipeline
from targets.x86 import host_cpuinfo_flags

X86 = get_target("x86")
FLAGS = host_cpuinfo_flags() or set()
HOST_BF16 = "avx512_bf16" in FLAGS
HOST_AMX = {"amx_bf16", "amx_tile", "avx512_bf16"} <= FLAGS
# vdpbf16ps without AMX: Cooper Lake's features are a subset of every AMX CPU's, so it runs there too.
VDPBF16PS_CPU = "cooperlake"

MATMUL = """graph main(%a: f32[2,24,41]) -> (%y) {
  %w = const f32[41,64] @?
  %y = MatMul(%a, %w) : f32[2,24,64]
}"""

CONV = """graph main(%x: f32[1,{c},9,9]) -> (%y) {{
  %w = const f32[32,{c},3,3] @?
  %b = const f32[32] @?
  %c = Conv(%x, %w, %b) {{pads=[1,0,1,2], strides=[{s},{s}]}} : f32[1,32,{o},{o2}]
  %y = Relu(%c) : f32[1,32,{o},{o2}]
}}"""


def _graph(text: str, **consts: np.ndarray) -> Graph:
    g = parse_graph(text)
    for name, value in consts.items():
        g.constants[name].const = value
    return g


def _build(g: Graph, cpu: str | None) -> tuple[tvm.runtime.Executable, Lowered, ScheduleReport]:
    target = X86.tvm_target(cpu)
    lowered = lower(g, **lowering_options(X86, cpu, 2, precision="bf16"))
    report = ScheduleReport()
    return tvm.compile(lowered.mod, target=target, relax_pipeline=cpu_pipeline(target, report=report)), lowered, report


def _run(g: Graph, x: np.ndarray, cpu: str | None) -> tuple[np.ndarray, ScheduleReport]:
    ex, lowered, report = _build(g, cpu)
    enable_amx()
    vm = relax.VirtualMachine(ex, tvm.cpu())
    result = vm["main"](tvm.runtime.tensor(x), *[tvm.runtime.tensor(p) for p in lowered.params])
    return result[0].numpy(), report


def _bf16(x: np.ndarray) -> np.ndarray:
    """``x`` rounded to bf16, as float64 (exact)."""
    return (bf16_bits(x).astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def test_rounding_to_bf16_is_nearest_even() -> None:
    # Ties (low half exactly 0x8000) go to the even high half; just above or below go to nearest.
    bits = np.array([0x3F808000, 0x3F818000, 0x3F808001, 0x3F807FFF, 0x00000000, 0x80000000, 0x7F7FFFFF,
                     0x7F800000, 0xFF800000, 0x00008000, 0x3FFFFFFF], np.uint32)
    values = np.concatenate([bits.view(np.float32), np.random.default_rng(0).standard_normal(1000, np.float32)])
    x = te.placeholder((values.size,), "float32", "x")
    y = te.compute(x.shape, lambda i: to_bf16(x[i]), name="y")
    f = tvm.compile(te.create_prim_func([x, y]), target="llvm")
    out = tvm.runtime.tensor(np.zeros(values.size, np.uint16))
    f(tvm.runtime.tensor(values), out)
    np.testing.assert_array_equal(out.numpy(), bf16_bits(values))
    assert list(bf16_bits(bits[:4].view(np.float32))) == [0x3F80, 0x3F82, 0x3F81, 0x3F80]


def _disassembly(ex: tvm.runtime.Executable, tmp_path: Path) -> str:
    so = tmp_path / "lib.so"
    ex.export_library(str(so))
    return subprocess.run(["objdump", "-d", str(so)], capture_output=True, text=True, check=True).stdout


def test_avx512_bf16_cpus_get_vdpbf16ps(tmp_path: Path) -> None:
    w = np.random.default_rng(1).standard_normal((41, 64)).astype(np.float32)
    ex, lowered, report = _build(_graph(MATMUL, w=w), VDPBF16PS_CPU)
    assert list(report.rules.values()) == ["bf16-contraction"]
    asm = _disassembly(ex, tmp_path)
    assert "vdpbf16ps" in asm and "tdpbf16ps" not in asm
    (packed,) = lowered.params
    assert packed.dtype == np.uint16 and packed.shape == (4, 21, 16, 2)  # [N/16, Kp/2, 16, 2] bf16 bits


def test_amx_cpus_get_tdpbf16ps(tmp_path: Path) -> None:
    w = np.random.default_rng(1).standard_normal((41, 64)).astype(np.float32)
    ex, lowered, report = _build(_graph(MATMUL, w=w), "sapphirerapids")
    assert list(report.rules.values()) == ["bf16-amx"]
    asm = _disassembly(ex, tmp_path)
    assert "tdpbf16ps" in asm and "ldtilecfg" in asm and "tilerelease" in asm
    (packed,) = lowered.params
    assert packed.shape == (4, 32, 16, 2)  # K padded to whole 32-element tile rows


def test_amx_takes_only_shapes_that_fill_its_tiles() -> None:
    assert [amx_rows(n) for n in (56, 112, 28, 14, 7, 32, 8, 17, 3)] == [28, 28, 28, 14, 7, 32, 8, 0, 3]
    assert computes_in_bf16(AMX_BF16, 56, 64, 64)
    assert not computes_in_bf16(AMX_BF16, 112, 64, 3)  # a 3-channel stem: 29 of 32 tile columns empty
    assert not computes_in_bf16(AMX_BF16, 56, 48, 64)  # not whole 32-column pairs of tiles
    assert not computes_in_bf16(AMX_BF16, 17, 64, 64)  # no row count divides 17
    assert computes_in_bf16(AVX512_BF16, 17, 48, 3)  # vdpbf16ps takes any whole 16-column vectors


@pytest.mark.parametrize("cpu", [VDPBF16PS_CPU, None])
def test_matmul_sums_bf16_products_in_fp32(cpu: str | None) -> None:
    if not (HOST_AMX if cpu is None else HOST_BF16):
        pytest.skip("this machine lacks the instructions (the machine code is checked above)")
    rng = np.random.default_rng(2)
    a = rng.standard_normal((2, 24, 41)).astype(np.float32)
    w = rng.standard_normal((41, 64)).astype(np.float32)
    got, report = _run(_graph(MATMUL, w=w), a, cpu)
    assert set(report.rules.values()) == {"bf16-amx" if cpu is None else "bf16-contraction"}
    want = _bf16(a) @ _bf16(w)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    assert np.abs(got - a @ w).max() > 1e-4 * np.abs(want).max()  # it did round: not an fp32 product


@pytest.mark.parametrize(("cpu", "channels"), [(VDPBF16PS_CPU, 11), (None, 40)])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv_pads_and_fuses_its_epilogue(stride: int, cpu: str | None, channels: int) -> None:
    if not (HOST_AMX if cpu is None else HOST_BF16):
        pytest.skip("this machine lacks the instructions (the machine code is checked above)")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, channels, 9, 9)).astype(np.float32)
    w = rng.standard_normal((32, channels, 3, 3)).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    o, o2 = (9 + 2 - 3) // stride + 1, (9 + 2 - 3) // stride + 1
    got, report = _run(_graph(CONV.format(s=stride, o=o, o2=o2, c=channels), w=w, b=b), x, cpu)
    assert ("bf16-amx" if cpu is None else "bf16-contraction") in report.rules.values()
    xp = torch.nn.functional.pad(torch.from_numpy(_bf16(x)), (0, 2, 1, 1))  # left 0, right 2, top 1, bottom 1
    conv = torch.nn.functional.conv2d(xp, torch.from_numpy(_bf16(w)), torch.from_numpy(b.astype(np.float64)),
                                      stride=stride)
    want = torch.relu(conv).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_symbolic_batch_keeps_its_convolutions_fp32(tmp_path: Path) -> None:
    """A model without --shape still builds with --precision bf16: the kernels with a symbolic extent
    (the batch) take the symbolic rules in fp32, as without bf16."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from compiler.frontends.onnx import import_onnx
    from targets.build import build
    from targets.runtime import load_artifact

    rng = np.random.default_rng(5)
    w = numpy_helper.from_array(rng.standard_normal((64, 32, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "d", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32, 14, 14])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64, 14, 14])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    cpu = "sapphirerapids" if HOST_AMX else VDPBF16PS_CPU if HOST_BF16 else None
    if cpu is None:
        pytest.skip("this machine lacks AVX512-BF16")
    result = build(import_onnx(model), tmp_path / "m.effarch", cpu=cpu, precision="bf16")
    assert not any(rule.startswith("bf16") for rule in result.schedules.values()), result.schedules
    x = rng.standard_normal((2, 32, 14, 14)).astype(np.float32)
    got = load_artifact(result.path, cache_dir=tmp_path / "cache").run({"x": x})["y"]
    want = ort.InferenceSession(model.SerializeToString())
    np.testing.assert_allclose(got, want.run(None, {"x": x})[0], rtol=1e-4, atol=1e-4)
