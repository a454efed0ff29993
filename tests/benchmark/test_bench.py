"""The benchmark: every runtime measured in its own process, rows and ratios reported.

These are measurements, never timed assertions: the machine is shared and noisy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from compiler import zoo
from compiler.benchmark.runner import OPTIONAL, RUNTIMES, BenchResult, BenchRow, bench, format_bench
from compiler.benchmark.worker import load_torch, measure


@pytest.fixture(scope="module")
def mlp_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from compiler.frontends.onnx import import_onnx
    from targets.build import build_artifact

    out = tmp_path_factory.mktemp("bench") / "mlp.effarch"
    return build_artifact(import_onnx(zoo.get("mlp").onnx_path()), out)


def test_bench_mlp_reports_every_runtime(mlp_artifact: Path) -> None:
    model = zoo.get("mlp")
    result = bench(model.onnx_path(), mlp_artifact, model.sample_inputs(0), torch_spec="zoo:mlp",
                   warmup=1, repeat=4, rounds=2, tuned_artifact=mlp_artifact, bf16_artifact=mlp_artifact)
    assert [r.runtime for r in result.rows] == list(RUNTIMES)  # the tuned and bf16 rows too, as given
    for row in result.rows:
        assert row.ok, row
        assert row.runs == 4 and row.note == ""
        assert row.p10_ms is not None and row.median_ms is not None and row.p90_ms is not None
        assert 0 < row.p10_ms <= row.median_ms <= row.p90_ms
    speedup = result.speedup_over_effarch("onnxruntime")
    assert speedup is not None and speedup > 0
    text = format_bench(result)
    assert all(rt in text for rt in RUNTIMES)
    assert "than effarch" in text or "effarch is" in text


def test_missing_sources_give_na_rows() -> None:
    model = zoo.get("mlp")
    result = bench(model.onnx_path(), None, model.sample_inputs(0), torch_spec=None, warmup=0, repeat=2)
    assert result.row("onnxruntime").ok and result.row("onnxruntime").runs == 2
    for rt in ("effarch", "pytorch-eager"):
        assert not result.row(rt).ok and result.row(rt).note == "n/a"
        assert result.speedup_over_effarch(rt) is None
    assert not OPTIONAL & {r.runtime for r in result.rows}  # tuned, bf16: only when asked for
    assert "n/a" in format_bench(result)


def test_failing_runtime_is_reported_not_raised(tmp_path: Path) -> None:
    model = zoo.get("mlp")
    missing = tmp_path / "missing.effarch"
    result = bench(model.onnx_path(), missing, model.sample_inputs(0), torch_spec=None, warmup=0, repeat=1)
    row = result.row("effarch")
    assert not row.ok and row.runs == 0 and row.note not in ("", "n/a")
    assert row.note in format_bench(result)


def test_worker_runs_a_pt2_program(tmp_path: Path) -> None:
    module, example = zoo.get("mlp").build()
    path = tmp_path / "mlp.pt2"
    torch.export.save(torch.export.export(module, example), str(path))
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, x=example[0].numpy())
    result = measure("pytorch-eager", str(path), inputs, warmup=0, repeat=3, threads=1)
    assert len(result["times_s"]) == 3 and all(t > 0 for t in result["times_s"])


def test_zoo_spec_calls_inputs_by_name() -> None:
    _, order = load_torch("zoo:minilm")
    assert order == ["input_ids", "attention_mask"]


def test_format_states_ratios_against_effarch() -> None:
    rows = [BenchRow("effarch", 10.0, 9.0, 12.0, 5), BenchRow("onnxruntime", 2.5, 2.0, 3.0, 5),
            BenchRow("pytorch-eager", 40.0, 35.0, 50.0, 5)]
    result = BenchResult(rows, warmup=1, repeat=5, rounds=1, threads=2, inputs={"x": "float32[1]"})
    text = format_bench(result)
    assert "onnxruntime is 4.00x faster than effarch" in text
    assert "effarch is 4.00x faster than pytorch-eager" in text
    row_lines = {ln.split()[0]: ln for ln in text.splitlines()[2:5]}
    assert row_lines["onnxruntime"].endswith("4.00x faster")
    assert row_lines["pytorch-eager"].endswith("4.00x slower")


def test_bench_model_reports_gflops_of_each_runtime(mlp_artifact: Path, tmp_path: Path) -> None:
    from compiler.benchmark.model import bench_model
    from compiler.driver import load_model
    from compiler.ir.stats import graph_stats

    source = load_model("zoo:mlp")
    text = bench_model(source, tmp_path, warmup=1, repeat=2, artifact=mlp_artifact)
    line = next(ln for ln in text.splitlines() if ln.startswith("GFLOP/s"))
    assert f"({graph_stats(source.graph).flops / 1e9:.3f} GFLOP per run)" in line
    rates = dict(part.rsplit(" ", 1) for part in line.split(": ", 1)[1].split(", "))
    assert set(rates) == set(RUNTIMES) - OPTIONAL and all(float(v) > 0 for v in rates.values())


def test_relative_paths_are_timed_from_the_callers_folder(mlp_artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(mlp_artifact.parent)  # as `effarch demo` passes out/demo/model.effarch
    result = bench(None, Path(mlp_artifact.name), zoo.get("mlp").sample_inputs(0), torch_spec=None, warmup=1, repeat=2)
    assert result.row("effarch").ok, result.row("effarch").note
