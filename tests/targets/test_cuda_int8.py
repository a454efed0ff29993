"""The CUDA target's integer kernels without a GPU: MatMulInteger / ConvInteger with constant int8 weights,
alone or inside a fused requantizing group, become dp4a kernels (``__dp4a`` in the generated CUDA source,
the PTX ``dp4a`` instruction after nvcc), and shapes the rule cannot take keep the generic path."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tvm

from compiler.ir import Graph, parse_graph
from targets.base import get_target
from targets.build import lowering_options
from targets.lowering.to_relax import lower
from targets.schedules.gpu_int8 import choose_tile

CUDA = get_target("cuda")

MATMUL = """graph main(%a: u8[2,24,40], %za: u8[]) -> (%y) {
  %w = const i8[40,64] @?
  %y = MatMulInteger(%a, %w, %za) : i32[2,24,64]
}"""

# ONNX pads are [top, left, bottom, right]; 25 output pixels and 32 channels leave partial tiles.
CONV = """graph main(%x: u8[1,12,9,9], %za: u8[]) -> (%y) {
  %w = const i8[32,12,3,3] @?
  %y = ConvInteger(%x, %w, %za) {pads=[1,0,1,2], strides=[2,2]} : i32[1,32,5,6]
}"""

# What fuse-operators makes of a quantized conv: integer conv, dequantize, bias, ReLU, requantize.
FUSED = """graph main(%x: u8[1,16,8,8]) -> (%q) {
  %w = const i8[32,16,3,3] @?
  %q = effarch::FusedConv(%x, %w) : u8[1,32,8,8]
    graph qconv(%x: u8[1,16,8,8], %w: i8[32,16,3,3]) -> (%q) {
      %za = const u8[] [3]
      %s = const f32[] [0.0005]
      %b = const f32[] [0.25]
      %sq = const f32[] [0.05]
      %zq = const u8[] [5]
      %c = ConvInteger(%x, %w, %za) {pads=[1,1,1,1]} : i32[1,32,8,8]
      %f = Cast(%c) {to=1} : f32[1,32,8,8]
      %m = Mul(%f, %s) : f32[1,32,8,8]
      %a = Add(%m, %b) : f32[1,32,8,8]
      %r = Relu(%a) : f32[1,32,8,8]
      %q = QuantizeLinear(%r, %sq, %zq) : u8[1,32,8,8]
    }
}"""


def _graph(text: str, **consts: np.ndarray) -> Graph:
    g = parse_graph(text)
    for name, value in consts.items():
        g.constants[name].const = value
    return g


def _weights(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-127, 128, shape).astype(np.int8)


def _cuda_source(g: Graph) -> str:
    """The CUDA C source TVM generates for ``g`` at -O2 (no nvcc, no GPU)."""
    target = CUDA.tvm_target("sm_90")
    lowered = lower(g, **lowering_options(CUDA, "sm_90", 2))
    ex = tvm.compile(lowered.mod, target=target, relax_pipeline=CUDA.relax_pipeline(target))
    return "".join(m.inspect_source() for host in ex.mod.imports for m in host.imports if m.kind == "cuda")


def _kernel(source: str, name: str) -> str:
    """The definition of the kernel named ``name`` (or ``PREFIX_name``, where ``targets.cast_fusion`` moved a
    kernel into it), after its declaration."""
    start = max(m.start() for m in re.finditer(rf"[) ]\w*{name}\(", source))
    end = source.find('extern "C" __global__', start)
    return source[start:end if end >= 0 else len(source)]


@pytest.mark.parametrize("text, shape, kernel", [(MATMUL, (40, 64), "int8_matmul_gpu_kernel"),
                                                 (CONV, (32, 12, 3, 3), "int8_conv2d_gpu_kernel")])
def test_integer_contraction_runs_on_dp4a(text: str, shape: tuple[int, ...], kernel: str) -> None:
    source = _cuda_source(_graph(text, w=_weights(shape)))
    body = _kernel(source, kernel)
    assert body.count("__dp4a(") >= 8  # a K_TILE step of 8 dp4a per output, unrolled
    assert "__shared__" in body


def test_fused_requantizing_group_is_one_dp4a_kernel() -> None:
    g = _graph(FUSED, w=_weights((32, 16, 3, 3)))
    source = _cuda_source(g)
    kernels = [line for line in source.splitlines() if line.startswith('extern "C" __global__') and line.endswith("{")]
    assert len(kernels) == 1, kernels  # conv, correction, scale, bias, ReLU and requantize together
    assert "__dp4a(" in source and "max(" in source  # ReLU and the saturation in the same kernel


def test_weight_zero_point_beyond_int8_keeps_the_generic_kernel() -> None:
    text = MATMUL.replace("%za) : i32", "%za, %zw) : i32")
    text = text.replace("%w = const", "%zw = const i8[] [-100]\n  %w = const")
    source = _cuda_source(_graph(text, w=_weights((40, 64))))  # 127 - (-100) leaves int8
    assert "__dp4a(" not in source


@pytest.mark.skipif(shutil.which("nvcc") is None and not Path("/usr/local/cuda/bin/nvcc").exists(), reason="no nvcc")
def test_ptx_holds_the_dp4a_instruction(tmp_path: Path) -> None:
    from targets.cuda import c_safe_source, find_nvcc

    cu = tmp_path / "k.cu"
    cu.write_text(c_safe_source(_cuda_source(_graph(CONV, w=_weights((32, 12, 3, 3))))))
    subprocess.run([find_nvcc(), "--ptx", "-arch=sm_90", "-o", str(tmp_path / "k.ptx"), str(cu)], check=True,
                   capture_output=True)
    assert "dp4a.s32.s32" in (tmp_path / "k.ptx").read_text()


def test_tiles_fill_the_gpu_or_shrink() -> None:
    assert choose_tile(1 << 16, 256) == (4, 4, 8, 16)  # a large GEMM: 4x4 register tiles, 128 threads
    assert choose_tile(3136, 64) == (2, 2, 8, 16)  # ResNet's first stage: 392 blocks of 2x2 tiles
    tm, tn, ty, tx = choose_tile(49, 512)  # its last stage: small tiles, more blocks
    assert tm * tn < 16 and ty * tx <= 256
