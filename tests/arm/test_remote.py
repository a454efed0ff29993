"""Remote-device plumbing on this host: URLs, devices that do not answer, trackers without the key,
and an aarch64 artifact sent to an x86 RPC server. None of it needs the emulated device."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from compiler import zoo
from compiler.errors import EffarchError
from compiler.ir import parse_graph
from targets.build import build
from targets.remote import DeviceAddress, parse_device, run_remote
from tests.arm.conftest import compile_arm, free_port


@pytest.fixture(scope="module")
def mlp_a72(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_arm("mlp", "cortex-a72", tmp_path_factory.mktemp("mlp"))[1]


def test_parse_device_urls() -> None:
    assert parse_device("rpc://127.0.0.1:9190") == DeviceAddress("rpc", "127.0.0.1", 9190)
    assert parse_device("tracker://board.lan:9190/rasp4") == DeviceAddress("tracker", "board.lan", 9190, "rasp4")
    assert str(parse_device("tracker://h:1/k")) == "tracker://h:1/k"


@pytest.mark.parametrize("url", ["127.0.0.1:9190", "http://h:1", "rpc://h", "rpc://h:x", "rpc://h:1/key",
                                 "tracker://h:1", "rpc://h:70000"])
def test_bad_device_urls_are_refused(url: str) -> None:
    with pytest.raises(EffarchError, match=r"rpc://HOST:PORT or tracker://HOST:PORT/KEY"):
        parse_device(url)


def test_closed_port_fails_at_once_naming_the_address(mlp_a72: Path) -> None:
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(EffarchError, match=rf"RPC device at rpc://127.0.0.1:{port} is not reachable"):
        run_remote(mlp_a72, f"rpc://127.0.0.1:{port}", zoo.get("mlp").sample_inputs(0), timeout_s=3)
    assert time.monotonic() - t0 < 3


def test_silent_device_times_out_naming_the_address(mlp_a72: Path) -> None:
    # Accepts TCP connections (the kernel's backlog) but never answers the RPC handshake.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"rpc://127.0.0.1:{silent.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.raises(EffarchError, match=rf"RPC device at {url} .*within 2 s") as err:
            run_remote(mlp_a72, url, zoo.get("mlp").sample_inputs(0), timeout_s=2)
        assert 2 <= time.monotonic() - t0 < 5
    assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def tracker() -> Iterator[int]:
    from tvm.rpc.tracker import Tracker

    server = Tracker(host="127.0.0.1", port=free_port(), port_end=65535, silent=True)
    yield int(server.port)
    server.terminate()


def test_tracker_without_the_key_lists_its_keys(mlp_a72: Path, tracker: int) -> None:
    with pytest.raises(EffarchError, match=r"has no device under key 'rasp4' \(keys there: none\)"):
        run_remote(mlp_a72, f"tracker://127.0.0.1:{tracker}/rasp4", zoo.get("mlp").sample_inputs(0))


def test_aarch64_artifact_refused_by_an_x86_device(mlp_a72: Path) -> None:
    from tvm import rpc

    port = free_port()
    server = rpc.Server(host="127.0.0.1", port=port, port_end=port + 1, silent=True)
    try:
        with pytest.raises(EffarchError, match=rf"device at rpc://127.0.0.1:{port} cannot load aarch64 code"):
            run_remote(mlp_a72, f"rpc://127.0.0.1:{port}", zoo.get("mlp").sample_inputs(0))
    finally:
        server.terminate()


@pytest.mark.parametrize(("change", "message"), [
    (lambda i: {k: v.astype(np.float64) for k, v in i.items()}, "has dtype float64 but the model expects float32"),
    (lambda i: {}, r"missing input\(s\) 'x'; the model takes"),
    (lambda i: {**i, "extra": np.zeros(1, np.float32)}, r"unexpected input\(s\) 'extra'; the model takes only"),
], ids=["dtype", "missing", "unexpected"])
def test_wrong_inputs_fail_before_connecting(mlp_a72: Path, change: Callable[[dict], dict], message: str) -> None:
    inputs = change(zoo.get("mlp").sample_inputs(0))
    with pytest.raises(EffarchError, match=message):
        run_remote(mlp_a72, f"rpc://127.0.0.1:{free_port()}", inputs)

SCALAR_ADD = """graph main(%x: f32[3], %s: f32[]) -> (%y) {
  %y = Add(%x, %s) : f32[3]
}"""


def test_rank0_input_reaches_the_device_as_rank0(tmp_path: Path) -> None:
    """An x86 artifact on an RPC server of this host: a scalar input keeps its rank on the way."""
    from tvm import rpc

    path = tmp_path / "m.effarch"
    build(parse_graph(SCALAR_ADD), path, target="x86")
    port = free_port()
    server = rpc.Server(host="127.0.0.1", port=port, port_end=port + 1, silent=True)
    x = np.array([1.0, -2.0, 3.5], np.float32)
    try:
        got = run_remote(path, f"rpc://127.0.0.1:{port}", {"x": x, "s": np.array(0.25, np.float32)})
    finally:
        server.terminate()
    np.testing.assert_array_equal(got["y"], x + np.float32(0.25))
