"""The pass manager: pipeline text, registry, fixed points, errors, honesty and instruments."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest

import passes  # noqa: F401  (registers the shipped passes)
from compiler.errors import EffarchError, PassError
from compiler.ir import Graph
from compiler.ir.parser import parse_graph
from compiler.pass_manager import (
    Pass,
    PassContext,
    PassManager,
    PassResult,
    PrintAfterChangeInstrument,
    SaveStagesInstrument,
    TimingInstrument,
    VerifyEachInstrument,
    get_pass,
    parse_pipeline,
    register_pass,
    registered_passes,
    registry,
)
from passes.pipelines import REQUIRED_BEFORE_LOWERING, default_pipeline
from tests.passes.harness import payload

SHAPE_CHAIN = """
graph main(%x: f32[2,3,4]) -> (%y) {
  %minus1 = const i64[1] [-1]
  %s = Shape(%x) {end=1} : i64[1]
  %shp = Concat(%s, %minus1) {axis=0} : i64[2]
  %r = Reshape(%x, %shp) : f32[2,12]
  %y = Relu(%r) : f32[2,12]
  %dead = Neg(%x) : f32[2,3,4]
}
"""


# ---- pipeline text ----------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "",
    "fold-constants",
    "fold-constants,eliminate-dead-code",
    "fuse{patterns=conv-bn-relu,max=3}",
    "fixpoint<8>(fold-constants,eliminate-dead-code)",
    "a,fixpoint<2>(b{x=1.5},fixpoint<3>(c,d{list=p+q}),e),f",
])
def test_canonical_text_round_trips(text: str) -> None:
    assert str(parse_pipeline(text, check=False)) == text


def test_spaces_are_accepted_and_dropped() -> None:
    text = " fixpoint < 4 > ( fold-constants , fuse{ max = 3 } ) , b "
    assert str(parse_pipeline(text, check=False)) == "fixpoint<4>(fold-constants,fuse{max=3}),b"


@pytest.mark.parametrize(("text", "column"), [
    ("a,,b", 3),
    ("a b", 3),
    ("fixpoint<0>(a)", 10),
    ("fixpoint<x>(a)", 10),
    ("fixpoint<2>()", 13),
    ("fixpoint<2>(a", 14),
    ("a{x=1", 6),
    ("a{=1}", 3),
    ("a{x=1,x=2}", 7),
    ("Fold", 1),
])
def test_syntax_errors_name_the_column(text: str, column: int) -> None:
    with pytest.raises(EffarchError, match=f"at column {column} "):
        parse_pipeline(text, check=False)


def test_unknown_pass_names_the_closest_match_and_its_column() -> None:
    want = r"column 33: unknown pass 'fold-constant'; did you mean 'fold-constants'"
    with pytest.raises(EffarchError, match=want):
        parse_pipeline("fixpoint<2>(eliminate-dead-code,fold-constant)")


def test_pass_options_are_typed_and_checked() -> None:
    assert get_pass("fold-constants", size_limit="4096").options["size_limit"] == 4096
    assert str(parse_pipeline("fold-constants{size_limit=4096}")) == "fold-constants{size_limit=4096}"
    with pytest.raises(EffarchError, match="got 'big'; expected a value of type int"):
        parse_pipeline("fold-constants{size_limit=big}")
    with pytest.raises(EffarchError, match="has no option 'limit' .*size_limit"):
        get_pass("fold-constants", limit=3)


class Options(Pass):
    name = "options-demo"
    description = "options of every type"
    option_defaults = {"patterns": ("a",), "max": 2, "scale": 1.0, "strict": False, "mode": "x"}


def test_option_types_follow_their_defaults() -> None:
    p = Options(patterns="conv-bn+conv-relu", max="3", scale="0.5", strict="true", mode="fast")
    assert dict(p.options) == {"patterns": ("conv-bn", "conv-relu"), "max": 3, "scale": 0.5, "strict": True,
                               "mode": "fast"}
    assert p.option_text() == "patterns=conv-bn+conv-relu,max=3,scale=0.5,strict=true,mode=fast"
    with pytest.raises(EffarchError, match="expected true or false"):
        Options(strict="maybe")


# ---- registry and defaults --------------------------------------------------------------------
def test_shipped_passes_are_registered_with_descriptions() -> None:
    found = registered_passes()
    assert {"fold-constants", "eliminate-dead-code"} <= found.keys()
    assert all(cls.description and "\n" not in cls.description for cls in found.values())


def test_register_pass_rejects_bad_names_and_duplicates() -> None:
    bad = type("Bad", (Pass,), {"name": "Bad_Name", "description": "x"})
    with pytest.raises(ValueError, match="kebab-case"):
        register_pass(bad)
    dup = type("Dup", (Pass,), {"name": "fold-constants", "description": "x"})
    with pytest.raises(ValueError, match="taken"):
        register_pass(dup)


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_default_pipelines_parse_and_grow_with_the_level(level: int) -> None:
    text = default_pipeline(level)
    assert str(parse_pipeline(text)) == text
    names = {s.name for s in parse_pipeline(text).specs()}
    assert names <= set(registered_passes())  # every level names only passes that exist
    lower = {s.name for s in parse_pipeline(default_pipeline(level - 1)).specs()} if level else set()
    assert lower <= names  # each level keeps what the one below does
    expected = {0: set(), 1: {"fold-constants", "eliminate-dead-code"},
                2: {"fold-batchnorm", "fuse-operators", "canonicalize-patterns"},
                3: {"eliminate-common-subexpressions", "propagate-shapes"}}[level]
    assert expected <= names
    assert ("fixpoint<" in text) == (level >= 2)
    assert [s.name for s in parse_pipeline(REQUIRED_BEFORE_LOWERING).specs()] == ["fold-constants"]


def test_a_pass_table_naming_an_unknown_pass_fails_at_import(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    import passes.pipelines

    monkeypatch.delitem(registry._REGISTRY, "fuse-operators")
    with pytest.raises(EffarchError, match="unknown pass 'fuse-operators'"):
        importlib.reload(passes.pipelines)
    monkeypatch.undo()
    importlib.reload(passes.pipelines)  # the tables as shipped, for the tests that follow


# ---- running ----------------------------------------------------------------------------------
@pytest.fixture
def temporary_passes(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Register test-only passes for one test; the registry is restored afterwards."""

    def add(*classes: type[Pass]) -> None:
        for cls in classes:
            monkeypatch.setitem(registry._REGISTRY, cls.name, cls)

    return add


