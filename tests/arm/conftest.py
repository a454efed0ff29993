"""Shared fixtures: compiled arm artifacts and the emulated Arm device (started once per session)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from compiler.driver import SourceModel, compile_model, load_model
from tools import arm_device


def free_port() -> int:
    """A loopback port nobody listens on now (the RPC server binds exactly this one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def compile_arm(name: str, cpu: str, out_dir: Path) -> tuple[SourceModel, Path]:
    source = load_model(f"zoo:{name}")
    path = out_dir / f"{name}-{cpu}.effarch"
    compile_model(source, path, target="arm", cpu=cpu, opt_level=2)
    return source, path


@pytest.fixture(scope="session")
def a72_device() -> Iterator[arm_device.DeviceInfo]:
    """An emulated Cortex-A72 serving TVM RPC on loopback (prepares the cache on first use)."""
    info = arm_device.start(cpu="cortex-a72", port=free_port())
    yield info
    arm_device.stop(info.port)
