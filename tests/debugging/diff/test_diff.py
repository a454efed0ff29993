"""The diff engine on hand-written IR pairs (one per change kind), a zoo model, and a 5,000-node graph."""

from __future__ import annotations

import time

from compiler.debugging.diff import GraphDiff, diff_graphs
from compiler.ir import DType, Graph, TensorType, parse_graph
from tests.debugging.diff.graphs import perturb, random_graph

BASE = """
graph main(%x: f32[1,3,4,4], %w: f32[8,3,1,1]) -> (%y) {
  %s = const f32[8,1,1] [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
  %c = Conv(%x, %w) {pads=[0,0,0,0]} : f32[1,8,4,4]  # conv
  %m = Mul(%c, %s) : f32[1,8,4,4]  # scale
  %r = Relu(%m) : f32[1,8,4,4]  # relu
  %y = Sigmoid(%r) : f32[1,8,4,4]  # out
}
"""


def edit(old: str, new: str, text: str = BASE) -> str:
    assert old in text
    return text.replace(old, new)


def diff_text(before: str, after: str) -> GraphDiff:
    return diff_graphs(parse_graph(before), parse_graph(after), "a", "b")


def test_identical_graphs_have_no_differences() -> None:
    d = diff_text(BASE, BASE)
    assert d.is_empty and d.unchanged == 4 and d.summary()["matched"] == 4


def test_added_node_and_its_user_rewritten() -> None:
    after = edit("%y = Sigmoid(%r)", "%t = Tanh(%r) : f32[1,8,4,4]  # extra\n  %y = Sigmoid(%t)")
    d = diff_text(BASE, after)
    assert [(r.op, r.label) for r in d.added] == [("Tanh", "extra")]
    assert not d.removed
    [rw] = d.rewritten
    assert rw.b.label == "out" and [(c.what, c.key) for c in rw.changes] == [("input", "0")]
    assert "Relu 'relu'" in rw.changes[0].before and "Tanh 'extra'" in rw.changes[0].after


def test_removed_node() -> None:
    after = edit("  %r = Relu(%m) : f32[1,8,4,4]  # relu\n", "").replace("Sigmoid(%r)", "Sigmoid(%m)")
    d = diff_text(BASE, after)
    assert [(r.op, r.label) for r in d.removed] == [("Relu", "relu")] and not d.added
    assert d.summary()["removed"] == 1 and d.summary()["rewritten"] == 1


def test_rewritten_attribute_and_op_name_the_change() -> None:
    after = edit("{pads=[0,0,0,0]}", "{pads=[1,1,1,1]}").replace("Relu(%m)", "LeakyRelu(%m) {alpha=0.1}")
    d = diff_text(BASE, after)
    changes = {rw.a.label: [(c.what, c.key, c.before, c.after) for c in rw.changes] for rw in d.rewritten}
    assert changes == {"conv": [("attr", "pads", "[0,0,0,0]", "[1,1,1,1]")],
                       "relu": [("op", "", "Relu", "LeakyRelu"), ("attr", "alpha", "(absent)", "0.1")]}


def test_fusion_from_merged_provenance_names_sources_and_rule() -> None:
    after = edit("  %m = Mul(%c, %s) : f32[1,8,4,4]  # scale\n", "").replace(
        "%c = Conv(%x, %w) {pads=[0,0,0,0]} : f32[1,8,4,4]  # conv",
        "%m = Conv(%x, %w, %s) {pads=[0,0,0,0]} : f32[1,8,4,4]  # conv <fuse:conv-mul> {scale}")
    d = diff_text(BASE, after)
    [f] = d.fused
    assert [(s.op, s.label) for s in f.sources] == [("Conv", "conv"), ("Mul", "scale")]
    assert (f.into.op, f.rules, f.changes) == ("Conv", ("fuse:conv-mul",), ())
    # The Relu now reads the fused node, which stands for the Mul it read before: not a change.
    assert not d.removed and not d.added and not d.rewritten
    assert d.status_a() == {0: "fused", 1: "fused", 2: "unchanged", 3: "unchanged"}