def test_fixpoint_group_repeats_until_nothing_changes() -> None:
    result = PassManager("fixpoint<8>(fold-constants,eliminate-dead-code)").run(parse_graph(SHAPE_CHAIN))
    rounds = [(r.name, r.iteration, r.modified) for r in result.records]
    assert rounds == [("fold-constants", 1, True), ("eliminate-dead-code", 1, True),
                      ("fold-constants", 2, False), ("eliminate-dead-code", 2, False)]
    assert [n.op for n in result.graph.nodes] == ["Reshape", "Relu"]


class Grow(Pass):
    """Never converges: appends an Identity to the output every run."""

    name = "test-grow"
    description = "appends an Identity"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        out = graph.outputs[0]
        graph.outputs = [graph.make_node("Identity", [out], types=[out.type]).outputs[0]]
        return PassResult(graph, True)


def test_fixpoint_cap_stops_and_warns(temporary_passes, caplog: pytest.LogCaptureFixture) -> None:
    temporary_passes(Grow)
    with caplog.at_level(logging.WARNING):
        result = PassManager("fixpoint<3>(test-grow)").run(parse_graph(SHAPE_CHAIN))
    assert [r.iteration for r in result.records] == [1, 2, 3]
    assert "fixpoint<3>(test-grow) still changed the graph in its last round (3)" in caplog.text


class Boom(Pass):
    name = "test-boom"
    description = "raises"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        raise ValueError("index out of range")


def test_a_failing_pass_becomes_a_pass_error_naming_what_ran_before(temporary_passes) -> None:
    temporary_passes(Boom)
    pm = PassManager("fixpoint<2>(fold-constants,eliminate-dead-code),test-boom")
    with pytest.raises(PassError, match=r"^pass 'test-boom' failed: ValueError: index out of range "
                                        r"\(ran before it: fold-constants, eliminate-dead-code\)$"):
        pm.run(parse_graph(SHAPE_CHAIN))


class Liar(Grow):
    name = "test-liar"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        return PassResult(super().run(graph, ctx).graph, False)


def test_honesty_check_in_the_context_catches_a_false_modified(temporary_passes) -> None:
    temporary_passes(Liar)
    PassManager("test-liar").run(parse_graph(SHAPE_CHAIN))  # unchecked: no error
    want = r"^pass 'test-liar' failed: changed the graph but reported modified=False;.*"
    want += r"\(ran before it: nothing\)$"
    with pytest.raises(PassError, match=want):
        PassManager("test-liar", PassContext(check_honesty=True)).run(parse_graph(SHAPE_CHAIN))


def test_caching_a_constant_digest_is_no_change() -> None:
    # CSE and the printer cache payload digests on values; check-pass found CSE called dishonest for it.
    from compiler.ir.printer import value_digest
    from compiler.pass_manager import fingerprint

    g = parse_graph(SHAPE_CHAIN)
    g.constants["minus1"].const_digest = None
    before = fingerprint(g)
    value_digest(g.constants["minus1"])
    assert fingerprint(g) == before
    honest = get_pass("eliminate-common-subexpressions")
    honest(g, PassContext(check_honesty=True))  # fills digests, changes nothing: no PassError


