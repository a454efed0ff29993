"""Numeric checks per pass: onnxruntime runs the graph after every pass, compared with the original.

``NumericCheckInstrument`` is given the inputs and the original model's outputs. After each pass it
exports the graph to ONNX, runs it, and records a ``PassNumerics`` row: max abs / max rel error and
cosine similarity per output, judged with ``compiler.numerics.compare``'s per-dtype tolerances. A graph that
onnxruntime cannot run (a custom-domain op, say) gets a row with ``error`` set, not a failure.

It also keeps the ONNX model that went *into* each pass (the previous pass's output, already
exported for its own check), so the first pass that breaks tolerance comes with its input graph
for a reproducer at no extra cost.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compiler.errors import EffarchError
from compiler.ir import Graph
from compiler.numerics.compare import OutputCheck, compare_outputs
from compiler.pass_manager.base import Pass, PassContext, PassResult
from compiler.pass_manager.manager import Instrument, PassRecord

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]


@dataclass
class PassNumerics:
    """The numeric state of the graph after one pass invocation (``index`` counts from 1)."""

    index: int
    spec: str
    iteration: int | None
    modified: bool
    checks: list[OutputCheck] = field(default_factory=list)
    error: str = ""  # why the graph could not be run; then ``checks`` is empty

    @property
    def ok(self) -> bool:
        """True unless a check broke tolerance; a graph that could not be run is not judged."""
        return all(c.ok for c in self.checks)

    @property
    def worst(self) -> OutputCheck | None:
        return max(self.checks, key=lambda c: c.max_abs / c.tolerance if c.tolerance else c.max_abs, default=None)


def run_graph(graph: Graph | Any, inputs: Arrays) -> Arrays:
    """onnxruntime outputs of ``graph`` (an IR graph or ModelProto) in the graph's output order."""
    from compiler.numerics.reference import run_onnxruntime

    return run_onnxruntime(graph, inputs)


def check_against(got: Arrays, expected: Arrays) -> list[OutputCheck]:
    """Compare outputs by position: passes may rename graph outputs, never reorder them."""
    if len(got) != len(expected):
        raise EffarchError(f"the graph has {len(got)} outputs but the original has {len(expected)}; "
                           "a pass must keep the graph's outputs")
    renamed = dict(zip(expected, got.values(), strict=True))
    return compare_outputs(renamed, expected)


class NumericCheckInstrument(Instrument):
    """Runs onnxruntime after every pass and records a ``PassNumerics`` per invocation."""

    def __init__(self, inputs: Arrays, expected: Arrays) -> None:
        self.inputs = inputs
        self.expected = expected
        self.rows: list[PassNumerics] = []
        self.first_bad: PassNumerics | None = None
        self.bad_input: Any = None  # ONNX ModelProto that went into ``first_bad``'s pass
        self.running = ""  # the pass now running: after a crash, the one that crashed
        self.last_model: Any = None  # ONNX ModelProto of the graph the running pass was given

    def run_start(self, graph: Graph, ctx: PassContext) -> None:
        self.rows, self.first_bad, self.bad_input = [], None, None
        self.last_model = _export(graph)[0]

    def before_pass(self, pass_: Pass, graph: Graph, ctx: PassContext) -> None:
        self.running = repr(pass_)  # the spec text, options included

    def after_pass(self, pass_: Pass, result: PassResult, record: PassRecord) -> None:
        row = PassNumerics(len(self.rows) + 1, record.spec or record.name, record.iteration, record.modified)
        model, row.error = _export(result.graph)
        if model is not None:
            try:
                row.checks = check_against(run_graph(model, self.inputs), self.expected)
            except EffarchError as exc:
                row.error = str(exc)
        self.rows.append(row)
        if not row.ok and self.first_bad is None:
            self.first_bad, self.bad_input = row, self.last_model
        if model is not None:
            self.last_model = model
        log.debug("numerics after %s: %s", row.spec, "ok" if row.ok else "BROKEN")

    @property
    def ok(self) -> bool:
        return self.first_bad is None


def _export(graph: Graph) -> tuple[Any, str]:
    from compiler.frontends.onnx_export import to_onnx

    try:
        return to_onnx(graph), ""
    except EffarchError as exc:
        return None, f"cannot export to ONNX: {exc}"


def numerics_table(rows: Sequence[PassNumerics]) -> str:
    """One line per pass invocation: the worst output's errors and the verdict."""
    from compiler.text import table

    body = [_row_cells(r) for r in rows]
    return table(["#", "pass", "round", "changed", "max abs", "max rel", "cosine", "result"], body, "rllrrrrl")


def _row_cells(r: PassNumerics) -> list[str]:
    round_ = "" if r.iteration is None else str(r.iteration)
    changed = "yes" if r.modified else "no"
    w = r.worst
    if w is None:
        return [str(r.index), r.spec, round_, changed, "-", "-", "-", f"not run: {r.error}"]
    verdict = "ok" if r.ok else f"BROKEN ({w.name}: {w.max_abs:.3g} > {w.tolerance:.3g})"
    return [str(r.index), r.spec, round_, changed, f"{w.max_abs:.3g}", f"{w.max_rel:.3g}", f"{w.cosine:.6f}",
            verdict]
