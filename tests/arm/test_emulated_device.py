"""Artifacts run on the emulated Arm device (QEMU enforcing the core's instruction set) through TVM
RPC, directly and through a tracker, and match onnxruntime on x86; a build for a newer core is
refused before any of its code reaches an older one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from compiler import zoo
from compiler.driver import SourceModel
from compiler.errors import EffarchError
from compiler.numerics.reference import random_inputs, run_onnxruntime
from targets.artifact import read_manifest
from targets.remote import run_remote
from tests.arm.conftest import compile_arm, free_port
from tools import arm_device

# fp32 on a different ISA and compiler: reassociated sums differ in the last bits (seen: up to 5e-8).
ATOL, RTOL = 1e-5, 1e-5


@pytest.fixture(scope="module", params=["mlp", "digits_cnn"])
def a72_build(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, SourceModel,
                                                                                                     Path]:
    name = request.param
    source, path = compile_arm(name, "cortex-a72", tmp_path_factory.mktemp(name))
    return name, source, path


def _assert_matches_onnxruntime(source: SourceModel, got: dict[str, np.ndarray],
                                inputs: dict[str, np.ndarray]) -> None:
    want = run_onnxruntime(source.reference_onnx, inputs)
    assert list(got) == list(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], atol=ATOL, rtol=RTOL, err_msg=k)


@pytest.mark.parametrize("inputs_kind", ["sample", "random"])
def test_model_on_emulated_a72_matches_onnxruntime(a72_build: tuple[str, SourceModel, Path],
                                                   a72_device: arm_device.DeviceInfo, inputs_kind: str) -> None:
    name, source, path = a72_build
    inputs = zoo.get(name).sample_inputs(2) if inputs_kind == "sample" else random_inputs(source.graph, seed=5)
    _assert_matches_onnxruntime(source, run_remote(path, a72_device.url, inputs), inputs)


def test_newer_core_build_refused_on_a72_before_it_runs(tmp_path: Path,
                                                        a72_device: arm_device.DeviceInfo) -> None:
    _, path = compile_arm("mlp", "neoverse-n1", tmp_path)
    library = read_manifest(path)["members"]["library"]["sha256"]
    with pytest.raises(EffarchError, match=rf"device at {a72_device.url} lacks dotprod, .*built for neoverse-n1"):
        run_remote(path, a72_device.url, zoo.get("mlp").sample_inputs(0))
    # The device log lists every module it loaded: the probe, never this library.
    assert f"effarch-{library[:16]}" not in Path(a72_device.log).read_text()


@pytest.fixture(scope="module")
def n1_behind_tracker() -> Iterator[str]:
    """A tracker on this host and an emulated Neoverse-N1 (dot product) registered with it."""
    from tvm.rpc.tracker import Tracker

    tracker = Tracker(host="127.0.0.1", port=free_port(), port_end=65535, silent=True)
    address = f"127.0.0.1:{tracker.port}"
    device = arm_device.start(cpu="neoverse-n1", port=free_port(), tracker=address, key="n1")
    try:
        yield device.url
    finally:
        arm_device.stop(device.port)
        tracker.terminate()


def test_dotprod_build_runs_on_dotprod_core_through_tracker(tmp_path: Path, n1_behind_tracker: str) -> None:
    assert n1_behind_tracker.startswith("tracker://127.0.0.1:") and n1_behind_tracker.endswith("/n1")
    source, path = compile_arm("mlp", "neoverse-n1", tmp_path)
    inputs = zoo.get("mlp").sample_inputs(3)
    _assert_matches_onnxruntime(source, run_remote(path, n1_behind_tracker, inputs), inputs)
