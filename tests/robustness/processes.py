"""Helpers of the robustness tests that run ``effarch`` as real processes: a tiny model that makes
TVM write a native log line, the command line run with a private cache, and TVM's log format."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# "[15:49:08] /project/src/relax/ir/block_builder.cc:67: Warning: ..." anywhere in a line: with -v
# effarch prefixes it ("effarch: INFO: targets.native_log: tvm: [15:49:08] ...").
TVM_LOG_LINE = re.compile(r"\[\d\d:\d\d:\d\d\] \S+\.(cc|h|cpp):\d+: ")
KILLED = -9  # Popen's returncode for a process ended by SIGKILL
TIMEOUT_S = 300  # one compile of a tiny model takes ~15 s; a loaded machine is slower


def take_model(path: Path, *, index: int = 2) -> Path:
    """y = Gather(x, [0, index], axis 0) @ w. Constant indices lower to TVM's take in "fast" mode,
    which warns "Fast mode segfaults ..." from C++; an index >= 4 fails lowering part-way."""
    idx = numpy_helper.from_array(np.array([0, index], dtype=np.int64), "idx")
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), "w")
    nodes = [helper.make_node("Gather", ["x", "idx"], ["g"], axis=0, name="gather"),
             helper.make_node("MatMul", ["g", "w"], ["y"], name="matmul")]
    graph = helper.make_graph(nodes, "take", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [idx, w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def cli_env(cache: Path) -> dict[str, str]:
    """The environment of a child effarch with its own library cache."""
    return {**os.environ, "EFFARCH_CACHE_DIR": str(cache)}


def argv(*args: str, kill_at: str | None = None) -> list[str]:
    """``effarch ARGS`` as a command line; with ``kill_at`` it SIGKILLs itself then (see killed_cli)."""
    if kill_at is None:
        return [sys.executable, "-m", "compiler.cli", *args]
    return [sys.executable, str(Path(__file__).with_name("killed_cli.py")), kill_at, *args]


def effarch(*args: str, cache: Path, kill_at: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv(*args, kill_at=kill_at), capture_output=True, text=True, timeout=TIMEOUT_S,
                          env=cli_env(cache))


def tvm_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if TVM_LOG_LINE.search(line)]