def test_constant_change_by_name_reports_max_abs_change() -> None:
    after = edit("[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]", "[1.0, 1.0, 3.5, 1.0, 1.0, 1.0, 1.0, 0.5]")
    [c] = diff_text(BASE, after).constants
    assert (c.name_a, c.name_b, c.matched_by, c.max_abs_change) == ("s", "s", "name", 2.5)


def test_constant_change_by_consumer_slot_reports_shape_and_dtype() -> None:
    after = edit("%s = const f32[8,1,1] [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]", "%q = const f16[1] [2.0]")
    d = diff_text(BASE, after.replace("Mul(%c, %s)", "Mul(%c, %q)"))
    [c] = d.constants
    assert (c.name_a, c.name_b, c.matched_by, c.type_a, c.type_b) == ("s", "q", "consumer", "f32[8,1,1]", "f16[1]")
    assert c.max_abs_change is None and not d.rewritten  # the slot's constant is the same constant


def test_structural_matching_without_provenance() -> None:
    strip = lambda t: "\n".join(line.split("  #")[0] for line in t.splitlines())  # noqa: E731
    after = edit("Relu(%m)", "Relu(%m) {}").replace("{pads=[0,0,0,0]}", "{pads=[2,2,2,2]}")
    d = diff_text(strip(BASE), strip(after))
    assert set(d.matched_by.values()) == {"structure"} and len(d.matches) == 4
    assert [(rw.a.op, [c.key for c in rw.changes]) for rw in d.rewritten] == [("Conv", ["pads"])]


def _fold_and_clean(g: Graph) -> Graph:
    import passes  # noqa: F401  (registers the passes)
    from compiler.pass_manager import PassManager

    return PassManager("fixpoint<8>(fold-constants,eliminate-dead-code)").run(g.clone()).graph


def test_zoo_model_before_and_after_folding() -> None:
    from compiler.driver import load_model

    before = load_model("zoo:digits_cnn").graph
    after = _fold_and_clean(before)
    d = diff_graphs(before, after)
    gone = {n.provenance.source for n in before.nodes} - {n.provenance.source for n in after.nodes}
    assert gone and {r.label for r in d.removed} == gone
    assert not d.added and not d.fused
    # Every node after folding is accounted for exactly once: matched or added.
    assert len(d.matches) + len(d.added) == len(after.nodes)
    assert len(d.matches) + len(d.removed) == len(before.nodes)
    # The consumers of the folded values now read constants.
    assert d.rewritten and all(c.what == "input" and "const" in c.after for r in d.rewritten for c in r.changes)
    assert d.constants_added


def test_5000_node_graph_with_known_perturbation_is_fast_and_exact() -> None:
    count = 25
    g = random_graph(5000)
    p = perturb(g, count)
    t0 = time.perf_counter()
    d = diff_graphs(g, p.graph)
    elapsed = time.perf_counter() - t0
    assert elapsed < 20.0, f"diff of 5,000 nodes took {elapsed:.1f}s"
    assert len(d.added) == count and {r.op for r in d.added} == {"Exp"}
    # Relu(Relu(x)) -> Relu(x) cannot say which Relu went; the ops removed must agree.
    assert sorted(r.op for r in d.removed) == sorted(g.nodes[i].op for i in p.removed)
    assert len(set(r.index for r in d.removed) ^ set(p.removed)) <= 4
    attr_changed = {r.a.index for r in d.rewritten if any(c.what == "attr" for c in r.changes)}
    assert attr_changed == set(p.attr_changed)
    assert d.unchanged >= 5000 - 6 * count


TWO_BLOCKS = """
graph main(%x: f32[1,8,4,4], %w: f32[8,8,1,1]) -> (%y) {
  %c1 = Conv(%x, %w) : f32[1,8,4,4] name="node_conv1"  # conv1
  %b1 = Neg(%c1) : f32[1,8,4,4]  # bn1
  %r1 = Relu(%b1) : f32[1,8,4,4] name="node_relu_1"  # relu
  %c2 = Conv(%r1, %w) : f32[1,8,4,4] name="node_conv2"  # conv2
  %b2 = Neg(%c2) : f32[1,8,4,4]  # bn2
  %s = Add(%b2, %x) : f32[1,8,4,4]  # block
  %y = Relu(%s) : f32[1,8,4,4] name="node_relu_2"  # relu
}
"""

