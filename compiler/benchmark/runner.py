"""Benchmark a compiled artifact against onnxruntime and PyTorch eager on the same inputs.

Each measurement runs in its own process (``compiler.benchmark.worker``): TVM's worker threads spin after
a run and steal the two cores from any other runtime in the same process, which once made onnxruntime
look 3-4x slower than it is. Processes alternate between runtimes over a few rounds so that slow
phases of this shared machine hit every runtime alike; the reported figure is the median over all
runs after warm-up, with the 10th and 90th percentiles as its spread.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

RUNTIMES = ("effarch", "effarch-tuned", "effarch-bf16", "onnxruntime", "pytorch-eager")
# Rows only when asked for: a tuned artifact, a --precision bf16 one.
OPTIONAL = frozenset({"effarch-tuned", "effarch-bf16"})
WORKER_TIMEOUT_S = 600


@dataclass(frozen=True)
class BenchRow:
    """One runtime's latencies in milliseconds, or why there are none (``note``)."""

    runtime: str
    median_ms: float | None
    p10_ms: float | None
    p90_ms: float | None
    runs: int
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.median_ms is not None


@dataclass
class BenchResult:
    rows: list[BenchRow]
    warmup: int
    repeat: int
    rounds: int
    threads: int
    inputs: dict[str, str] = field(default_factory=dict)  # name -> "float32[8, 784]"

    def row(self, runtime: str) -> BenchRow:
        return next(r for r in self.rows if r.runtime == runtime)

    def speedup_over_effarch(self, runtime: str) -> float | None:
        """effarch's median / this runtime's median: above 1 means this runtime is faster."""
        base, other = self.row("effarch"), self.row(runtime)
        if base.median_ms is None or other.median_ms is None or other.median_ms <= 0:
            return None
        return base.median_ms / other.median_ms


def _row(runtime: str, times_s: list[float], errors: list[str]) -> BenchRow:
    if not times_s:
        return BenchRow(runtime, None, None, None, 0, errors[0] if errors else "n/a")
    p10, median, p90 = np.percentile(np.asarray(times_s) * 1e3, [10, 50, 90])
    return BenchRow(runtime, float(median), float(p10), float(p90), len(times_s), "; ".join(errors[:1]))


def _default_threads() -> int:
    # Intra-op threads = the cores this process may use (2 on the project's machines).
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _run_worker(runtime: str, model: str, inputs: Path, warmup: int, repeat: int,
                threads: int) -> tuple[list[float], str | None]:
    cmd = [sys.executable, "-m", "compiler.benchmark.worker", runtime, model, str(inputs),
           "--warmup", str(warmup), "--repeat", str(repeat), "--threads", str(threads)]
    log.debug("bench: %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S,
                              cwd=_project_root())
    except subprocess.TimeoutExpired:
        return [], f"timed out after {WORKER_TIMEOUT_S} s"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return [], f"worker exited with status {proc.returncode}: {tail}"
    result = json.loads(lines[-1])
    return list(result.get("times_s", [])), result.get("error")


def _project_root() -> Path:
    """Workers import ``compiler`` and ``targets``; run them where those packages are importable."""
    return Path(__file__).resolve().parents[2]


def _jobs(onnx_path: Path | None, artifact_path: Path | None, torch_spec: str | None,
          tuned_path: Path | None = None, bf16_path: Path | None = None) -> dict[str, str | None]:
    # Absolute: the workers run in the project root, not in the caller's folder.
    return {"effarch": str(artifact_path.absolute()) if artifact_path else None,
            "effarch-tuned": str(tuned_path.absolute()) if tuned_path else None,
            "effarch-bf16": str(bf16_path.absolute()) if bf16_path else None,
            "onnxruntime": str(onnx_path.absolute()) if onnx_path else None,
            "pytorch-eager": torch_spec}


def bench(onnx_path: str | Path | None, artifact_path: str | Path | None, inputs: dict[str, np.ndarray], *,
          torch_spec: str | None, warmup: int = 10, repeat: int = 50, rounds: int = 3,
          threads: int | None = None, tuned_artifact: str | Path | None = None,
          bf16_artifact: str | Path | None = None) -> BenchResult:
    """Time each runtime on ``inputs`` in separate processes; ``repeat`` runs in all, split over rounds.

    A runtime whose source is None gets an "n/a" row (``effarch-tuned`` and ``effarch-bf16`` none); one
    that fails gets a row with the error. ``tuned_artifact``: the same model compiled with
    ``--tuning-db``; ``bf16_artifact``: compiled with ``--precision bf16``.
    """
    jobs = _jobs(Path(onnx_path) if onnx_path else None, Path(artifact_path) if artifact_path else None,
                 torch_spec, Path(tuned_artifact) if tuned_artifact else None,
                 Path(bf16_artifact) if bf16_artifact else None)
    active = [(rt, rt, str(jobs[rt])) for rt in RUNTIMES if jobs[rt] is not None]
    measured, meta = time_jobs(active, inputs, warmup=warmup, repeat=repeat, rounds=rounds, threads=threads)
    rows = [measured[rt] if jobs[rt] else BenchRow(rt, None, None, None, 0, "n/a")
            for rt in RUNTIMES if jobs[rt] or rt not in OPTIONAL]
    return BenchResult(rows, *meta)


