"""The tuning database: MetaSchedule's records plus what effarch measured of its own schedules.

Layout of ``DIR``: one folder per target (``x86-znver3-2c-<hash>``: target name, CPU, cores and a
hash of the whole TVM target; ``cuda-sm_90``: a GPU architecture), holding MetaSchedule's
``database_workload.json`` and ``database_tuning_record.json`` (its best schedules, appended as they
are measured) and effarch's ``kernels.json``: per workload key, the kernel's name, trials spent, and
the median time of our own schedule and of the best tuned one, both measured by the same runner. The
build uses a tuned schedule only where it measured clearly faster than ours (``MIN_SPEEDUP``).
``tasks.json`` keeps the kernels themselves (TVM's JSON of each function), so a machine that cannot lower the
model, or has no GPU, can hand them to one that measures (``effarch tune --db DIR`` without a model).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tvm
from tvm.s_tir import meta_schedule as ms

from compiler.errors import EffarchError
from targets.tuning.kernels import ENTRY, Kernel, model_kernels, tuning_form, workload_key
from targets.tuning.measure import load_cpu_intrinsics, median_ms

logger = logging.getLogger(__name__)

INDEX = "kernels.json"
INDEX_FORMAT = 1
TASKS = "tasks.json"
# A tuned schedule replaces ours only when its kernel measured this much faster alone: a kernel timed by
# itself, in a loop, is not the kernel inside the model (H200, 2026-12-04, three A/B pairs in one call:
# MiniLM fp32 b1's two records that won by 1.08x and 1.02x alone made the model 0.284 -> 0.296-0.301 ms;
# the MLP b8's two, 2.65x and 1.11x, took it 0.078 -> 0.047 ms).
MIN_SPEEDUP = 1.1


@dataclass
class KernelEntry:
    """What the database knows of one workload on one target."""

    kernel: str
    trials: int = 0
    own_ms: float | None = None
    tuned_ms: float | None = None
    untunable: str = ""  # why MetaSchedule could not tune it, if it could not
    own_rule: str = ""  # the rule that made the schedule own_ms timed ("" in databases older than the field)

    @property
    def tuned_wins(self) -> bool:
        """Whether a build takes the tuned schedule: none of ours timed, or the tuned one ``MIN_SPEEDUP``
        times faster."""
        return self.tuned_ms is not None and (self.own_ms is None or self.tuned_ms * MIN_SPEEDUP <= self.own_ms)

    def measured_against(self, rule: str) -> bool:
        """Whether own_ms timed the schedule ``rule`` makes (an entry older than the field: assumed so)."""
        return not self.own_rule or self.own_rule == rule

    def merged(self, newer: KernelEntry) -> KernelEntry:
        """This kernel measured again by another tune (both tunes' records kept): our schedule's newer time,
        the better tuned time of the two (the record a build would take), the larger trial count (a resumed
        tune counts the earlier trials too)."""
        tuned = [t for t in (self.tuned_ms, newer.tuned_ms) if t is not None]
        own = newer if newer.own_ms is not None else self
        return KernelEntry(newer.kernel, max(self.trials, newer.trials), own.own_ms,
                           min(tuned) if tuned else None, newer.untunable or self.untunable, own.own_rule)


def target_folder(tvm_target: tvm.target.Target, name: str) -> str:
    """``x86-znver3-2c-1a2b3c4d``: readable, and exact through the hash of the whole target. A GPU's
    folder is named by its architecture alone (``cuda-sm_90``): TVM may fill in a GPU target's
    attributes from the device it runs beside, and the records match kernels by structure anyway."""
    if tvm_target.kind.name == "cuda":
        return f"{name}-{tvm_target.attrs['arch']}"
    cfg = json.loads(str(tvm_target)) if str(tvm_target).startswith("{") else {}
    cpu = cfg.get("mcpu") or str(tvm_target.attrs.get("mcpu", "")) or "generic"
    cores = cfg.get("num-cores") or tvm_target.attrs.get("num-cores", 0)
    digest = hashlib.sha256(str(tvm_target).encode()).hexdigest()[:8]
    return f"{name}-{cpu}-{int(cores)}c-{digest}"


@dataclass
class TuningDatabase:
    """``DIR``'s records for one target; ``create=False`` refuses a folder that holds none."""

    root: Path
    tvm_target: tvm.target.Target
    target_name: str
    create: bool = False
    entries: dict[str, KernelEntry] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if not self.create and not self.root.is_dir():
            raise EffarchError(f"tuning database '{self.root}' does not exist; make one with "
                               f"'effarch tune MODEL --db {self.root}'")
        if self.create:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.entries = self._read_index()
        self._records: ms.database.Database | None = None

    @property
    def records(self) -> ms.database.Database | None:
        """MetaSchedule's records (None: none for this target here), read on first use: a build that
        finds no winning entry in the index never parses them."""
        if self._records is None and self.folder.is_dir():
            if self.tvm_target.kind.name != "cuda":  # CUDA records use no tensor intrinsic (``search._space``)
                load_cpu_intrinsics()
            self._records = ms.database.JSONDatabase(
                path_workload=str(self.folder / "database_workload.json"),
                path_tuning_record=str(self.folder / "database_tuning_record.json"),
                allow_missing=True, module_equality="structural")
        return self._records

    @property
    def measure_target(self) -> tvm.target.Target:
        """The target candidates are generated and built for: the build's, plus the limits
        MetaSchedule's GPU rules read (``targets.cuda.tuning_target``)."""
        if self.tvm_target.kind.name == "cuda":
            from targets.cuda import tuning_target

            return tuning_target(self.tvm_target)
        return self.tvm_target

    @property
    def folder(self) -> Path:
        return self.root / target_folder(self.tvm_target, self.target_name)

    # ---- effarch's index ----------------------------------------------------------------------
    def _read_index(self) -> dict[str, KernelEntry]:
        kernels = self._read_kernels(INDEX, f"delete {self.folder} and tune again")
        try:
            return {k: KernelEntry(**v) for k, v in kernels.items()}
        except TypeError as e:
            raise EffarchError(f"tuning database index {self.folder / INDEX} is unreadable ({e}); delete "
                               f"{self.folder} and tune again") from None

    def _read_kernels(self, name: str, fix: str) -> dict[str, Any]:
        """The ``kernels`` map of the JSON file ``name`` in the target folder ({} when absent)."""
        path = self.folder / name
        if not path.exists():
            return {}
        try:
            data = json.loads(path.read_text())
            if data.get("format") != INDEX_FORMAT:
                raise ValueError(f"format {data.get('format')}, expected {INDEX_FORMAT}")
            return dict(data["kernels"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise EffarchError(f"tuning database file {path} is unreadable ({e}); {fix}") from None

    def save(self) -> None:
        """Write the index atomically: an interrupted tune leaves the previous one whole."""
        from compiler.fileio import atomic_write

        data = {"format": INDEX_FORMAT, "target": json.loads(str(self.tvm_target)),
                "kernels": {k: asdict(v) for k, v in sorted(self.entries.items())}}
        with atomic_write(self.folder / INDEX) as f:
            f.write(json.dumps(data, indent=1).encode())

    def entry(self, kernel: Kernel) -> KernelEntry:
        return self.entries.setdefault(kernel.key, KernelEntry(kernel.name))

    # ---- the kernels themselves ---------------------------------------------------------------
    def save_tasks(self, kernels: list[Kernel]) -> None:
        """Add ``kernels`` to ``tasks.json`` (a kernel met again keeps the larger call count)."""
        from compiler.fileio import atomic_write

        tasks = self._read_tasks()
        for k in kernels:
            old = tasks.get(k.key)
            tasks[k.key] = {"name": k.name, "calls": max(k.calls, old["calls"] if old else 0),
                            "func": tvm.ir.save_json(k.func), "form": tvm.ir.save_json(k.form)}
        with atomic_write(self.folder / TASKS) as f:
            f.write(json.dumps({"format": INDEX_FORMAT, "kernels": tasks}).encode())

    def load_tasks(self) -> list[Kernel]:
        """The kernels ``save_tasks`` kept, in the order they were first saved."""
        kernels = []
        for key, t in self._read_tasks().items():
            form = tvm.ir.load_json(t["form"])
            if workload_key(form) != key:
                raise EffarchError(f"{self.folder / TASKS} holds kernel {t['name']} under another TVM's key; "
                                   f"save the tasks again with this TVM ({tvm.__version__})")
            kernels.append(Kernel(t["name"], int(t["calls"]), tvm.ir.load_json(t["func"]), form, key))
        return kernels

    def _read_tasks(self) -> dict[str, Any]:
        return self._read_kernels(TASKS, f"save them again with 'effarch tune MODEL --db {self.root}'")

    # ---- MetaSchedule's records ---------------------------------------------------------------
    def targets_held(self) -> list[str]:
        """The target folders this database has records for."""
        return sorted(p.name for p in self.root.iterdir() if (p / INDEX).exists()) if self.root.is_dir() else []

    def export_winners(self, dest: Path) -> int:
        """Merge this database into ``dest``'s folder for this target, keeping the index and only the records
        a build would use: the best record of each kernel tuning won, from ``dest``'s records and these
        together (its record files are rewritten). The small database to ship. Returns how many records
        ``dest`` holds now."""
        out = TuningDatabase(dest, self.tvm_target, self.target_name, create=True)
        for key, entry in self.entries.items():  # kernels ``dest`` already holds stay, merged if measured here
            out.entries[key] = out.entries[key].merged(entry) if key in out.entries else entry
        best: dict[str, Any] = {}
        for db in (out, self):
            for record in db.records.get_all_tuning_records() if db.records is not None else []:
                if not record.run_secs:
                    continue
                key = workload_key(record.workload.mod[ENTRY])
                if key not in best or median_ms(record.run_secs) < median_ms(best[key].run_secs):
                    best[key] = record
        for name in ("database_workload.json", "database_tuning_record.json"):
            (out.folder / name).unlink(missing_ok=True)
        out._records = None
        kept = 0
        for key, entry in sorted(out.entries.items()):
            record = best.get(key)
            if entry.tuned_wins and record is not None and out.records is not None:
                workload = out.records.commit_workload(record.workload.mod)
                out.records.commit_tuning_record(ms.database.TuningRecord(
                    record.trace, workload, record.run_secs, record.target, record.args_info))
                kept += 1
        out.save()
        return kept

    def best_tuned_ms(self, kernel: Kernel) -> float | None:
        if self.records is None:
            return None
        record = self.records.query_tuning_record(kernel.task_module(), self.tvm_target, ENTRY)
        if record is None or not record.run_secs:
            return None
        return median_ms(record.run_secs)

    def tuned_function(self, kernel: Kernel) -> tvm.tirx.PrimFunc | None:
        if self.records is None:
            return None
        sch = self.records.query_schedule(kernel.task_module(), self.tvm_target, ENTRY)
        return None if sch is None else sch.mod[ENTRY]


@dataclass
class AppliedTuning:
    """What the build took from a tuning database: counts for the manifest and the log."""

    applied: list[str] = field(default_factory=list)  # kernels scheduled by their tuned record
    ours_faster: list[str] = field(default_factory=list)  # tuned, but our schedule measured faster
    missing: list[str] = field(default_factory=list)  # no record for this kernel on this target
    stale: list[str] = field(default_factory=list)  # tuned against a rule that no longer schedules the kernel

    def to_json(self) -> dict[str, Any]:
        return {"applied": len(self.applied), "ours_faster": len(self.ours_faster), "missing": len(self.missing),
                "stale": len(self.stale)}


class TunedSchedules:
    """The build's view of a database: a kernel's tuned function where tuning beat our schedule."""

    def __init__(self, root: Path, tvm_target: tvm.target.Target, target_name: str, *,
                 bundled: bool = False) -> None:
        self.db = TuningDatabase(Path(root), tvm_target, target_name)
        self.bundled = bundled  # the database shipped with effarch, not one the user named
        self.result = AppliedTuning()

    def schedule(self, name: str, func: tvm.tirx.PrimFunc, rule: str) -> tvm.tirx.PrimFunc | None:
        """``func``'s tuned schedule where its record beat ours; ``rule``: the rule that schedules it
        now. A record timed against another rule's schedule is not used: the comparison no longer
        holds (``effarch tune`` times ours again)."""
        form = tuning_form(func)
        key = workload_key(form)
        entry = self.db.entries.get(key)
        if entry is None or entry.tuned_ms is None:
            self.result.missing.append(name)
            return None
        if not entry.measured_against(rule):
            self.result.stale.append(name)
            return None
        if not entry.tuned_wins:
            self.result.ours_faster.append(name)
            return None
        kernel = Kernel(name, 1, func, form, key)
        tuned = self.db.tuned_function(kernel)
        if tuned is None:  # the index names a record MetaSchedule's files no longer hold
            self.result.missing.append(name)
            return None
        self.result.applied.append(name)
        symbol = func.attrs.get("global_symbol") if func.attrs else None
        tuned = tuned.with_attr("global_symbol", symbol) if symbol else tuned.without_attr("global_symbol")
        return tuned.with_attr("tirx.is_scheduled", True)


__all__ = ["AppliedTuning", "KernelEntry", "TunedSchedules", "TuningDatabase", "model_kernels"]
