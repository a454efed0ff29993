"""Debugging instruments: timing, verify-each, save-each-stage, print-after-change.

The verifier, printer and ONNX exporter are imported when first used, so the pass manager itself
stays importable (and cheap) without them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from compiler.errors import EffarchError
from compiler.ir import Graph
from compiler.pass_manager.base import Pass, PassContext, PassResult
from compiler.pass_manager.manager import Instrument, PassRecord, PipelineResult

log = logging.getLogger(__name__)


class TimingInstrument(Instrument):
    """Totals time and invocation counts per pass; logs a summary at the end of each run."""

    def __init__(self) -> None:
        self.totals: dict[str, tuple[int, float]] = {}

    def run_start(self, graph: Graph, ctx: PassContext) -> None:
        self.totals = {}

    def after_pass(self, pass_: Pass, result: PassResult, record: PassRecord) -> None:
        count, seconds = self.totals.get(record.name, (0, 0.0))
        self.totals[record.name] = (count + 1, seconds + record.seconds)

    def run_end(self, result: PipelineResult) -> None:
        log.info("pass timings:\n%s", self.table())

    def table(self) -> str:
        rows = sorted(self.totals.items(), key=lambda kv: -kv[1][1])
        lines = [f"{'pass':<28} {'runs':>5} {'ms':>10}"]
        lines += [f"{name:<28} {count:>5} {seconds * 1e3:>10.2f}" for name, (count, seconds) in rows]
        return "\n".join(lines)


class VerifyEachInstrument(Instrument):
    """Runs the IR verifier on the input and after every pass; a failure names the pass."""

    def run_start(self, graph: Graph, ctx: PassContext) -> None:
        from compiler.ir.verifier import verify

        try:
            verify(graph)
        except EffarchError as exc:
            one_line = "; ".join(s.strip() for s in str(exc).splitlines() if s.strip())
            raise EffarchError(f"the input graph is invalid before any pass ran: {one_line}") from exc

    def after_pass(self, pass_: Pass, result: PassResult, record: PassRecord) -> None:
        from compiler.ir.verifier import verify

        verify(result.graph)  # raised inside the manager's try: it becomes a PassError naming the pass


class SaveStagesInstrument(Instrument):
    """Writes ``NN-<pass>.ir`` and ``NN-<pass>.onnx`` for the input (``00-input``) and after every pass."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.count = 0

    def run_start(self, graph: Graph, ctx: PassContext) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.count = 0
        self._save(graph, "input")

    def after_pass(self, pass_: Pass, result: PassResult, record: PassRecord) -> None:
        self._save(result.graph, record.name)

    def _save(self, graph: Graph, label: str) -> None:
        from compiler.frontends.onnx_export import save_onnx
        from compiler.ir.printer import print_graph

        stem = self.directory / f"{self.count:02d}-{label}"
        self.count += 1
        stem.with_suffix(".ir").write_text(print_graph(graph))
        try:
            save_onnx(graph, stem.with_suffix(".onnx"))
        except EffarchError as exc:
            # The IR text is already saved; a graph ONNX cannot express should not stop the compile.
            log.warning("could not save %s.onnx: %s", stem.name, exc)

    @property
    def saved(self) -> list[Path]:
        return sorted(self.directory.glob("[0-9][0-9]-*"))


class PrintAfterChangeInstrument(Instrument):
    """Writes the IR text after every pass that reported a change."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self.write = write

    def after_pass(self, pass_: Pass, result: PassResult, record: PassRecord) -> None:
        if not record.modified:
            return
        from compiler.ir.printer import print_graph

        round_ = f" (round {record.iteration})" if record.iteration is not None else ""
        self.write(f"# after {record.spec or record.name}{round_}\n{print_graph(result.graph)}")