def time_jobs(jobs: list[tuple[str, str, str]], inputs: dict[str, np.ndarray], *, warmup: int = 10,
              repeat: int = 50, rounds: int = 3, threads: int | None = None
              ) -> tuple[dict[str, BenchRow], tuple[int, int, int, int, dict[str, str]]]:
    """Time each ``(label, runtime, model)`` job in its own processes, alternating over ``rounds``;
    returns a row per label and (warmup, repeat, rounds, threads, input shapes) for the report."""
    threads = threads or _default_threads()
    rounds = max(1, min(rounds, repeat))
    per_round = math.ceil(repeat / rounds)
    times: dict[str, list[float]] = {label: [] for label, _, _ in jobs}
    errors: dict[str, list[str]] = {label: [] for label, _, _ in jobs}
    with tempfile.TemporaryDirectory(prefix="effarch-bench-") as tmp:
        npz = Path(tmp) / "inputs.npz"
        # dict order is the graph's input order; the workers rely on it. (numpy's stubs type the
        # first keyword argument as allow_pickle, so a ** of arrays looks wrong to mypy.)
        np.savez(npz, **inputs)  # type: ignore[arg-type]
        for r in range(rounds):
            # Rotate the order every round so no job always runs first (or right after another).
            for label, runtime, model in jobs[r % len(jobs):] + jobs[:r % len(jobs)] if jobs else []:
                got, err = _run_worker(runtime, model, npz, warmup, per_round, threads)
                times[label] += got
                if err:
                    log.warning("bench: %s failed: %s", label, err)
                    errors[label].append(err)
    rows = {label: _row(label, times[label], errors[label]) for label, _, _ in jobs}
    shapes = {k: f"{v.dtype}{list(v.shape)}" for k, v in inputs.items()}
    return rows, (warmup, per_round * rounds, rounds, threads, shapes)


def _versus(result: BenchResult, row: BenchRow) -> str:
    if row.runtime == "effarch":
        return "-" if row.ok else ""
    speedup = result.speedup_over_effarch(row.runtime)
    if speedup is None:
        return ""
    return f"{speedup:.2f}x faster" if speedup >= 1 else f"{1 / speedup:.2f}x slower"


def _cells(result: BenchResult, row: BenchRow) -> list[str]:
    if not row.ok:
        return [row.runtime, "n/a", "", "", "0", row.note]
    assert row.median_ms is not None and row.p10_ms is not None and row.p90_ms is not None
    return [row.runtime, f"{row.median_ms:.3f}", f"{row.p10_ms:.3f}", f"{row.p90_ms:.3f}", str(row.runs),
            _versus(result, row)]


def _summary(result: BenchResult) -> list[str]:
    lines = []
    for rt in [r.runtime for r in result.rows if r.runtime != "effarch"]:
        speedup = result.speedup_over_effarch(rt)
        if speedup is not None:
            faster, slower, x = (rt, "effarch", speedup) if speedup >= 1 else ("effarch", rt, 1 / speedup)
            lines.append(f"{faster} is {x:.2f}x faster than {slower}")
    return lines


def format_bench(result: BenchResult) -> str:
    """A text table: one row per runtime, medians with p10/p90, and each peer's speed against effarch."""
    header = ["runtime", "median ms", "p10 ms", "p90 ms", "runs", "vs effarch"]
    rows = [header] + [_cells(result, r) for r in result.rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        middle = [c.rjust(w) for c, w in zip(cells[1:5], widths[1:5], strict=True)]
        return "  ".join([first, *middle, cells[5]]).rstrip()

    inputs = ", ".join(f"{k} {v}" for k, v in result.inputs.items())
    head = (f"inputs: {inputs}; {result.warmup} warm-up runs per process, {result.repeat} timed runs in "
            f"{result.rounds} alternating rounds, {result.threads} threads")
    return "\n".join([head, *map(line, rows), *_summary(result)])


def machine_description() -> str:
    """This machine as benchmark tables name it: CPU model, LLVM's name for it and its vector ISA."""
    from targets.base import get_target

    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")),
                 platform.processor() or "unknown CPU")
    target = get_target("x86")
    cpu = target.default_cpu()
    isa = "AVX-512" if "avx512f" in target.required_features(cpu) else "AVX2"
    return f"{model} (LLVM: {cpu}, {isa}, {platform.machine()})"
