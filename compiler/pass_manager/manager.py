"""The pass manager: runs a pipeline over a graph, with instruments hooked around every pass.

Passes run on the graph they are given (callers pass a clone when they need the original). An
exception raised by a pass, or by an instrument right after it, becomes a ``PassError`` naming
the pass and the passes that ran before it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from compiler.errors import EffarchError, PassError
from compiler.ir import Graph
from compiler.pass_manager.base import Note, Pass, PassContext, PassResult
from compiler.pass_manager.pipeline import FixpointGroup, PassSpec, Pipeline, parse_pipeline
from compiler.pass_manager.registry import get_pass

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PassRecord:
    """What one pass invocation did. ``iteration`` is the 1-based fixed-point round, or None."""

    name: str
    seconds: float
    modified: bool
    notes: list[Note] = field(default_factory=list)
    iteration: int | None = None
    skipped: bool = False
    spec: str = ""


@dataclass(slots=True)
class PipelineResult:
    graph: Graph
    records: list[PassRecord]
    seconds: float = 0.0

    @property
    def modified(self) -> bool:
        return any(r.modified for r in self.records)


class Instrument:
    """Hooks around a pipeline run; subclasses override the ones they need."""

    def run_start(self, graph: Graph, ctx: PassContext) -> None:
        """Called once with the input graph, before any pass."""

    def before_pass(self, pass_: Pass, graph: Graph, ctx: PassContext) -> None:
        """Called before each pass (not for disabled passes)."""

    def after_pass(self, pass_: Pass, result: PassResult, record: PassRecord) -> None:
        """Called after each pass with its result and record."""

    def run_end(self, result: PipelineResult) -> None:
        """Called once after the last pass."""


class PassManager:
    def __init__(self, pipeline: Pipeline | str, ctx: PassContext | None = None,
                 instruments: Sequence[Instrument] = ()) -> None:
        self.pipeline = parse_pipeline(pipeline) if isinstance(pipeline, str) else pipeline
        self.ctx = ctx or PassContext()
        self.instruments = list(instruments)
        # Passes are stateless, so equal specs can share one instance.
        self._passes = {spec: get_pass(spec.name, **dict(spec.options)) for spec in self.pipeline.specs()}

    def run(self, graph: Graph) -> PipelineResult:
        start = time.perf_counter()
        records: list[PassRecord] = []
        for inst in self.instruments:
            inst.run_start(graph, self.ctx)
        graph, _ = self._run_elements(self.pipeline.elements, graph, records, None)
        result = PipelineResult(graph, records, time.perf_counter() - start)
        for inst in self.instruments:
            inst.run_end(result)
        return result

    def _run_elements(self, elements: tuple[PassSpec | FixpointGroup, ...], graph: Graph,
                      records: list[PassRecord], iteration: int | None) -> tuple[Graph, bool]:
        modified = False
        for element in elements:
            if isinstance(element, FixpointGroup):
                graph, changed = self._run_group(element, graph, records)
            else:
                graph, changed = self._run_pass(element, graph, records, iteration)
            modified |= changed
        return graph, modified

    def _run_group(self, group: FixpointGroup, graph: Graph,
                   records: list[PassRecord]) -> tuple[Graph, bool]:
        modified = False
        for round_ in range(1, group.cap + 1):
            graph, changed = self._run_elements(group.elements, graph, records, round_)
            modified |= changed
            if not changed:
                return graph, modified
        log.warning("%s still changed the graph in its last round (%d); continuing with the graph as it is",
                    group, group.cap)
        return graph, modified

    def _run_pass(self, spec: PassSpec, graph: Graph, records: list[PassRecord],
                  iteration: int | None) -> tuple[Graph, bool]:
        pass_ = self._passes[spec]
        if pass_.name in self.ctx.disabled:
            records.append(PassRecord(pass_.name, 0.0, False, [], iteration, skipped=True, spec=str(spec)))
            return graph, False
        try:
            result, record = self._invoke(pass_, spec, graph, iteration)
        except Exception as exc:
            raise PassError(_failure_message(pass_.name, exc, records)) from exc
        records.append(record)
        return result.graph, result.modified

    def _invoke(self, pass_: Pass, spec: PassSpec, graph: Graph,
                iteration: int | None) -> tuple[PassResult, PassRecord]:
        for inst in self.instruments:
            inst.before_pass(pass_, graph, self.ctx)
        start = time.perf_counter()
        result = pass_(graph, self.ctx)
        seconds = time.perf_counter() - start
        record = PassRecord(pass_.name, seconds, result.modified, list(result.notes), iteration,
                            spec=str(spec))
        log.debug("%s: modified=%s in %.3f s", spec, result.modified, seconds)
        for inst in self.instruments:
            inst.after_pass(pass_, result, record)
        return result, record


def _failure_message(name: str, exc: Exception, records: list[PassRecord]) -> str:
    ran = ", ".join(dict.fromkeys(r.name for r in records if not r.skipped)) or "nothing"
    # One line: a verifier listing several problems is joined with "; ".
    text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    # Effarch errors already read as sentences; show the type of anything else (a bug in the pass).
    detail = text if isinstance(exc, EffarchError) else f"{type(exc).__name__}: {text}".rstrip(": ")
    own = f"pass '{name}' "
    if detail.startswith(own):  # the honesty check already named the pass
        detail = detail[len(own):]
    return f"pass '{name}' failed: {detail} (ran before it: {ran})"
