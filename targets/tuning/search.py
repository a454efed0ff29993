"""``effarch tune``: MetaSchedule over the kernels the build meets, in chunks, resumable.

The budget (``trials``, earlier runs' included) is spread over the kernels by their share of the
model's time under our own schedules (timed first, by the same runner), at least one chunk each,
slowest first. Each chunk is one ``tune_tir`` call that appends its measured candidates to the
database; the evolutionary search starts from the best records already there, so a tune
interrupted (Ctrl-C, ``--time-budget``) and started again continues where it stopped. After each
chunk the index records the trials spent and the best time. At the end our schedule and the best
tuned one of every tuned kernel are timed again side by side, and those two numbers decide which
one the build uses.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import tvm
from tvm.s_tir import meta_schedule as ms

from compiler.errors import EffarchError
from targets.native_log import captured_native_logs
from targets.remote import DeviceAddress
from targets.tuning.database import KernelEntry, TuningDatabase
from targets.tuning.kernels import Kernel
from targets.tuning.measure import make_builder, make_runner, time_functions

logger = logging.getLogger(__name__)

CHUNK = 16  # candidates measured per MetaSchedule call


@dataclass(frozen=True)
class Progress:
    """Where a tune stands, passed to the progress callback after every chunk."""

    trials_done: int
    trials_total: int
    kernel: str
    kernel_index: int
    kernels: int
    elapsed_s: float
    entry: KernelEntry


@dataclass
class TuneResult:
    kernels: list[tuple[Kernel, KernelEntry]] = field(default_factory=list)
    trials_run: int = 0  # by this call (earlier runs' trials are in the entries)
    stopped: str = ""  # "" when the budget was spent, else why it stopped early
    saved_only: str = ""  # the kernels were saved, not measured (no GPU here): what to run where


def tune_kernels(kernels: list[Kernel], db: TuningDatabase, *, trials: int, time_budget_s: float | None = None,
                 tracker: DeviceAddress | None = None, chunk: int = CHUNK, seed: int = 0,
                 progress: Callable[[Progress], None] | None = None) -> TuneResult:
    """Tune ``kernels`` (``kernels.model_kernels`` of a fused module) into ``db``, ``trials`` in all."""
    t0 = time.monotonic()  # the time budget counts from here: timing our schedules is part of it
    with _sigint_seen() as interrupted:
        try:
            return _tune(kernels, db, trials, time_budget_s, tracker, chunk, seed, progress, t0, interrupted)
        except RuntimeError:
            if interrupted.is_set():
                raise KeyboardInterrupt from None
            raise


def _tune(kernels: list[Kernel], db: TuningDatabase, trials: int, time_budget_s: float | None,
          tracker: DeviceAddress | None, chunk: int, seed: int, progress: Callable[[Progress], None] | None,
          t0: float, interrupted: threading.Event) -> TuneResult:
    builder, runner = make_builder(db.tvm_target), make_runner(tracker)
    with captured_native_logs():
        _measure_own(kernels, db, builder, runner)
    if kernels and all(db.entry(k).own_ms is None for k in kernels):
        raise EffarchError(f"none of the {len(kernels)} kernels could be built and timed here with our own "
                           f"schedules, so no candidate would be either; 'effarch -v tune ...' shows the "
                           f"builder's and runner's errors")
    for k in kernels:  # records of a round cut short by Ctrl-C are in the files, not yet in the index
        if db.entry(k).trials:
            db.entry(k).tuned_ms = db.best_tuned_ms(k)
    done = sum(db.entry(k).trials for k in kernels)  # by earlier runs: they count toward ``trials``
    plan = _plan(kernels, db, max(trials - done, 0), chunk)  # this run's trials per kernel
    total = done + sum(n for _, n in plan)
    result = TuneResult([(k, db.entry(k)) for k in kernels])
    for index, (kernel, extra) in enumerate(plan):
        entry = db.entry(kernel)
        target = entry.trials + extra
        while entry.trials < target and not entry.untunable:
            if time_budget_s is not None and time.monotonic() - t0 >= time_budget_s:
                result.stopped = f"time budget of {time_budget_s:g} s spent"
                break
            n = min(chunk, target - entry.trials)
            with captured_native_logs():
                _tune_chunk(kernel, entry, db, n, builder, runner, seed + entry.trials, interrupted)
            done += n
            result.trials_run += n
            db.save()
            if progress is not None:
                progress(Progress(done, total, kernel.name, index + 1, len(plan),
                                  time.monotonic() - t0, entry))
    with captured_native_logs():
        _head_to_head([k for k in kernels if db.entry(k).tuned_ms is not None], db, builder, runner)
    db.save()
    return result


@contextlib.contextmanager
def _sigint_seen() -> Iterator[threading.Event]:
    """Record a Ctrl-C while tuning. TVM turns one that lands in native code, or that kills its
    builder and runner workers, into a ``RuntimeError`` whose text may be empty; the record tells
    that apart from a kernel MetaSchedule really cannot tune."""
    seen = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: types.FrameType | None) -> None:
        seen.set()
        if callable(previous):
            previous(signum, frame)
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, previous)


def _head_to_head(kernels: list[Kernel], db: TuningDatabase, builder: ms.builder.Builder,
                  runner: ms.runner.Runner) -> None:
    """Time our schedule and the best tuned one of each kernel again, side by side in one batch:
    the rounds ran minutes apart, on a machine whose load changes, so the choice the build makes
    rests on these two numbers."""
    pairs = []
    for k in kernels:
        tuned = db.tuned_function(k)
        if tuned is not None:
            pairs.append((k, own_schedule(k, db.tvm_target), tuned))
    funcs = [f for _, (ours, _), tuned in pairs for f in (ours, tuned)]
    times = time_functions(funcs, db.measure_target, builder, runner) if funcs else []
    for i, (k, (_, rule), _) in enumerate(pairs):
        ours_ms, tuned_ms = times[2 * i], times[2 * i + 1]
        if ours_ms is not None and tuned_ms is not None:
            entry = db.entry(k)
            entry.own_ms, entry.tuned_ms, entry.own_rule = ours_ms, tuned_ms, rule


def _quiet_metaschedule() -> None:
    """MetaSchedule prints a task table per round to stdout at INFO; its files in DIR/logs keep
    everything. Shown with ``effarch -v``. Needed before every round: each resets its loggers from
    this level."""
    if not logger.isEnabledFor(logging.INFO):
        logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)


def _measure_own(kernels: list[Kernel], db: TuningDatabase, builder: ms.builder.Builder,
                 runner: ms.runner.Runner) -> None:
    """Time our own schedule of every kernel (one build batch, one run batch): on a CPU again on every
    run, since the machine's load may have changed; on a GPU only those not timed yet (re-timing the
    91 batch-1 zoo kernels took about a minute of a 330 s call on the H200). The choice the build
    makes rests on ``_head_to_head`` either way."""
    gpu = db.tvm_target.kind.name == "cuda"
    ours = {k.key: own_schedule(k, db.tvm_target) for k in kernels}
    todo = [k for k in kernels if db.entry(k).own_ms is None or not db.entry(k).measured_against(ours[k.key][1])
            ] if gpu else kernels
    if not todo:
        return
    funcs = [ours[k.key][0] for k in todo]
    for kernel, secs in zip(todo, time_functions(funcs, db.measure_target, builder, runner), strict=True):
        db.entry(kernel).own_ms, db.entry(kernel).own_rule = secs, ours[kernel.key][1]
    db.save()


def own_schedule(kernel: Kernel, tvm_target: tvm.target.Target) -> tuple[tvm.tirx.PrimFunc, str]:
    """``kernel`` as the build schedules it without a database (our CPU schedule library, or the GPU
    rules in the CUDA build's order), and the rule that took it."""
    with tvm_target:
        if tvm_target.kind.name == "cuda":
            from targets.cuda import gpu_rules
            from targets.schedules.gpu_rules import schedule_kernel as schedule_gpu_kernel

            return schedule_gpu_kernel(kernel.name, kernel.func, tvm_target, gpu_rules())
        from targets.schedules import machine_of, schedule_kernel

        return schedule_kernel(kernel.func, tvm_target, machine_of(tvm_target))


def _plan(kernels: list[Kernel], db: TuningDatabase, trials: int, chunk: int) -> list[tuple[Kernel, int]]:
    """Each kernel's trials in this run: shares of ``trials`` by its time per model run now (ours, or its
    best tuned one), at least one chunk, rounded up to whole chunks; costliest kernels first."""
    cost = {k.key: _best_ms(db.entry(k)) * k.calls for k in kernels}
    total = sum(cost.values()) or 1.0
    ranked = sorted(kernels, key=lambda k: -cost[k.key])
    plan = []
    for k in ranked:
        share = max(chunk, math.ceil(trials * cost[k.key] / total / chunk) * chunk)
        plan.append((k, share))
    return _cap(plan, trials, chunk)


def _best_ms(entry: KernelEntry) -> float:
    times = [t for t in (entry.own_ms, entry.tuned_ms) if t is not None]
    return min(times) if times else 0.0


def _cap(plan: list[tuple[Kernel, int]], trials: int, chunk: int) -> list[tuple[Kernel, int]]:
    """Trim the plan from the cheapest kernel up until it fits ``trials`` (whole chunks kept)."""
    out, left = [], trials
    for k, n in plan:
        n = min(n, max(left, 0))
        if n <= 0:
            break
        out.append((k, n))
        left -= n
    return out


def _tune_chunk(kernel: Kernel, entry: KernelEntry, db: TuningDatabase, n: int, builder: ms.builder.Builder,
                runner: ms.runner.Runner, seed: int, interrupted: threading.Event) -> None:
    logs = db.folder / "logs"
    _quiet_metaschedule()
    try:
        ms.tune_tir(kernel.task_module(), db.measure_target, work_dir=str(logs), max_trials_global=n,
                    num_trials_per_iter=n, builder=builder, runner=runner, database=db.records,
                    space=_space(db.tvm_target), cost_model=_cost_model(), task_scheduler="round-robin",
                    seed=seed & 0x7FFFFFFF)
    except (RuntimeError, ValueError) as e:  # TVM raises RuntimeError subclasses
        if interrupted.is_set() or "KeyboardInterrupt" in str(e):
            raise KeyboardInterrupt from None  # Ctrl-C inside TVM (or in its workers) comes out as a RuntimeError
        entry.untunable = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        logger.warning("MetaSchedule cannot tune %s (%s); our schedule stays", kernel.name, entry.untunable)
        return
    if interrupted.is_set():  # it reached only the workers, whose failures MetaSchedule took as bad candidates
        raise KeyboardInterrupt
    entry.trials += n
    entry.tuned_ms = db.best_tuned_ms(kernel)


def _cost_model() -> str:
    """MetaSchedule's XGBoost model where xgboost is installed; else its random model (the GPU machine has
    no xgboost unless one is carried, as ``tools/cuda_tune.py`` says: the search then mutates the best measured
    candidates without a learned ranking)."""
    import importlib.util

    return "xgb" if importlib.util.find_spec("xgboost") is not None else "random"


def _space(target: tvm.target.Target) -> str | ms.space_generator.SpaceGenerator:
    """MetaSchedule's search space: its default for the CPUs; for CUDA its plain GPU rules. Its tensor-core
    rules (its default from sm_70) build no candidate with fp32 accumulation in TVM 0.27 (``tvm_access_ptr
    element type must match``), which every fp16/bf16 contraction here has, and our rules already put
    those on tensor cores; what tuning can add is the fp32 kernels, on CUDA cores."""
    if target.kind.name != "cuda":
        return "post-order-apply"
    return ms.space_generator.PostOrderApply(sch_rules="cuda", postprocs="cuda", mutator_probs="cuda")


def tuned_summary(result: TuneResult) -> list[tuple[str, int, float | None, float | None, str]]:
    """Per kernel: name, calls, our ms, tuned ms, which the build will use (and why)."""
    rows = []
    for k, e in sorted(result.kernels, key=lambda ke: -((ke[1].own_ms or 0.0) * ke[0].calls)):
        used = ("tuned" if e.tuned_wins else "ours (faster)" if e.tuned_ms is not None
                else f"ours (cannot tune: {e.untunable})" if e.untunable else "ours (not tuned)")
        rows.append((k.name, k.calls, e.own_ms, e.tuned_ms, used))
    return rows


def open_database(root: Path, tvm_target: tvm.target.Target, target_name: str) -> TuningDatabase:
    return TuningDatabase(root, tvm_target, target_name, create=True)
