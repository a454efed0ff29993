"""Tuning: MetaSchedule over the kernels the build meets; the build uses a record only where it won.

``effarch tune`` lowers the model exactly as ``effarch compile`` does (same passes, same layout and
packing, same precision and Relax fusion) and tunes the resulting kernels (``search``); ``effarch
compile --tuning-db`` looks every kernel up (``database.TunedSchedules``) before our schedule rules
run. For CUDA the kernels are saved in the database, so they can be lowered on a machine without a
GPU and tuned on one that has it; the database shipped in ``tuning/bundled`` is applied to every
CUDA build it matches.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import tvm

from compiler.ir.graph import Graph
from targets.tuning.database import AppliedTuning, TunedSchedules, TuningDatabase
from targets.tuning.kernels import model_kernels
from targets.tuning.search import Progress, TuneResult, tune_kernels, tuned_summary


def fused_module(g: Graph, target: str, cpu: str | None, precision: str = "fp32"
                 ) -> tuple[tvm.IRModule, tvm.target.Target]:
    """The model's Relax module after legalization and fusion, before any schedule: the kernels the
    -O2 build schedules (same layout, precision and weight transforms as ``targets.build.build``)."""
    from compiler.errors import EffarchError
    from targets.base import get_target
    from targets.build import check_build_options, lowering_options
    from targets.lowering.to_relax import lower
    from targets.native_log import captured_native_logs

    spec = get_target(target)
    if not spec.tunable:
        raise EffarchError(f"effarch tune supports --target x86, arm and cuda; '{target}' is not one")
    check_build_options(spec, cpu, precision, True)
    tvm_target = spec.tvm_target(cpu)
    with captured_native_logs():
        lowered = lower(g, **lowering_options(spec, cpu, 2, channels_last=spec.channels_last_for(g, precision),
                                              precision=precision))
        mod, _, _ = spec.prepare(lowered.mod, list(lowered.param_names), list(lowered.params), precision=precision)
        with tvm_target:
            fused = spec.kernels_pipeline(tvm_target)(mod)
    return fused, tvm_target


def tune_model(g: Graph | None, db_dir: Path, *, target: str = "x86", cpu: str | None = None, trials: int = 256,
               time_budget_s: float | None = None, rpc: str | None = None, chunk: int | None = None,
               precision: str = "fp32", progress: Callable[[Progress], None] | None = None) -> TuneResult:
    """Tune ``g``'s kernels into ``db_dir``. A GPU target's kernels are saved in the database first;
    without ``g`` the saved ones are tuned; without the GPU here, saving them is all it does
    (``TuneResult.saved_only`` says so)."""
    from compiler.errors import EffarchError
    from targets.base import get_target
    from targets.tuning.measure import check_tracker, measuring_device, parse_rpc
    from targets.tuning.search import CHUNK

    tracker = parse_rpc(rpc)
    if tracker is not None:
        check_tracker(tracker)  # before the slow lowering
    spec = get_target(target)
    if g is not None:
        mod, tvm_target = fused_module(g, target, cpu, precision)
        kernels = model_kernels(mod)
    else:
        tvm_target, kernels = spec.tvm_target(cpu), []
    db = TuningDatabase(Path(db_dir), tvm_target, target, create=True)
    if tvm_target.kind.name == "cuda":
        if kernels:
            db.save_tasks(kernels)
        else:
            kernels = db.load_tasks()
            if not kernels:
                raise EffarchError(f"{db.folder} holds no saved kernels; give a model: effarch tune MODEL "
                                   f"--db {db_dir} --target {target} --arch {spec.resolve_cpu(cpu)}")
        absent = measuring_device(tvm_target)
        if absent:
            return TuneResult([(k, db.entry(k)) for k in kernels], saved_only=(
                f"{len(kernels)} kernels saved in {db.folder}, none measured: {absent}. On a machine with that GPU "
                f"run: effarch tune --db {db_dir} --target {target} --arch {spec.resolve_cpu(cpu)}"))
    elif g is None:
        raise EffarchError(f"effarch tune --target {target} needs a model")
    return tune_kernels(kernels, db, trials=trials, time_budget_s=time_budget_s, tracker=tracker,
                        chunk=chunk or CHUNK, progress=progress)


__all__ = ["AppliedTuning", "Progress", "TuneResult", "TunedSchedules", "TuningDatabase", "fused_module",
           "tune_model", "tuned_summary"]
