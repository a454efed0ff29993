"""effarch verify: per-pass numerics, bisection to a planted wrong pass, reproducer replay."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np
import pytest

import passes  # noqa: F401  (registers every pass)
from compiler.cli.main import main
from compiler.debugging.bisect import bisect_pipeline
from compiler.debugging.numeric_check import NumericCheckInstrument, run_graph
from compiler.debugging.reproducer import replay, replay_and_report
from compiler.driver import load_model
from compiler.errors import EffarchError
from compiler.numerics.reference import random_inputs
from compiler.pass_manager import PassManager
from tests.debugging.models import small_onnx

PIPELINE = "fold-constants,eliminate-dead-code,{bad},fold-constants,eliminate-dead-code"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _setup(tmp_path: Path) -> tuple[object, dict, dict]:
    source = load_model(str(small_onnx(tmp_path / "m.onnx")))
    inputs = random_inputs(source.graph, seed=3)
    return source, inputs, run_graph(source.reference_onnx, inputs)


def test_numeric_instrument_names_the_first_broken_pass(tmp_path: Path, flip_sign: str) -> None:
    source, inputs, expected = _setup(tmp_path)
    check = NumericCheckInstrument(inputs, expected)
    PassManager(PIPELINE.format(bad=flip_sign), instruments=[check]).run(source.graph.clone())
    assert [r.ok for r in check.rows] == [True, True, False, False, False]
    assert check.first_bad is not None and check.first_bad.spec == flip_sign and check.first_bad.index == 3
    # The model that went into the wrong pass is the folded one: no Mul node left.
    assert [n.op_type for n in check.bad_input.graph.node] == ["MatMul", "Add", "Relu"]
    assert check.rows[0].checks[0].max_abs <= check.rows[0].checks[0].tolerance
    assert check.rows[2].checks[0].cosine < 0.999


def test_bisect_finds_the_wrong_pass_among_correct_ones(tmp_path: Path, flip_sign: str) -> None:
    source, inputs, expected = _setup(tmp_path)
    result = bisect_pipeline(source.graph, PIPELINE.format(bad=flip_sign), inputs, expected)
    assert result.guilty == flip_sign and result.first_bad == 3
    # The last and first graphs, then a binary search: 2 + ceil(log2(steps)) onnxruntime runs at most.
    assert len(result.log) <= 2 + math.ceil(math.log2(len(result.steps)))
    assert result.before is not None and result.before.op_counts() == {"MatMul": 1, "Add": 1, "Relu": 1}


def test_bisect_of_a_correct_pipeline_names_no_pass(tmp_path: Path) -> None:
    source, inputs, expected = _setup(tmp_path)
    result = bisect_pipeline(source.graph, "fold-constants,eliminate-dead-code", inputs, expected)
    assert result.first_bad is None and result.guilty is None


def test_verify_cli_bisects_writes_and_replays_a_reproducer(tmp_path: Path, flip_sign: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    model, repro = small_onnx(tmp_path / "m.onnx"), tmp_path / "bad.zip"
    pipeline = PIPELINE.format(bad=flip_sign)
    code, out, err = _run(capsys, "verify", str(model), "--pipeline", pipeline, "--bisect",
                          "--reproducer-out", str(repro))
    assert code == 1, err
    assert f"first pass to break tolerance: step 3 of 6, '{flip_sign}'" in out
    assert set(zipfile.ZipFile(repro).namelist()) >= {"input.onnx", "pipeline.txt", "inputs.npz"}
    replayed = replay(repro)
    assert replayed.pipeline == flip_sign and not replayed.ok and not replayed.error
    # The pass alone flips the output: its error against its own input is as large as against the original.
    assert replayed.against_input[0].cosine < 0.999 and not replayed.against_input[0].ok
    assert "reproduced: the pass breaks tolerance" in replayed.report()
    written: list[str] = []
    assert replay_and_report(repro, written.append) == 1 and written == [replayed.report()]


def test_verify_cli_per_pass_table_on_a_correct_pipeline(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    model = small_onnx(tmp_path / "m.onnx")
    np.savez(tmp_path / "x.npz", x=np.ones((2, 4), np.float32))
    code, out, err = _run(capsys, "verify", str(model), "-O2", "--inputs", str(tmp_path / "x.npz"))
    assert code == 0, err
    assert "fold-constants" in out and "cosine" in out and "BROKEN" not in out
    assert "pass runs within tolerance" in out


def test_verify_cli_per_pass_mode_fails_and_names_the_pass(tmp_path: Path, flip_sign: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    model = small_onnx(tmp_path / "m.onnx")
    code, out, _ = _run(capsys, "verify", str(model), "--pipeline", f"eliminate-dead-code,{flip_sign}")
    assert code == 1 and f"step 2, '{flip_sign}'" in out and "BROKEN" in out


def test_replay_of_a_correct_pass_is_not_reproduced(tmp_path: Path) -> None:
    from compiler.debugging.reproducer import write_reproducer

    source, inputs, expected = _setup(tmp_path)
    path = write_reproducer(tmp_path / "r.zip", source.graph, "fold-constants", inputs, expected)
    result = replay(path)
    assert result.ok and "not reproduced" in result.report()


def test_replay_of_a_file_that_is_no_reproducer_says_so(tmp_path: Path) -> None:
    (tmp_path / "x.zip").write_bytes(b"not a zip")
    with pytest.raises(EffarchError, match="not a zip file"):
        replay(tmp_path / "x.zip")


def test_a_crashing_pass_gets_a_reproducer_that_replays_the_crash(tmp_path: Path, crash: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    model, repro = small_onnx(tmp_path / "m.onnx"), tmp_path / "crash.zip"
    code, out, _ = _run(capsys, "verify", str(model), "--pipeline", f"fold-constants,{crash}",
                        "--reproducer-out", str(repro))
    assert code == 1 and f"step 2, '{crash}' failed" in out
    replayed = replay(repro)
    assert not replayed.ok and "MatMul is not handled" in replayed.error
    assert "the pass failed" in replayed.report()
