"""What each pass did to the graph: the impact table and the print-changed diff instrument.

``ImpactInstrument`` records, per pass invocation, its time and the change in nodes (by op type),
parameters, constant bytes and FLOPs (``compiler.ir.stats``). Given a ``measure`` callable it also
times the graph after every pass that changed something (``TargetLatency`` builds and runs it on
a target) and records the latency change. ``impact_table`` renders the rows.

``PrintChangedInstrument`` is LLVM's ``-print-changed=diff``: a unified diff of the IR text before
and after each pass that changed the graph, headed with the pass; unchanged passes get one line.

Passes edit the graph in place, so both instruments keep what they need of the *previous* state
(statistics, text) from the last pass instead of copying the graph before every pass.
"""

from __future__ import annotations

import difflib
import logging
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from compiler.errors import EffarchError
from compiler.ir import Graph
from compiler.ir.stats import GraphStats, graph_stats
from compiler.pass_manager.base import Pass, PassContext, PassResult
from compiler.pass_manager.manager import Instrument, PassRecord

log = logging.getLogger(__name__)

Measure = Callable[[Graph], float | None]  # median seconds per run, or None when it cannot be timed


@dataclass
class PassImpact:
    """One pass invocation's effect; deltas are after minus before (``flops`` None when unknown)."""

    index: int
    spec: str
    iteration: int | None
    seconds: float
    modified: bool
    nodes: int = 0
    ops: dict[str, int] = field(default_factory=dict)
    parameters: int = 0
    constant_bytes: int = 0
    flops: int | None = 0
    latency: tuple[float, float] | None = None  # (before, after) median seconds, with --measure


def stats_delta(row: PassImpact, before: GraphStats, after: GraphStats) -> None:
    row.nodes = after.nodes - before.nodes
    row.ops = {op: after.ops.get(op, 0) - before.ops.get(op, 0) for op in sorted(set(before.ops) | set(after.ops))}
    row.ops = {op: d for op, d in row.ops.items() if d}
    row.parameters = after.parameters - before.parameters
    row.constant_bytes = after.constant_bytes - before.constant_bytes
    row.flops = None if before.flops is None or after.flops is None else after.flops - before.flops


class ImpactInstrument(Instrument):
    """Records a ``PassImpact`` per pass invocation; ``measure`` (optional) times changed graphs."""

    def __init__(self, measure: Measure | None = None) -> None:
        self.measure = measure
        self.rows: list[PassImpact] = []
        self.start: GraphStats | None = None
        self.start_latency: float | None = None
        self._stats: GraphStats | None = None
        self._latency: float | None = None

    def run_start(self, graph: Graph, ctx: PassContext) -> None:
        self.rows = []
        self.start = self._stats = graph_stats(graph)
        self.start_latency = self._latency = self.measure(graph) if self.measure else None

    def after_pass(self, pass_: Pass, result: PassResult, record: PassRecord) -> None:
        assert self._stats is not None, "run_start runs before any pass"
        row = PassImpact(len(self.rows) + 1, record.spec or record.name, record.iteration, record.seconds,
                         record.modified)
        if record.modified:
            after = graph_stats(result.graph)
            stats_delta(row, self._stats, after)
            self._stats = after
            self._measure(row, result.graph)
        self.rows.append(row)

    def _measure(self, row: PassImpact, graph: Graph) -> None:
        if self.measure is None:
            return
        latency = self.measure(graph)
        if latency is not None and self._latency is not None:
            row.latency = (self._latency, latency)
        self._latency = latency if latency is not None else self._latency


# ---- the table --------------------------------------------------------------------------------
def impact_table(rows: Sequence[PassImpact], *, only_changed: bool = False) -> str:
    """Per pass: time, nodes, ops changed, parameters, bytes, FLOPs and (when measured) latency."""
    from compiler.text import table

    measured = any(r.latency for r in rows)
    shown = [r for r in rows if r.modified or not only_changed]
    header = ["#", "pass", "round", "ms", "nodes", "ops", "params", "bytes", "FLOPs"]
    body = [_cells(r, measured) for r in shown]
    total_ms = sum(r.seconds for r in rows) * 1e3
    head = f"Pass impact ({len(rows)} runs, {sum(r.modified for r in rows)} changed, {total_ms:.1f} ms)"
    return head + "\n" + table(header + (["latency"] if measured else []), body,
                               "rllrrlrrr" + ("l" if measured else ""))


