"""effarch explain: a pass's rewrites and near misses, grouped by rule, on fold-constants."""

from __future__ import annotations

from pathlib import Path

import pytest

from compiler.cli.main import main
from compiler.debugging.explain import explain_pass, format_explanation
from compiler.errors import EffarchError
from compiler.ir.parser import parse_graph
from tests.debugging.models import symbolic_batch_onnx

# Node names come from the provenance comments. fold-constants: %big would be 4 MiB from 16 bytes
# (size guard), %s has a symbolic shape, %c folds.
GRAPH = """
graph main(%x: f32[n,4]) -> (%y, %z) {
  %shape = const i64[2] [1024, 1024]
  %a = const f32[4] [1.0, 2.0, 3.0, 4.0]
  %s = Shape(%x) : i64[2]  # s
  %big = ConstantOfShape(%shape) : f32[1024,1024]  # big
  %c = Neg(%a) : f32[4]  # c
  %y = Add(%x, %c) : f32[n,4]
  %z = ReduceSum(%big) {keepdims=0} : f32[]
  %r = Reshape(%x, %s) : f32[n,4]
}
"""


def test_explain_groups_fired_rules_and_near_misses_with_the_failed_check() -> None:
    e = explain_pass(parse_graph(GRAPH), "fold-constants")
    assert e.modified
    assert [(n.rule, n.node) for n in e.fired] == [("fold", "c")]
    misses = {n.node: (n.rule, n.reason) for n in e.near_misses}
    assert misses["s"][0] == "shape-of-static" and "is not static" in misses["s"][1]
    assert misses["big"][0] == "fold" and misses["big"][1].startswith("size guard: output is 4194304 bytes")
    text = format_explanation(e)
    assert "1 rewrites, 2 near misses" in text
    fired, near = text.split("near misses (the check that failed):")
    assert "rule fold: 1 node" in fired and "c: replaced Neg by constant %c" in fired
    assert "rule shape-of-static: 1 node" in near and "s: shape of %x is not static" in near


def test_explain_options_and_before_change_the_outcome() -> None:
    e = explain_pass(parse_graph(GRAPH), "fold-constants{size_limit=8388608}")
    assert {n.node for n in e.fired} == {"c", "big"}
    e = explain_pass(parse_graph(GRAPH), "fold-constants", before="fold-constants")
    assert not e.modified and not e.fired and {n.node for n in e.near_misses} == {"s", "big"}


def test_explain_takes_one_pass() -> None:
    with pytest.raises(EffarchError, match="--pass takes one pass"):
        explain_pass(parse_graph(GRAPH), "fold-constants,eliminate-dead-code")


def test_explain_cli_on_an_onnx_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["explain", str(symbolic_batch_onnx(tmp_path / "m.onnx")), "--pass", "fold-constants"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith("fold-constants: changed the graph; 1 rewrites, 1 near misses")
    assert "bias_scale: replaced Mul by constant %b" in out
    assert "x_shape: shape of %x is not static: f32[batch,4]" in out
