"""Benchmark one source model: compile it, time it against onnxruntime and PyTorch eager, report."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from compiler.driver import SourceModel


def bench_inputs(source: SourceModel, seed: int) -> dict[str, np.ndarray]:
    from compiler.numerics.reference import random_inputs

    if source.kind == "zoo":
        from compiler import zoo

        return zoo.get(source.spec.split(":", 1)[1]).sample_inputs(seed)
    return random_inputs(source.graph, seed)


def reference_onnx_path(source: SourceModel, folder: Path) -> Path:
    """The original model as a file, for the onnxruntime worker process."""
    import onnx

    if isinstance(source.reference_onnx, Path | str):
        return Path(source.reference_onnx)
    path = folder / "reference.onnx"
    onnx.save(source.reference_onnx, str(path))
    return path


def bench_model(source: SourceModel, folder: Path, *, target: str = "x86", cpu: str | None = None,
                opt_level: int = 2, warmup: int = 10, repeat: int = 50, seed: int = 0,
                artifact: Path | None = None, tuning_db: Path | None = None, bf16: bool = False) -> str:
    """The benchmark table of ``source`` as text (see ``bench_model_result`` for the rows too)."""
    return bench_model_result(source, folder, target=target, cpu=cpu, opt_level=opt_level, warmup=warmup,
                              repeat=repeat, seed=seed, artifact=artifact, tuning_db=tuning_db, bf16=bf16)[0]


def bench_model_result(source: SourceModel, folder: Path, *, target: str = "x86", cpu: str | None = None,
                       opt_level: int = 2, warmup: int = 10, repeat: int = 50, seed: int = 0,
                       artifact: Path | None = None, tuning_db: Path | None = None,
                       bf16: bool = False) -> tuple[str, Any]:
    """(the table as text, the BenchResult): callers that judge the run read its rows. ``bf16`` also
    times the model compiled with ``--precision bf16`` (row ``effarch-bf16``)."""
    from compiler.benchmark.runner import bench, format_bench
    from compiler.driver import compile_model

    if artifact is None:
        artifact = folder / "model.effarch"
        compile_model(source, artifact, target=target, cpu=cpu, opt_level=opt_level)
    tuned = None
    if tuning_db is not None:
        tuned = folder / "model.tuned.effarch"
        compile_model(source, tuned, target=target, cpu=cpu, opt_level=opt_level, tuning_db=tuning_db)
    low = None
    if bf16:
        low = folder / "model.bf16.effarch"
        compile_model(source, low, target=target, cpu=cpu, opt_level=opt_level, precision="bf16")
    inputs = bench_inputs(source, seed)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        onnx_path = reference_onnx_path(source, Path(tmp))
        result = bench(onnx_path, artifact, inputs, torch_spec=source.torch_spec, warmup=warmup, repeat=repeat,
                       tuned_artifact=tuned, bf16_artifact=low)
    return format_bench(result) + _throughput(source, result), result


def _throughput(source: SourceModel, result: Any) -> str:
    """The model's FLOPs over each runtime's median: how much of the machine each one uses."""
    from compiler.ir.stats import graph_stats

    flops = graph_stats(source.graph).flops
    if not flops:
        return ""
    rates = [f"{row.runtime} {flops / row.median_ms / 1e6:.1f}" for row in result.rows if row.median_ms]
    return f"\nGFLOP/s ({flops / 1e9:.3f} GFLOP per run): " + ", ".join(rates) if rates else ""
