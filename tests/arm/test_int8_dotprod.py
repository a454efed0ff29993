"""Integer kernels on aarch64 with the dot product extension: the library uses ``sdot`` (u8
activations shifted to s8, the shift corrected by the weights' column sums), and the emulated
Neoverse-N1 (QEMU enforcing its instruction set) computes exactly what numpy does."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from compiler.ir import Graph
from targets.artifact import read_manifest
from targets.build import build
from targets.remote import run_remote
from tests.arm.conftest import free_port
from tests.targets.test_int8_kernels import CONV, FUSED_CONV, MATMUL, _conv_reference, _graph
from tools import arm_device

CPU = "neoverse-n1"


@pytest.fixture(scope="module")
def n1_device() -> Iterator[str]:
    info = arm_device.start(cpu=CPU, port=free_port())
    try:
        yield info.url
    finally:
        arm_device.stop(info.port)


def _build(g: Graph, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    path = tmp_path / "m.effarch"
    return path, build(g, path, target="arm", cpu=CPU).schedules


def _disassembly(path: Path, tmp_path: Path) -> str:
    member = read_manifest(path)["members"]["library"]["name"]
    with zipfile.ZipFile(path) as z:
        (tmp_path / "lib.so").write_bytes(z.read(member))
    tool = shutil.which("aarch64-linux-gnu-objdump") or "objdump"
    return subprocess.run([tool, "-d", str(tmp_path / "lib.so")], capture_output=True, text=True, check=True).stdout


def test_matmul_integer_uses_sdot_and_is_exact_on_the_device(n1_device: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w = rng.integers(-128, 128, (40, 64), dtype=np.int8)
    path, schedules = _build(_graph(MATMUL.format(a="u8", zw=0), w), tmp_path)
    assert "int8-contraction" in schedules.values(), schedules
    assert "sdot" in _disassembly(path, tmp_path)
    a = rng.integers(0, 256, (2, 24, 40), dtype=np.uint8)
    a[..., :4] = 255
    got = run_remote(path, n1_device, {"a": a, "za": np.array(9, np.uint8)})["y"]
    np.testing.assert_array_equal(got, (a.astype(np.int64) - 9) @ w.astype(np.int64))


@pytest.mark.parametrize("act", ["u8", "i8"])
def test_conv_integer_is_exact_on_the_device(act: str, n1_device: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    w = rng.integers(-128, 128, (32, 12, 3, 3), dtype=np.int8)
    dtype = np.uint8 if act == "u8" else np.int8
    x = rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max + 1, (1, 12, 9, 9), dtype=dtype)
    za = dtype(100 if act == "u8" else -7)
    want = _conv_reference(x, w, int(za), 1)
    text = CONV.format(a=act, s=1, o=want.shape[2], o2=want.shape[3])
    path, schedules = _build(_graph(text, w), tmp_path)
    assert "int8-contraction" in schedules.values(), schedules
    got = run_remote(path, n1_device, {"x": x, "za": np.array(za, dtype)})["y"]
    np.testing.assert_array_equal(got, want)


def test_fused_requantizing_conv_matches_x86(n1_device: str, tmp_path: Path) -> None:
    """The same fused group on both ISAs: integer parts exact, float epilogue within a rounding tie."""
    from targets.runtime import load_artifact

    rng = np.random.default_rng(2)
    w = rng.integers(-128, 128, (32, 16, 3, 3), dtype=np.int8)
    bias = ", ".join(repr(b) for b in rng.standard_normal(32).astype(np.float32).tolist())
    x = rng.integers(0, 256, (1, 16, 8, 8), dtype=np.uint8)
    arm, schedules = _build(_graph(FUSED_CONV.format(bias=bias), w), tmp_path)
    assert schedules[next(k for k in schedules if k.startswith("effarch_conv"))] == "int8-contraction"
    host = tmp_path / "x86.effarch"
    build(_graph(FUSED_CONV.format(bias=bias), w), host, target="x86")
    want = load_artifact(host).run({"x": x})["q"]
    got = run_remote(arm, n1_device, {"x": x})["q"]
    assert np.abs(got.astype(np.int32) - want.astype(np.int32)).max() <= 1
    assert np.mean(got == want) > 0.99
