"""Integer matmuls on aarch64 with i8mm: the library uses ``smmla`` (2 x 8 by 8 x 2 blocks, u8
activations shifted to s8, the shift and the weights' zero point corrected by column sums), and the
emulated core computes exactly what numpy does, odd row counts and reductions included."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from compiler.ir import Graph, parse_graph
from targets.build import build
from targets.remote import run_remote
from tests.arm.conftest import free_port
from tests.arm.test_int8_dotprod import _disassembly
from tools import arm_device

CPU = "neoverse-v1"  # i8mm, dot product and 256-bit SVE
DEVICE_CPU = "max,sve-default-vector-length=32"  # QEMU 7.2 has no Neoverse V1 model: its superset

MATMUL = """graph main(%a: {a}[2,7,41], %za: {a}[]) -> (%y) {{
  %w = const i8[41,{n}] @?
  %zw = const i8[] [3]
  %y = MatMulInteger(%a, %w, %za, %zw) : i32[2,7,{n}]
}}"""


@pytest.fixture(scope="module")
def device() -> Iterator[str]:
    info = arm_device.start(cpu=DEVICE_CPU, port=free_port())
    try:
        yield info.url
    finally:
        arm_device.stop(info.port)


def _graph(act: str, n: int, w: np.ndarray) -> Graph:
    g = parse_graph(MATMUL.format(a=act, n=n))
    g.constants["w"].const = w
    return g


@pytest.mark.parametrize("act", ["u8", "i8"])
def test_matmul_integer_uses_smmla_and_is_exact(act: str, device: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n = 20  # 10 column pairs: a register tile of 5 x 4 does not divide it, 2 does
    w = rng.integers(-125, 125, (41, n), dtype=np.int8)
    path = tmp_path / "m.effarch"
    schedules = build(_graph(act, n, w), path, target="arm", cpu=CPU).schedules
    assert "int8-mmla" in schedules.values(), schedules
    asm = _disassembly(path, tmp_path)
    assert "smmla" in asm
    dtype = np.uint8 if act == "u8" else np.int8
    info = np.iinfo(dtype)
    a = rng.integers(info.min, info.max + 1, (2, 7, 41), dtype=dtype)
    a[0, :, :8] = info.max  # extremes, where a wrong shift or saturation would show
    a[1, :, :8] = info.min
    za = np.array(9 if act == "u8" else -5, dtype)
    got = run_remote(path, device, {"a": a, "za": za})["y"]
    want = (a.astype(np.int64) - int(za)) @ (w.astype(np.int64) - 3)
    np.testing.assert_array_equal(got, want)
