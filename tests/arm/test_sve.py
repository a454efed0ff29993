"""SVE on Arm cores whose vector length is known (Neoverse V1: 256 bits): the schedules size their
vectors for it and LLVM emits SVE instructions on z registers; the emulated core with 256-bit
vectors computes what onnxruntime does, and one with 128-bit vectors refuses the artifact (its code
would compute wrong numbers there, not fault)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compiler import zoo
from compiler.driver import SourceModel
from compiler.errors import EffarchError
from compiler.numerics.reference import run_onnxruntime
from targets.arm import TARGET as ARM
from targets.arm import check_sve_length, sve_bits_of
from targets.remote import run_remote
from targets.schedules.machine import machine_of
from tests.arm.conftest import compile_arm, free_port
from tests.arm.test_int8_dotprod import _disassembly
from tools import arm_device


@pytest.fixture(scope="module")
def v1_mlp(tmp_path_factory: pytest.TempPathFactory) -> tuple[SourceModel, Path]:
    return compile_arm("mlp", "neoverse-v1", tmp_path_factory.mktemp("v1"))


def test_known_sve_length_widens_the_vectors() -> None:
    assert machine_of(ARM.tvm_target("neoverse-v1")).vector_bits == 256
    assert machine_of(ARM.tvm_target("a64fx")).vector_bits == 512
    assert machine_of(ARM.tvm_target("cortex-a72")).vector_bits == 128
    assert ARM.pack_width("neoverse-v1") == 2 * ARM.pack_width("cortex-a72")
    assert [sve_bits_of(v) for v in (32, 16 | (1 << 16), -1)] == [256, 128, 0]


def test_neoverse_v1_library_computes_on_sve(v1_mlp: tuple[SourceModel, Path], tmp_path: Path) -> None:
    asm = _disassembly(v1_mlp[1], tmp_path)
    assert "fmla\tz" in asm and "fmla\tv" not in asm  # predicated SVE multiply-adds, no NEON ones
    other = tmp_path / "a72"
    other.mkdir()
    _, a72 = compile_arm("mlp", "cortex-a72", other)
    assert "fmla\tz" not in _disassembly(a72, other)


def test_emulated_256_bit_sve_matches_onnxruntime_and_128_bit_refuses(v1_mlp: tuple[SourceModel, Path]) -> None:
    source, path = v1_mlp
    inputs = zoo.get("mlp").sample_inputs(1)
    wide = arm_device.start(cpu="max,sve-default-vector-length=32", port=free_port())  # bytes: 256 bits
    try:
        got = run_remote(path, wide.url, inputs)
    finally:
        arm_device.stop(wide.port)
    want = run_onnxruntime(source.reference_onnx, inputs)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], atol=1e-5, rtol=1e-5, err_msg=k)
    narrow = arm_device.start(cpu="max,sve-default-vector-length=16", port=free_port())
    try:
        with pytest.raises(EffarchError, match="has 128-bit SVE vectors, but the artifact .built for neoverse-v1. "
                                               "assumes at least 256-bit ones; rebuild it with --cpu"):
            run_remote(path, narrow.url, inputs)
    finally:
        arm_device.stop(narrow.port)


def test_local_check_refuses_short_vectors() -> None:
    manifest = {"target": {"cpu": "neoverse-v1", "features": ["neon", "sve"]}}
    check_sve_length(manifest, 256, "this machine")
    check_sve_length({"target": {"cpu": "cortex-a72", "features": ["neon"]}}, 0, "this machine")
    with pytest.raises(EffarchError, match="this machine has no SVE, but the artifact"):
        check_sve_length(manifest, 0, "this machine")