def test_disabled_passes_are_skipped_and_recorded() -> None:
    ctx = PassContext(disabled=frozenset({"eliminate-dead-code"}))
    result = PassManager("fold-constants,eliminate-dead-code", ctx).run(parse_graph(SHAPE_CHAIN))
    skipped = [(r.name, r.skipped) for r in result.records]
    assert skipped == [("fold-constants", False), ("eliminate-dead-code", True)]
    assert "Neg" in result.graph.op_counts()


def test_context_is_frozen() -> None:
    ctx = PassContext(options={"k": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.opt_level = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        ctx.options["k"] = 2  # type: ignore[index]


# ---- instruments ------------------------------------------------------------------------------
class Breaker(Pass):
    """Leaves a node using a value no node defines: the verifier must object."""

    name = "test-breaker"
    description = "breaks the graph"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        orphan = graph.value("orphan", graph.outputs[0].type)
        graph.make_node("Neg", [orphan], types=[orphan.type])
        return PassResult(graph, True)


def test_verify_each_names_the_pass_that_broke_the_graph(temporary_passes) -> None:
    temporary_passes(Breaker)
    pm = PassManager("fold-constants,test-breaker", instruments=[VerifyEachInstrument()])
    want = r"^pass 'test-breaker' failed: .*orphan.*\(ran before it: fold-constants\)$"
    with pytest.raises(PassError, match=want):
        pm.run(parse_graph(SHAPE_CHAIN))


def test_save_stages_writes_numbered_ir_and_onnx(tmp_path: Path) -> None:
    inst = SaveStagesInstrument(tmp_path / "stages")
    PassManager("fold-constants,eliminate-dead-code", instruments=[inst]).run(parse_graph(SHAPE_CHAIN))
    names = [p.name for p in inst.saved]
    assert names == ["00-input.ir", "00-input.onnx", "01-fold-constants.ir", "01-fold-constants.onnx",
                     "02-eliminate-dead-code.ir", "02-eliminate-dead-code.onnx"]
    assert "Neg" in (tmp_path / "stages/01-fold-constants.ir").read_text()
    assert "Neg" not in (tmp_path / "stages/02-eliminate-dead-code.ir").read_text()
    import onnx

    assert len(onnx.load(str(tmp_path / "stages/02-eliminate-dead-code.onnx")).graph.node) == 2


def test_print_after_change_writes_only_changed_stages_and_timing_counts_runs() -> None:
    printed: list[str] = []
    timing = TimingInstrument()
    pm = PassManager("fixpoint<4>(fold-constants,eliminate-dead-code)",
                     instruments=[PrintAfterChangeInstrument(printed.append), timing])
    pm.run(parse_graph(SHAPE_CHAIN))
    assert [t.splitlines()[0] for t in printed] == ["# after fold-constants (round 1)",
                                                   "# after eliminate-dead-code (round 1)"]
    assert "%shp = const i64[2] [2, -1]" in printed[0]
    assert {k: v[0] for k, v in timing.totals.items()} == {"fold-constants": 2, "eliminate-dead-code": 2}
    assert "fold-constants" in timing.table()


def test_pass_manager_runs_in_place_and_the_input_can_be_kept_by_cloning() -> None:
    g = parse_graph(SHAPE_CHAIN)
    before = g.clone()
    result = PassManager(default_pipeline(2)).run(g.clone())
    assert len(before.nodes) == len(g.nodes) == 5 and len(result.graph.nodes) == 2
    assert np.array_equal(payload(result.graph, "shp"), [2, -1])


def test_a_placed_pass_joins_its_stage_from_its_level(temporary_passes) -> None:
    from compiler.pass_manager import Placement

    class Late(Pass):
        name = "test-late"
        description = "placed after fusion from -O3"
        placement = Placement("late", min_level=3)

    class Early(Pass):
        name = "test-early"
        description = "placed in the cleanup loop from -O1"
        placement = Placement("cleanup", min_level=1)

    temporary_passes(Late, Early)
    assert default_pipeline(1) == "simplify,fold-constants,test-early,eliminate-dead-code"
    assert "test-late" not in default_pipeline(2)
    assert default_pipeline(3).endswith("fuse-operators,merge-sibling-matmuls,test-late,eliminate-dead-code")
    assert "fold-constants,test-early,eliminate-dead-code)" in default_pipeline(3)
    with pytest.raises(ValueError, match="-O1 has no 'late' stage"):
        Placement("late", min_level=1)