def _cells(r: PassImpact, measured: bool) -> list[str]:
    round_ = "" if r.iteration is None else str(r.iteration)
    if not r.modified:
        cells = [str(r.index), r.spec, round_, f"{r.seconds * 1e3:.1f}", "", "no change", "", "", ""]
    else:
        flops = "?" if r.flops is None else _signed(r.flops)
        cells = [str(r.index), r.spec, round_, f"{r.seconds * 1e3:.1f}", _signed(r.nodes), _ops(r.ops),
                 _signed(r.parameters), _signed(r.constant_bytes), flops]
    return cells + ([_latency(r.latency)] if measured else [])


def _signed(n: int) -> str:
    return f"{n:+,}" if n else "0"


def _ops(ops: dict[str, int], limit: int = 4) -> str:
    """``Shape -1, Gather -2`` with the biggest changes first; the rest counted."""
    items = sorted(ops.items(), key=lambda kv: (-abs(kv[1]), kv[0]))
    text = ", ".join(f"{op} {d:+d}" for op, d in items[:limit])
    return text + (f" (+{len(items) - limit} more)" if len(items) > limit else "") if items else "="


def _latency(latency: tuple[float, float] | None) -> str:
    if latency is None:
        return ""
    before, after = latency
    scale, unit = (1e6, "us") if max(before, after) < 1e-3 else (1e3, "ms")
    return f"{before * scale:.2f} -> {after * scale:.2f} {unit} ({(after - before) / before:+.1%})"


# ---- measuring latency on a target --------------------------------------------------------------
@dataclass(frozen=True)
class TargetLatency:
    """A ``Measure``: builds the graph for ``target`` in a temp dir and returns its median latency.

    The graph first gets the passes lowering requires (fold-constants), exactly as ``effarch
    compile`` would do after the pass under study; a graph that cannot be built measures None.
    """

    target: str = "x86"
    cpu: str | None = None
    warmup: int = 3
    repeat: int = 20
    seed: int = 0

    def __call__(self, graph: Graph) -> float | None:
        from compiler.driver import optimize
        from compiler.numerics.reference import random_inputs

        try:
            lowered, _ = optimize(graph, "", target=self.target)
            return self._time(lowered, random_inputs(graph, self.seed))
        except EffarchError as exc:
            log.warning("cannot measure the graph after this pass: %s", exc)
            return None

    def _time(self, graph: Graph, inputs: dict) -> float:
        from targets.build import build_artifact
        from targets.runtime import load_artifact

        with tempfile.TemporaryDirectory(prefix="effarch-measure-") as tmp:
            path = build_artifact(graph, Path(tmp) / "stage.effarch", target=self.target, cpu=self.cpu)
            art = load_artifact(path, cache_dir=Path(tmp) / "cache")
            return statistics.median(art.time_run(inputs, warmup=self.warmup, repeat=self.repeat))


# ---- print-changed --------------------------------------------------------------------------------
RED, GREEN, CYAN, RESET = "\033[31m", "\033[32m", "\033[36m", "\033[0m"


class PrintChangedInstrument(Instrument):
    """Writes a unified diff of the IR text for every pass that changed the graph (LLVM's
    ``-print-changed=diff``); an unchanged pass gets one short line, or nothing with ``quiet``."""

    def __init__(self, write: Callable[[str], None], *, context: int = 3, color: bool = False,
                 quiet: bool = False) -> None:
        self.write, self.context, self.color, self.quiet = write, context, color, quiet
        self._text = ""

    def run_start(self, graph: Graph, ctx: PassContext) -> None:
        from compiler.ir.printer import print_graph

        self._text = print_graph(graph)

    def after_pass(self, pass_: Pass, result: PassResult, record: PassRecord) -> None:
        label = (record.spec or record.name) + ("" if record.iteration is None else f" (round {record.iteration})")
        if not record.modified:
            if not self.quiet:
                self.write(f"*** {label}: no change ***")
            return
        from compiler.ir.printer import print_graph

        after = print_graph(result.graph)
        self.write(f"*** IR diff after {label} ***\n{self.diff(self._text, after, label)}")
        self._text = after

    def diff(self, before: str, after: str, label: str) -> str:
        lines = list(difflib.unified_diff(before.splitlines(), after.splitlines(), f"before {label}",
                                          f"after {label}", n=self.context, lineterm=""))
        if not lines:
            return "(the pass reported a change, but the IR text is identical)"
        return "\n".join(self._paint(line) for line in lines)

    def _paint(self, line: str) -> str:
        if not self.color:
            return line
        colour = {"+": GREEN, "-": RED, "@": CYAN}.get(line[:1])
        return f"{colour}{line}{RESET}" if colour and not line.startswith(("+++", "---")) else line
