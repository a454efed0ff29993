"""Quiet by default: TVM's C++ log lines ("[12:00:00] .../transform.h:1261: Warning: ...") reach the
terminal only with -v, as effarch INFO lines; real processes, since TVM writes them to fd 2.
(tests/cli/test_compile_verbose.py checks the same for a successful compile of zoo:gpt.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.robustness.processes import effarch, take_model, tvm_lines

TVM_INFO = "effarch: INFO: targets.native_log: tvm: "


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return take_model(tmp_path_factory.mktemp("model") / "take.onnx")


def test_compile_and_run_show_tvm_lines_only_with_verbose(model: Path, tmp_path: Path) -> None:
    art, cache = tmp_path / "m.effarch", tmp_path / "cache"
    quiet = effarch("compile", str(model), "-o", str(art), cache=cache)
    assert quiet.returncode == 0, quiet.stderr
    assert tvm_lines(quiet.stdout + quiet.stderr) == []
    ran = effarch("run", str(art), cache=cache)  # unpacks the library into the cache and loads it
    assert ran.returncode == 0, ran.stderr
    assert tvm_lines(ran.stdout + ran.stderr) == []
    loud = effarch("-v", "compile", str(model), "-o", str(art), cache=cache)
    assert loud.returncode == 0, loud.stderr
    lines = tvm_lines(loud.stderr)
    assert any("Fast mode segfaults" in line for line in lines), loud.stderr  # the model's take warns
    assert all(line.startswith(TVM_INFO) for line in lines), lines


def test_a_failed_lowering_ends_with_its_error_line(tmp_path: Path) -> None:
    # Lowering fails inside Relax's function scope, leaving a BlockBuilder with open blocks, which warns
    # "BlockBuilder destroyed with remaining blocks" when it dies: that line came after the error.
    model = take_model(tmp_path / "bad.onnx", index=9)
    art, cache = tmp_path / "m.effarch", tmp_path / "cache"
    quiet = effarch("compile", str(model), "-o", str(art), cache=cache)
    assert quiet.returncode == 1, quiet.stderr
    assert quiet.stderr.splitlines()[-1].startswith("effarch: error: node 'gather'"), quiet.stderr
    assert tvm_lines(quiet.stdout + quiet.stderr) == [] and not art.exists()
    loud = effarch("-v", "compile", str(model), "-o", str(art), cache=cache)
    assert loud.returncode == 1
    destroyed = [line for line in tvm_lines(loud.stderr) if "BlockBuilder destroyed" in line]
    assert destroyed and destroyed[0].startswith(TVM_INFO), loud.stderr
    assert loud.stderr.splitlines()[-1].startswith("effarch: error: node 'gather'"), loud.stderr
