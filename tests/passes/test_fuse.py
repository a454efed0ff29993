"""fuse-operators and group nodes: IR text, verifier, ONNX functions, and every rule via the harness."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from compiler.errors import EffarchError
from compiler.frontends.onnx import import_onnx
from compiler.frontends.onnx_export import to_onnx
from compiler.ir import Graph, parse_graph, print_graph
from compiler.ir.printer import constant_digest
from compiler.ir.verifier import find_problems
from compiler.numerics.reference import random_inputs
from compiler.pass_manager import PassContext, parse_pipeline, registered_passes
from passes.fuse import FuseOperators
from passes.pipelines import default_pipeline
from tests.passes.harness import check_not_fired, check_pass

GROUP = """\
graph main(%x: f32[1,3,4,4], %w: f32[8,3,1,1]) -> (%r) {
  %r = effarch::FusedConv(%x, %w) : f32[1,8,4,4]  # conv <fuse-operators:conv-bn-act> {conv,relu}
    graph conv-bn-act(%x: f32[1,3,4,4], %w: f32[8,3,1,1]) -> (%r) {
      %c = Conv(%x, %w) : f32[1,8,4,4]  # conv
      %r = Relu(%c) : f32[1,8,4,4]  # relu
    }
}
"""


def ops(g: Graph) -> list[str]:
    return [n.qualified_op for n in g.nodes]


def body_ops(g: Graph, i: int = 0) -> list[str]:
    body = [n for n in g.nodes if n.body is not None][i].body
    return [n.op for n in body.nodes]


# ---- group nodes in the IR and in ONNX ------------------------------------------------------------
def test_a_group_prints_as_a_nested_block_and_parses_back() -> None:
    g = parse_graph(GROUP)
    assert print_graph(g) == GROUP
    assert print_graph(g.clone()) == GROUP
    assert g.clone().nodes[0].body is not g.nodes[0].body  # clones do not share bodies
    assert find_problems(g) == []


def test_the_verifier_checks_a_body_against_its_node() -> None:
    g = parse_graph(GROUP.replace("graph conv-bn-act(%x: f32[1,3,4,4]", "graph conv-bn-act(%x: f32[1,3,4,5]"))
    problems = find_problems(g)
    assert any("body input 0 %x is f32[1,3,4,5] but the node's %x is f32[1,3,4,4]" in p for p in problems)


def test_a_group_exports_as_an_onnx_function_and_imports_back_as_a_group() -> None:
    g = parse_graph(GROUP)
    model = to_onnx(g)
    onnx.checker.check_model(model, full_check=True)
    assert [(f.domain, f.name) for f in model.functions] == [("effarch", "FusedConv_0")]
    inputs = random_inputs(g, 0)
    got = ort.InferenceSession(model.SerializeToString()).run(None, inputs)[0]
    want = np.maximum(np.einsum("nchw,oc->nohw", inputs["x"], inputs["w"][:, :, 0, 0]), 0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    back = import_onnx(model)
    back.metadata.clear()
    assert print_graph(back) == GROUP


# ---- rules through the harness --------------------------------------------------------------------
WEIGHT = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)


def test_conv_bn_relu_becomes_one_group() -> None:
    # Small constants are copied into the body; the outer copies, now unused, are left to
    # eliminate-dead-code like every rule-framework pass leaves what it orphans.
    g = parse_graph("""
        graph main(%x: f32[1,3,6,6]) -> (%r) {
          %w = const f32[4,3,3,3] @DIGEST
          %s = const f32[4] [1.0, 2.0, 0.5, 1.5]
          %b = const f32[4] [0.1, 0.2, 0.3, 0.4]
          %m = const f32[4] [0.0, 0.1, -0.1, 0.2]
          %v = const f32[4] [1.0, 0.5, 2.0, 1.5]
          %c = Conv(%x, %w) {pads=[1,1,1,1]} : f32[1,4,6,6]  # conv
          %n = BatchNormalization(%c, %s, %b, %m, %v) {epsilon=0.001} : f32[1,4,6,6]  # bn
          %r = Relu(%n) : f32[1,4,6,6]  # relu
        }
    """.replace("DIGEST", constant_digest(WEIGHT)), {"w": WEIGHT})
    check_pass(FuseOperators(), g, expect="""
        graph main(%x: f32[1,3,6,6]) -> (%r) {
          %w = const f32[4,3,3,3] @DIGEST
          %s = const f32[4] [1.0, 2.0, 0.5, 1.5]
          %b = const f32[4] [0.1, 0.2, 0.3, 0.4]
          %m = const f32[4] [0.0, 0.1, -0.1, 0.2]
          %v = const f32[4] [1.0, 0.5, 2.0, 1.5]
          %r = effarch::FusedConv(%x, %w) : f32[1,4,6,6]  # conv <fuse-operators:conv-bn-act> {relu,bn}
            graph conv-bn-act(%x: f32[1,3,6,6], %w: f32[4,3,3,3]) -> (%r) {
              %s = const f32[4] [1.0, 2.0, 0.5, 1.5]
              %b = const f32[4] [0.1, 0.2, 0.3, 0.4]
              %m = const f32[4] [0.0, 0.1, -0.1, 0.2]
              %v = const f32[4] [1.0, 0.5, 2.0, 1.5]
              %c = Conv(%x, %w) {pads=[1,1,1,1]} : f32[1,4,6,6]  # conv
              %n = BatchNormalization(%c, %s, %b, %m, %v) {epsilon=0.001} : f32[1,4,6,6]  # bn
              %r = Relu(%n) : f32[1,4,6,6]  # relu
            }
        }
    """.replace("DIGEST", constant_digest(WEIGHT)))


def test_silu_diamond_and_residual_add_join_the_conv_epilogue() -> None:
    g = parse_graph("""
        graph main(%x: f32[1,4,5,5], %w: f32[4,4,1,1]) -> (%y) {
          %c = Conv(%x, %w) : f32[1,4,5,5]
          %s = Sigmoid(%c) : f32[1,4,5,5]
          %a = Mul(%c, %s) : f32[1,4,5,5]
          %y = Add(%a, %x) : f32[1,4,5,5]
        }
    """)
    result = check_pass(FuseOperators(), g, expect=lambda out: ops(out) == ["effarch::FusedConv"])
    assert body_ops(result.graph) == ["Conv", "Sigmoid", "Mul", "Add"]


def test_matmul_bias_gelu_becomes_one_group() -> None:
    g = parse_graph("""
        graph main(%x: f32[2,8], %w: f32[8,4], %b: f32[4]) -> (%y) {
          %m = MatMul(%x, %w) : f32[2,4]
          %a = Add(%m, %b) : f32[2,4]
          %y = Gelu(%a) : f32[2,4]
        }
    """)
    result = check_pass(FuseOperators(), g, expect=lambda out: ops(out) == ["effarch::FusedMatMul"])
    assert body_ops(result.graph) == ["MatMul", "Add", "Gelu"]


def test_an_elementwise_chain_becomes_one_group() -> None:
    g = parse_graph("""
        graph main(%x: f32[3,5], %z: f32[5]) -> (%y) {
          %a = Mul(%x, %z) : f32[3,5]
          %b = Tanh(%a) : f32[3,5]
          %y = Neg(%b) : f32[3,5]
        }
    """)
    result = check_pass(FuseOperators(), g, expect=lambda out: ops(out) == ["effarch::FusedElementwise"])
    assert body_ops(result.graph) == ["Mul", "Tanh", "Neg"]


LAYERNORM = """
    graph main(%x: f32[2,3,8]) -> (%y) {
      %ax = const i64[1] [-1]
      %two = const f32[] [2.0]
      %eps = const f32[] [1e-05]
      %g = const f32[8] [1.0, 2.0, 1.0, 0.5, 1.0, 1.0, 1.5, 1.0]
      %mu = ReduceMean(%x, %ax) : f32[2,3,1]
      %d = Sub(%x, %mu) : f32[2,3,8]
      %sq = Pow(%d, %two) : f32[2,3,8]
      %var = ReduceMean(%sq, %ax) : f32[2,3,1]
      %ve = Add(%var, %eps) : f32[2,3,1]
      %sd = Sqrt(%ve) : f32[2,3,1]
      %n = Div(%d, %sd) : f32[2,3,8]
      %y = Mul(%n, %g) : f32[2,3,8]
    }
