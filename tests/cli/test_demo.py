"""``effarch demo`` judges the whole run: a binary that cannot be timed fails the demo."""

from __future__ import annotations

from pathlib import Path

import pytest

from compiler.benchmark import model as bench_model
from compiler.benchmark.runner import BenchResult, BenchRow
from compiler.cli.commands.demo import run_demo


def _timing(ok: bool) -> BenchResult:
    failed = BenchRow("effarch", None, None, None, 0, "worker exited with status 1: boom")
    effarch = BenchRow("effarch", 1.0, 0.9, 1.1, 2) if ok else failed
    return BenchResult([effarch, BenchRow("onnxruntime", 1.0, 0.9, 1.1, 2)], 1, 2, 1, 2)


def test_demo_fails_when_the_binary_cannot_be_timed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(bench_model, "bench_model_result", lambda *a, **k: ("latency table", _timing(False)))
    code = run_demo("mlp", tmp_path / "demo", warmup=1, repeat=2)
    out, err = capsys.readouterr()
    assert code == 1 and "Demo FAILED" in out  # `make demo` runs the passing case on every setup
    assert "could not be timed: worker exited with status 1: boom" in err
