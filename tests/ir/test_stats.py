"""Graph statistics: op counts, parameters, bytes and FLOPs per the documented formulas."""

from __future__ import annotations

import numpy as np

from compiler.ir import Graph, Node
from compiler.ir.parser import parse_graph
from compiler.ir.printer import constant_digest
from compiler.ir.stats import ELEMENT_COST, diff_stats, graph_stats, node_flops

RNG = np.random.default_rng(0)
W = RNG.standard_normal((16, 4, 3, 3)).astype(np.float32)
B = RNG.standard_normal(16).astype(np.float32)

CONV = f"""
graph main(%x: f32[2,8,16,16]) -> (%p) {{
  %w = const f32[16,4,3,3] @{constant_digest(W)}
  %b = const f32[16] @{constant_digest(B)}
  %axes = const i64[2] [0, 1]
  %y = Conv(%x, %w, %b) {{group=2, pads=[1,1,1,1], strides=[2,2]}} : f32[2,16,8,8]
  %r = Relu(%y) : f32[2,16,8,8]
  %s = Shape(%r) : i64[4]
  %p = MaxPool(%r) {{kernel_shape=[2,2], strides=[2,2]}} : f32[2,16,4,4]
}}
"""


def conv_graph() -> Graph:
    return parse_graph(CONV, constants={"w": W, "b": B})


def node(g: Graph, op: str) -> Node:
    return next(n for n in g.nodes if n.op == op)


def test_counts_parameters_and_bytes() -> None:
    s = graph_stats(conv_graph())
    assert s.nodes == 4
    assert s.ops == {"Conv": 1, "MaxPool": 1, "Relu": 1, "Shape": 1}
    assert s.parameters == W.size + B.size  # the i64 axes constant is not a parameter
    assert s.constant_bytes == W.nbytes + B.nbytes + 2 * 8
    assert s.inputs == (("x", "f32[2,8,16,16]"),) and s.outputs == (("p", "f32[2,16,4,4]"),)


def test_conv_flops_follow_the_formula_with_groups_and_bias() -> None:
    g = conv_graph()
    n, cout, hout, wout, cin_per_group, kh, kw = 2, 16, 8, 8, 4, 3, 3
    outputs = n * cout * hout * wout
    assert node_flops(node(g, "Conv")) == 2 * outputs * cin_per_group * kh * kw + outputs
    assert node_flops(node(g, "Relu")) == 2 * 16 * 8 * 8
    assert node_flops(node(g, "MaxPool")) == 2 * 16 * 4 * 4 * 2 * 2
    assert node_flops(node(g, "Shape")) == 0
    s = graph_stats(g)
    assert s.flops == sum(node_flops(x) or 0 for x in g.nodes) == s.known_flops


def test_conv_transpose_counts_each_input_element_scattering_into_the_kernel() -> None:
    g = parse_graph("""
        graph main(%x: f32[1,8,5,5], %w: f32[8,3,4,4]) -> (%y) {
          %y = ConvTranspose(%x, %w) {group=2, strides=[2,2]} : f32[1,6,12,12]
        }
    """)
    n, cin, h, w, cout_per_group, kh, kw = 1, 8, 5, 5, 3, 4, 4
    assert node_flops(g.nodes[0]) == 2 * n * cin * h * w * cout_per_group * kh * kw


def test_matmul_and_gemm_are_2mnk_with_batch_and_transposes() -> None:
    g = parse_graph("""
        graph main(%a: f32[3,1,5,7], %b: f32[4,7,6], %c: f32[7,5], %d: f32[6,7], %e: f32[6]) -> (%y, %z) {
          %y = MatMul(%a, %b) : f32[3,4,5,6]
          %z = Gemm(%c, %d, %e) {transA=1, transB=1} : f32[5,6]
        }
    """)
    batch, m, n, k = 3 * 4, 5, 6, 7
    assert node_flops(g.nodes[0]) == 2 * batch * m * n * k
    assert node_flops(g.nodes[1]) == 2 * 5 * 6 * 7 + 5 * 6


def test_costlier_elementwise_ops_use_their_per_element_cost() -> None:
    g = parse_graph("""
        graph main(%x: f32[4,10]) -> (%y) {
          %t = Tanh(%x) : f32[4,10]
          %y = Softmax(%t) {axis=-1} : f32[4,10]
        }
    """)
    assert node_flops(g.nodes[0]) == 40 * ELEMENT_COST["Tanh"]
    assert node_flops(g.nodes[1]) == 40 * ELEMENT_COST["Softmax"]


def test_unknown_shapes_make_flops_unknown_not_zero() -> None:
    g = parse_graph("""
        graph main(%x: f32[batch,7], %w: f32[7,3]) -> (%y) {
          %m = MatMul(%x, %w) : f32[batch,3]
          %y = Identity(%m) : f32[batch,3]
        }
    """)
    s = graph_stats(g)
    assert s.flops is None and s.known_flops == 0
    assert len(s.unknown_flops_nodes) == 1
    assert "unknown" in s.summary()


def test_custom_domain_ops_have_unknown_flops() -> None:
    g = parse_graph("""
        graph main(%x: f32[2]) -> (%y) {
          %y = com.example::Fancy(%x) : f32[2]
        }
    """)
    assert graph_stats(g).flops is None


def test_diff_stats_shows_totals_and_changed_ops() -> None:
    import passes  # noqa: F401
    from compiler.pass_manager import PassManager

    before = conv_graph()
    after = PassManager("fold-constants,eliminate-dead-code").run(before.clone()).graph
    diff = diff_stats(before, after)
    rows = {r[0].strip(): r[1:] for r in diff.rows}
    assert rows["nodes"] == ("4", "3", "-25.0%")
    assert rows["Shape"] == ("1", "0", "-100.0%")
    assert rows["Conv"] == ("1", "1", "=")
    assert rows["constant bytes"][2] == f"{-16 / (W.nbytes + B.nbytes + 16):+.1%}"
    text = str(diff)
    assert text.splitlines()[0].split() == ["before", "after", "change"]
    assert len(text.splitlines()) == len(diff.rows) + 1


def test_qlinear_conv_counts_its_weight_input_and_bias() -> None:
    # QLinearConv's weight is input 3 and its bias input 8 (inputs 1, 2 are x's scale and zero point).
    inputs = "%x: u8[1,4,6,6], %xs: f32[], %xz: u8[], %w: u8[8,4,3,3], %ws: f32[], %wz: u8[], %ys: f32[], %yz: u8[]"
    g = parse_graph(f"""
        graph main({inputs}, %b: i32[8]) -> (%y) {{
          %y = QLinearConv(%x, %xs, %xz, %w, %ws, %wz, %ys, %yz, %b) : u8[1,8,4,4]
        }}
    """)
    outputs = 8 * 4 * 4
    assert node_flops(node(g, "QLinearConv")) == 2 * outputs * 4 * 3 * 3 + outputs


def test_einsum_is_2x_its_index_space_with_ellipsis_dims_broadcast() -> None:
    g = parse_graph("""
        graph main(%a: f32[5,2,3], %b: f32[1,3,4], %c: f32[3,3]) -> (%y, %z) {
          %y = Einsum(%a, %b) {equation="...ij,...jk->...ik"} : f32[5,2,4]
          %z = Einsum(%c) {equation="ii->i"} : f32[3]
        }
    """)
    assert node_flops(g.nodes[0]) == 2 * 5 * 2 * 3 * 4  # batch 5 (broadcast with 1) x i x j x k
    assert node_flops(g.nodes[1]) == 2 * 3