"""


def test_layernorm_primitives_become_one_node() -> None:
    result = check_pass(FuseOperators(), parse_graph(LAYERNORM),
                        expect=lambda out: ops(out) == ["effarch::LayerNorm"])
    assert body_ops(result.graph) == ["ReduceMean", "Sub", "Pow", "ReduceMean", "Add", "Sqrt", "Div", "Mul"]


ATTENTION = """
    graph main(%q: f32[1,2,4,8], %k: f32[1,2,8,4], %v: f32[1,2,4,8], %mask: f32[1,1,1,4]) -> (%o) {
      %scale = const f32[] [0.35355339]
      %s = MatMul(%q, %k) : f32[1,2,4,4]
      %ss = Mul(%s, %scale) : f32[1,2,4,4]
      %sm = Add(%ss, %mask) : f32[1,2,4,4]
      %p = Softmax(%sm) {axis=-1} : f32[1,2,4,4]
      %o = MatMul(%p, %v) : f32[1,2,4,8]
    }
"""


def test_attention_becomes_one_node() -> None:
    result = check_pass(FuseOperators(), parse_graph(ATTENTION), expect=lambda out: ops(out) == ["effarch::Attention"])
    assert body_ops(result.graph) == ["MatMul", "Mul", "Add", "Softmax", "MatMul"]
    assert result.graph.nodes[0].provenance.rewrites == ("fuse-operators:attention",)


def test_patterns_option_picks_rules() -> None:
    result = check_pass(FuseOperators(patterns="matmul-bias-act"), parse_graph(ATTENTION),
                        expect=lambda out: "effarch::Attention" not in ops(out))
    assert body_ops(result.graph) == ["MatMul", "Mul", "Add"]
    with pytest.raises(EffarchError, match="no pattern conv-relu"):
        FuseOperators(patterns="conv-relu").run(parse_graph(ATTENTION), PassContext())


# ---- negative cases: the reason a rule did not fire ---------------------------------------------
def test_a_conv_output_read_by_two_convs_is_not_fused() -> None:
    g = parse_graph("""
        graph main(%x: f32[1,2,3,3], %w: f32[2,2,1,1]) -> (%a, %b) {
          %c = Conv(%x, %w) : f32[1,2,3,3]
          %a = Conv(%c, %w) : f32[1,2,3,3]
          %b = Conv(%c, %w) : f32[1,2,3,3]
        }
    """)
    check_not_fired(FuseOperators(), g, "its output feeds Conv, which cannot join an epilogue")


def test_attention_with_dropout_left_in_is_not_fused() -> None:
    g = parse_graph(ATTENTION.replace("%o = MatMul(%p, %v)", "%i = Identity(%p) : f32[1,2,4,4]\n"
                                      "      %o = MatMul(%i, %v)"))
    check_not_fired(FuseOperators(patterns="attention"), g, "the probabilities feed Identity")


def test_a_mean_not_subtracted_is_not_a_layernorm() -> None:
    g = parse_graph(LAYERNORM.replace("%d = Sub(%x, %mu)", "%d = Sub(%mu, %x)"))
    check_not_fired(FuseOperators(patterns="layernorm"), g, "the mean is not subtracted from its own input")


def test_a_chain_whose_head_is_also_read_elsewhere_is_not_fused() -> None:
    g = parse_graph("""
        graph main(%x: f32[1,2,4,4]) -> (%y, %p) {
          %r = Relu(%x) : f32[1,2,4,4]
          %y = Neg(%r) : f32[1,2,4,4]
          %p = MaxPool(%r) {kernel_shape=[2,2]} : f32[1,2,3,3]
        }
    """)
    result = check_not_fired(FuseOperators(), g, "its output feeds MaxPool, which cannot join an epilogue")
    assert [n.rule for n in result.notes] == ["elementwise-chain"]  # Neg alone is no candidate



# ---- opt levels -----------------------------------------------------------------------------------
@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_opt_levels_add_folding_and_fusion_from_O2(level: int) -> None:
    text = default_pipeline(level)
    assert str(parse_pipeline(text)) == text
    names = [s.name for s in parse_pipeline(text).specs()]
    assert ("fuse-operators" in names) == (level >= 2)
    assert ("eliminate-dead-code" in names) == (level >= 1)
    assert set(names) <= set(registered_passes())
    if level >= 2:  # fusion comes after every folding pass, and its orphans are cleaned up after it
        assert names.index("fuse-operators") > max(names.index(n) for n in names if n.startswith("fold"))
        assert names[-1] == "eliminate-dead-code"
    if level == 3:  # -O3 is -O2 and more
        assert {s.name for s in parse_pipeline(default_pipeline(2)).specs()} <= set(names)


def test_fingerprint_sees_a_change_inside_a_body() -> None:
    from compiler.pass_manager.fingerprint import fingerprint

    g = parse_graph(GROUP)
    before = fingerprint(g)
    group = next(n for n in g.nodes if n.body is not None)
    group.body.nodes[-1].attrs["marker"] = 1  # what a pass editing only the body would do
    assert fingerprint(g) != before
