"""``effarch compile``: TVM's C++ log lines stay off the terminal unless -v, and -v names the
schedule rule of every kernel. Run as real processes: the log lines are written to fd 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _compile(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    # GPT's embedding lookups make TVM's take warn "Fast mode segfaults ..." from C++.
    argv = [sys.executable, "-m", "compiler.cli", *flags, "compile", "zoo:gpt", "-o", str(tmp_path / "g.effarch")]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def test_tvm_log_lines_only_with_verbose(tmp_path: Path) -> None:
    quiet = _compile(tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert "Fast mode segfaults" not in quiet.stderr + quiet.stdout
    loud = _compile(tmp_path, "-v")
    assert loud.returncode == 0, loud.stderr
    assert "Fast mode segfaults" in loud.stderr


def test_verbose_lists_the_rule_of_every_kernel(tmp_path: Path) -> None:
    loud = _compile(tmp_path, "-v")
    lines = [line for line in loud.stderr.splitlines() if "scheduled by" in line]
    assert lines, loud.stderr
    rules = {line.split("scheduled by")[-1].strip() for line in lines}
    assert "contraction" in rules and "stages" in rules and "none" not in rules, rules
