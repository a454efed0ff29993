"""The per-pass impact table, --measure, --print-changed diffs and --save-stages output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import passes  # noqa: F401  (registers every pass)
from compiler.debugging.impact import ImpactInstrument, PrintChangedInstrument, TargetLatency, impact_table
from compiler.debugging.numeric_check import run_graph
from compiler.ir import Graph
from compiler.ir.parser import parse_graph
from compiler.numerics.reference import random_inputs
from compiler.pass_manager import PassManager, SaveStagesInstrument

# A Shape chain fold-constants turns into constants (4 nodes), which dead-code then drops.
SHAPE_CHAIN = """
graph main(%x: f32[2,3,4]) -> (%y) {
  %w = const f32[12,5] @?
  %minus1 = const i64[1] [-1]
  %axes = const i64[1] [0]
  %i = const i64[] [0]
  %s = Shape(%x) : i64[3]
  %d0 = Gather(%s, %i) {axis=0} : i64[]
  %d0u = Unsqueeze(%d0, %axes) : i64[1]
  %shp = Concat(%d0u, %minus1) {axis=0} : i64[2]
  %r = Reshape(%x, %shp) : f32[2,12]
  %m = MatMul(%r, %w) : f32[2,5]
  %y = Relu(%m) : f32[2,5]
}
"""
PIPELINE = "fold-constants,eliminate-dead-code,fold-constants"


def _graph() -> Graph:
    g = parse_graph(SHAPE_CHAIN)
    g.constants["w"].const = np.linspace(-1, 1, 60, dtype=np.float32).reshape(12, 5)  # too big to inline
    return g


def test_impact_rows_count_ops_bytes_and_flops_per_pass() -> None:
    impact = ImpactInstrument()
    PassManager(PIPELINE, instruments=[impact]).run(_graph())
    fold, dce, again = impact.rows
    assert (fold.modified, dce.modified, again.modified) == (True, True, False)
    assert fold.nodes == -4 and fold.ops == {"Shape": -1, "Gather": -1, "Unsqueeze": -1, "Concat": -1}
    assert fold.constant_bytes == (3 + 1 + 1 + 2) * 8  # the four new int64 constants
    assert fold.flops == 0 and fold.parameters == 0  # shape arithmetic costs no FLOPs
    # DCE drops the now-unused constants: %i, %axes, %minus1, %s, %d0, %d0u.
    assert dce.nodes == 0 and dce.constant_bytes == -(1 + 1 + 1 + 3 + 1 + 1) * 8
    text = impact_table(impact.rows)
    assert "Pass impact (3 runs, 2 changed" in text
    assert "Concat -1" in text and "no change" in text and "latency" not in text
    assert "no change" not in impact_table(impact.rows, only_changed=True)


def test_measure_times_the_input_and_only_passes_that_changed_something() -> None:
    timed: list[int] = []

    def fake_measure(g: Graph) -> float:  # pretend every removed node saves 1 ms
        timed.append(len(g.nodes))
        return len(g.nodes) * 1e-3

    impact = ImpactInstrument(measure=fake_measure)
    PassManager(PIPELINE, instruments=[impact]).run(_graph())
    assert timed == [7, 3, 3]  # the input, then after fold and after dce; the unchanged rerun is not built
    assert impact.rows[0].latency == pytest.approx((7e-3, 3e-3))
    assert "7.00 -> 3.00 ms (-57.1%)" in impact_table(impact.rows)


def test_target_latency_builds_and_times_a_stage_on_x86() -> None:
    seconds = TargetLatency(warmup=1, repeat=3)(_graph())
    assert seconds is not None and 0 < seconds < 1.0


def test_print_changed_writes_a_diff_per_changed_pass_and_a_line_otherwise() -> None:
    out: list[str] = []
    PassManager(PIPELINE, instruments=[PrintChangedInstrument(out.append)]).run(_graph())
    fold, dce, again = out
    assert fold.startswith("*** IR diff after fold-constants ***\n--- before fold-constants\n+++ after")
    assert "-  %s = Shape(%x) : i64[3]" in fold and "+  %s = const i64[3] [2, 3, 4]" in fold
    assert "\n   %r = Reshape(%x, %shp) : f32[2,12]\n" in fold  # unchanged lines are context
    assert dce.startswith("*** IR diff after eliminate-dead-code ***") and "-  %i = const" in dce
    assert again == "*** fold-constants: no change ***"


def test_print_changed_quiet_and_colour() -> None:
    out: list[str] = []
    PassManager(PIPELINE, instruments=[PrintChangedInstrument(out.append, quiet=True, color=True)]).run(_graph())
    assert len(out) == 2 and "\033[31m-  %s = Shape" in out[0] and "\033[32m+  %s = const" in out[0]


def test_save_stages_writes_numbered_onnx_and_ir_that_onnxruntime_runs(tmp_path: Path) -> None:
    g = _graph()
    save = SaveStagesInstrument(tmp_path / "stages")
    PassManager(PIPELINE, instruments=[save]).run(g.clone())
    stems = sorted({p.stem for p in save.saved})
    assert stems == ["00-input", "01-fold-constants", "02-eliminate-dead-code", "03-fold-constants"]
    for stem in stems:
        assert parse_graph((tmp_path / "stages" / f"{stem}.ir").read_text()).outputs  # IR text parses back
    inputs = random_inputs(g, seed=1)
    expected = run_graph(g, inputs)["y"]
    for stem in stems:
        got = run_graph(tmp_path / "stages" / f"{stem}.onnx", inputs)["y"]
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)  # f32, constants folded exactly
