"""``effarch compile``: TVM's C++ log lines stay off the terminal unless -v, and -v names the
schedule rule of every kernel. Run as real processes: the log lines are written to fd 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _compile(tmp_path: Path, *flags: str, model: str = "zoo:gpt") -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "compiler.cli", *flags, "compile", model, "-o", str(tmp_path / "g.effarch")]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def _gather_model(tmp_path: Path) -> str:
    """Rows 0 and 2 of the input by a Gather of constant indices: TVM's take warns "Fast mode segfaults ..."
    from C++ when it is built."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rows = numpy_helper.from_array(np.array([0, 2], np.int64), "rows")
    graph = helper.make_graph([helper.make_node("Gather", ["x", "rows"], ["y"], axis=0)], "gather",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [rows])
    path = tmp_path / "gather.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


def test_tvm_log_lines_only_with_verbose(tmp_path: Path) -> None:
    model = _gather_model(tmp_path)
    quiet = _compile(tmp_path, model=model)
    assert quiet.returncode == 0, quiet.stderr
    assert "Fast mode segfaults" not in quiet.stderr + quiet.stdout
    loud = _compile(tmp_path, "-v", model=model)
    assert loud.returncode == 0, loud.stderr
    assert "Fast mode segfaults" in loud.stderr


def test_verbose_lists_the_rule_of_every_kernel(tmp_path: Path) -> None:
    loud = _compile(tmp_path, "-v")
    lines = [line for line in loud.stderr.splitlines() if "scheduled by" in line]
    assert lines, loud.stderr
    rules = {line.split("scheduled by")[-1].strip() for line in lines}
    assert "contraction" in rules and "stages" in rules and "none" not in rules, rules