FUSED_BLOCKS = """
graph main(%x: f32[1,8,4,4], %w: f32[8,8,1,1]) -> (%y) {
  %r1 = effarch::FusedConv(%x, %w) : f32[1,8,4,4] name="node_conv1"  # conv1 <fuse:conv-bn-act> {bn1,relu}
    graph conv_bn_act(%x: f32[1,8,4,4], %w: f32[8,8,1,1]) -> (%r) {
      %c = Conv(%x, %w) : f32[1,8,4,4]  # conv1
      %r = Relu(%c) : f32[1,8,4,4]  # relu
    }
  %y = effarch::FusedConv(%r1, %w, %x) : f32[1,8,4,4] name="node_conv2"  # conv2 <fuse:conv-bn-act> {bn2,block,relu}
    graph conv_bn_act(%x: f32[1,8,4,4], %w: f32[8,8,1,1], %z: f32[1,8,4,4]) -> (%r) {
      %c = Conv(%x, %w) : f32[1,8,4,4]  # conv2
      %s = Add(%c, %z) : f32[1,8,4,4]  # block
      %r = Relu(%s) : f32[1,8,4,4]  # relu
    }
}
"""


def test_each_fusion_takes_the_nodes_connected_to_it_when_a_source_repeats() -> None:
    # One ReLU module used twice: both uses carry source "relu"; each belongs to its own block.
    d = diff_text(TWO_BLOCKS, FUSED_BLOCKS)
    got = [([(s.op, s.index) for s in f.sources], f.into.index, f.rules) for f in d.fused]
    assert got == [([("Conv", 0), ("Neg", 1), ("Relu", 2)], 0, ("fuse:conv-bn-act",)),
                   ([("Conv", 3), ("Neg", 4), ("Add", 5), ("Relu", 6)], 1, ("fuse:conv-bn-act",))]
    assert d.is_empty is False and not d.removed and not d.added and not d.rewritten


def test_a_fused_node_reports_its_origin_s_attribute_changes() -> None:
    after = FUSED_BLOCKS.replace('%r1 = effarch::FusedConv(%x, %w) : f32[1,8,4,4] name="node_conv1"',
                                 '%r1 = effarch::FusedConv(%x, %w) {group=1} : f32[1,8,4,4] name="node_conv1"')
    [first, second] = diff_text(TWO_BLOCKS, after).fused
    assert [(c.what, c.key, c.before, c.after) for c in first.changes] == [("attr", "group", "(absent)", "1")]
    assert second.changes == ()


def test_nodes_whose_every_neighbour_changed_match_by_common_subgraph() -> None:
    before = """
graph main(%x: f32[4]) -> (%y) {
  %n = Neg(%x) : f32[4]
  %p = Abs(%n) : f32[4]
  %t = Tanh(%p) : f32[4]
  %q = Add(%p, %t) : f32[4]
  %y = Sigmoid(%q) : f32[4]
}
"""
    after = before.replace("Neg(", "Exp(").replace("Tanh(", "Relu(").replace("Sigmoid(", "Erf(")
    d = diff_text(before, after)
    assert d.matches == {1: 1, 3: 3} and set(d.matched_by.values()) == {"structure"}
    assert sorted(r.op for r in d.removed) == ["Neg", "Sigmoid", "Tanh"]
    assert sorted(r.op for r in d.added) == ["Erf", "Exp", "Relu"]


def test_long_chain_of_one_op_matches_in_linear_time() -> None:
    # Signatures alone cannot tell 5,000 identical Relus apart; propagation from the ends can.
    t = TensorType(DType.F32, (4,))

    def chain(extra_at: int) -> Graph:
        g = Graph()
        v = g.add_input("x", t)
        for k in range(5000):
            v = g.make_node("Relu", [v], types=[t]).outputs[0]
            if k == extra_at:
                v = g.make_node("Neg", [v], types=[t]).outputs[0]
        g.outputs = [v]
        return g

    t0 = time.perf_counter()
    d = diff_graphs(chain(-1), chain(2500))
    assert time.perf_counter() - t0 < 10.0
    assert [r.op for r in d.added] == ["Neg"] and not d.removed and len(d.matches) == 5000
    [rw] = d.rewritten
    assert rw.a.index == 2501 and [c.what for c in rw.changes] == ["input"]
