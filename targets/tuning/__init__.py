"""Tuning: MetaSchedule over the kernels the build meets; the build uses a record only where it won.

``effarch tune`` lowers the model exactly as ``effarch compile`` does (same passes, same layout and
packing, same Relax fusion) and tunes the resulting kernels (``search``); ``effarch compile
--tuning-db`` looks every kernel up (``database.TunedSchedules``) before our schedule rules run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import tvm

from compiler.ir.graph import Graph
from targets.tuning.database import AppliedTuning, TunedSchedules, TuningDatabase
from targets.tuning.search import Progress, TuneResult, tune_kernels, tuned_summary


def fused_module(g: Graph, target: str, cpu: str | None) -> tuple[tvm.IRModule, tvm.target.Target]:
    """The model's Relax module after legalization and fusion, before any schedule: the kernels the
    -O2 build schedules."""
    from compiler.errors import EffarchError
    from targets.base import LLVMTarget, get_target
    from targets.build import lowering_options
    from targets.lowering.to_relax import lower
    from targets.native_log import captured_native_logs
    from targets.schedules.pipeline import cpu_pipeline

    spec = get_target(target)
    if not isinstance(spec, LLVMTarget):
        raise EffarchError(f"effarch tune supports the CPU targets (x86, arm); '{target}' is not one")
    tvm_target = spec.tvm_target(cpu)
    with captured_native_logs():
        mod = lower(g, **lowering_options(spec, cpu, 2)).mod
        with tvm_target:
            fused = cpu_pipeline(tvm_target, schedule=False, stop_after_schedules=True)(mod)
    return fused, tvm_target


def tune_model(g: Graph, db_dir: Path, *, target: str = "x86", cpu: str | None = None, trials: int = 256,
               time_budget_s: float | None = None, rpc: str | None = None, chunk: int | None = None,
               progress: Callable[[Progress], None] | None = None) -> TuneResult:
    from targets.tuning.measure import check_tracker, parse_rpc
    from targets.tuning.search import CHUNK

    tracker = parse_rpc(rpc)
    if tracker is not None:
        check_tracker(tracker)  # before the slow lowering
    mod, tvm_target = fused_module(g, target, cpu)
    db = TuningDatabase(Path(db_dir), tvm_target, target, create=True)
    return tune_kernels(mod, db, trials=trials, time_budget_s=time_budget_s, tracker=tracker,
                        chunk=chunk or CHUNK, progress=progress)


__all__ = ["AppliedTuning", "Progress", "TuneResult", "TunedSchedules", "TuningDatabase", "fused_module",
           "tune_model", "tuned_summary"]
