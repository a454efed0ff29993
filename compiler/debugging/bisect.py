"""Bisection: find the first pass invocation after which the outputs break tolerance.

A pipeline run is flattened into the sequence of pass invocations it executed (fixed-point rounds
unrolled), e.g. ``fold-constants,eliminate-dead-code,fold-constants,...``. Passes are deterministic
and keep no state, so running the first ``k`` of those specs as a plain pipeline reproduces the
graph after invocation ``k``. A binary search over ``k`` then needs about log2(n) onnxruntime runs
instead of n, which matters on big models. It assumes that once the numbers are broken, later passes
do not repair them (the search finds *a* good-to-bad step; the per-pass check in
``compiler.debugging.numeric_check`` finds the first one without that assumption).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from compiler.debugging.numeric_check import Arrays, check_against, run_graph
from compiler.errors import EffarchError
from compiler.ir import Graph
from compiler.numerics.compare import OutputCheck
from compiler.pass_manager.base import PassContext
from compiler.pass_manager.manager import PassManager
from compiler.pass_manager.pipeline import parse_pipeline

log = logging.getLogger(__name__)


@dataclass
class BisectResult:
    """``first_bad`` is a 1-based index into ``steps``, 0 if the input graph itself is off, or None."""

    steps: list[str]
    first_bad: int | None
    checks: list[OutputCheck] = field(default_factory=list)  # after the guilty step
    before: Graph | None = None  # the graph that went into the guilty step
    log: list[str] = field(default_factory=list)  # one line per prefix checked

    @property
    def guilty(self) -> str | None:
        return self.steps[self.first_bad - 1] if self.first_bad else None


def executed_steps(graph: Graph, pipeline: str, ctx: PassContext) -> tuple[list[str], Graph]:
    """The pass specs the pipeline executed on ``graph`` (skipped passes left out), and its result."""
    result = PassManager(parse_pipeline(pipeline), ctx).run(graph.clone())
    return [r.spec or r.name for r in result.records if not r.skipped], result.graph


def run_prefix(graph: Graph, steps: list[str], k: int, ctx: PassContext) -> Graph:
    """The graph after the first ``k`` steps, computed on a clone of ``graph``."""
    text = ",".join(steps[:k])
    return PassManager(parse_pipeline(text), ctx).run(graph.clone()).graph if text else graph.clone()


class _Prober:
    """Checks prefixes of the step list against the expected outputs, logging each probe."""

    def __init__(self, graph: Graph, steps: list[str], inputs: Arrays, expected: Arrays, ctx: PassContext):
        self.graph, self.steps, self.inputs, self.expected, self.ctx = graph, steps, inputs, expected, ctx
        self.lines: list[str] = []

    def checks(self, k: int, graph: Graph | None = None) -> list[OutputCheck]:
        graph = graph if graph is not None else run_prefix(self.graph, self.steps, k, self.ctx)
        where = f"after step {k} ({self.steps[k - 1]})" if k else "the input graph"
        try:
            checks = check_against(run_graph(graph, self.inputs), self.expected)
        except EffarchError as exc:
            raise EffarchError(f"cannot bisect: onnxruntime cannot run {where}: {exc}; run 'effarch verify' "
                               "without --bisect to check each pass instead") from None
        verdict = "ok" if all(c.ok for c in checks) else "BROKEN"
        self.lines.append(f"{where}: {verdict} (max abs {max((c.max_abs for c in checks), default=0.0):.3g})")
        return checks


def bisect_pipeline(graph: Graph, pipeline: str, inputs: Arrays, expected: Arrays,
                    ctx: PassContext | None = None) -> BisectResult:
    """Find the first step whose output breaks tolerance against ``expected`` (the original's outputs)."""
    ctx = ctx or PassContext()
    steps, final = executed_steps(graph, pipeline, ctx)
    probe = _Prober(graph, steps, inputs, expected, ctx)
    last = probe.checks(len(steps), final)
    if all(c.ok for c in last):
        return BisectResult(steps, None, last, None, probe.lines)
    start = probe.checks(0, graph) if steps else last
    if not all(c.ok for c in start):
        return BisectResult(steps, 0, start, graph.clone(), probe.lines)
    good, bad, bad_checks = 0, len(steps), last  # invariant: prefix `good` is ok, prefix `bad` is broken
    while bad - good > 1:
        mid = (good + bad) // 2
        checks = probe.checks(mid)
        if all(c.ok for c in checks):
            good = mid
        else:
            bad, bad_checks = mid, checks
    log.info("bisect: step %d (%s) breaks tolerance", bad, steps[bad - 1])
    return BisectResult(steps, bad, bad_checks, run_prefix(graph, steps, bad - 1, ctx), probe.lines)
