"""merge-sibling-matmuls through the shared harness: what merges (fused groups, plain products, Gemm
with transB, weight-only quantized weights), the reasons it leaves products apart, and MiniLM's Q, K, V."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

import passes.merge_sibling_matmuls as merge_module
from compiler.driver import load_model
from compiler.ir import Graph, parse_graph
from compiler.ir.printer import constant_digest
from compiler.pass_manager import PassContext, PassManager
from passes.fuse import FuseOperators
from passes.merge_sibling_matmuls import MergeSiblingMatMuls
from passes.pipelines import default_pipeline
from tests.passes.harness import check_not_fired, check_pass, payload

RNG = np.random.default_rng(0)
WQ, WK, WV = (RNG.standard_normal((16, n)).astype(np.float32) for n in (3, 3, 2))


def _text(text: str, arrays: dict[str, np.ndarray]) -> str:
    """``text`` with each ``@name`` of ``arrays`` replaced by that array's digest."""
    return re.sub(r"@(\w+)", lambda m: f"@{constant_digest(arrays[m.group(1)])}" if m.group(1) in arrays
                  else m.group(0), text)


def parse(text: str, arrays: dict[str, np.ndarray] | None = None) -> Graph:
    return parse_graph(_text(text, arrays or {}), arrays or {})


# Q, K and V of one input after fuse-operators: three groups with their biases inside (small constants).
QKV = """
graph main(%x: f32[1,3,16]) -> (%q, %k, %v) {
  %wq = const f32[16,3] @wq
  %wk = const f32[16,3] @wk
  %wv = const f32[16,2] @wv
  %q = effarch::FusedMatMul(%x, %wq) : f32[1,3,3]  # q
    graph matmul-bias-act(%x: f32[1,3,16], %wq: f32[16,3]) -> (%q) {
      %bq = const f32[3] [0.1, 0.2, 0.3]
      %mq = MatMul(%x, %wq) : f32[1,3,3]  # q
      %q = Add(%mq, %bq) : f32[1,3,3]  # q
    }
  %k = effarch::FusedMatMul(%x, %wk) : f32[1,3,3]  # k
    graph matmul-bias-act(%x: f32[1,3,16], %wk: f32[16,3]) -> (%k) {
      %bk = const f32[3] [-0.1, -0.2, -0.3]
      %mk = MatMul(%x, %wk) : f32[1,3,3]  # k
      %k = Add(%mk, %bk) : f32[1,3,3]  # k
    }
  %v = effarch::FusedMatMul(%x, %wv) : f32[1,3,2]  # v
    graph matmul-bias-act(%x: f32[1,3,16], %wv: f32[16,2]) -> (%v) {
      %bv = const f32[2] [1.0, 2.0]
      %mv = MatMul(%x, %wv) : f32[1,3,2]  # v
      %v = Add(%mv, %bv) : f32[1,3,2]  # v
    }
}
"""


def qkv() -> Graph:
    return parse(QKV, {"wq": WQ, "wk": WK, "wv": WV})


def test_q_k_v_groups_become_one_group_and_three_slices() -> None:
    merged = np.concatenate([WQ, WK, WV], axis=1)
    result = check_pass(MergeSiblingMatMuls(), qkv(), expect=_text("""
    graph main(%x: f32[1,3,16]) -> (%q, %k, %v) {
      %wq = const f32[16,3] @wq
      %wk = const f32[16,3] @wk
      %wv = const f32[16,2] @wv
      %wq_merged = const f32[16,8] @merged
      %columns_axis = const i64[1] [-1]
      %q_start = const i64[1] [0]
      %q_end = const i64[1] [3]
      %k_start = const i64[1] [3]
      %k_end = const i64[1] [6]
      %v_start = const i64[1] [6]
      %v_end = const i64[1] [8]
      %q_merged = effarch::FusedMatMul(%x, %wq_merged) : f32[1,3,8]  # q <merge-sibling-matmuls:merge-siblings> {k,v}
        graph matmul-bias-act(%x: f32[1,3,16], %wq_merged: f32[16,8]) -> (%q) {
          %bq_merged = const f32[8] [0.1, 0.2, 0.3, -0.1, -0.2, -0.3, 1.0, 2.0]
          %mq = MatMul(%x, %wq_merged) : f32[1,3,8]  # q <merge-sibling-matmuls:merge-siblings> {k,v}
          %q = Add(%mq, %bq_merged) : f32[1,3,8]  # q <merge-sibling-matmuls:merge-siblings> {k,v}
        }
      %q = Slice(%q_merged, %q_start, %q_end, %columns_axis) : f32[1,3,3]  # q <merge-sibling-matmuls:merge-siblings>
      %k = Slice(%q_merged, %k_start, %k_end, %columns_axis) : f32[1,3,3]  # k <merge-sibling-matmuls:merge-siblings>
      %v = Slice(%q_merged, %v_start, %v_end, %columns_axis) : f32[1,3,2]  # v <merge-sibling-matmuls:merge-siblings>
    }
    """, {"wq": WQ, "wk": WK, "wv": WV, "merged": merged}))
    np.testing.assert_array_equal(payload(result.graph, "wq_merged"), merged)
    law = "epi(x @ W_i + b_i), i = 1..n -> Slice_i(epi(x @ [W_1..W_n] + [b_1..b_n]))"
    assert [str(n) for n in result.notes] == [f"merge-siblings at q: did: {law}: 3 products of %x, N = 3+3+2"]


def _fused(text: str, payloads: dict[str, np.ndarray] | None = None) -> Graph:
    """``text`` after fuse-operators: the form the pass sees in the -O2 pipeline."""
    return FuseOperators().run(parse(text, payloads), PassContext()).graph


def _ops(g: Graph) -> list[str]:
    return [n.qualified_op for n in g.nodes]


def test_an_epilogue_with_per_column_and_shared_constants_merges() -> None:
    # bias (per column), scale (per column, [1, N]), Gelu, clip bounds (one value for all columns)
    g = _fused("""
        graph main(%x: f32[4,8]) -> (%ya, %yb) {
          %ca = const f32[8,80] @ca
          %cb = const f32[8,80] @cb
          %ba = const f32[80] @ba
          %bb = const f32[80] @bb
          %sa = const f32[1,80] @sa
          %sb = const f32[1,80] @sb
          %lo = const f32[] [-1.0]
          %hi = const f32[] [1.5]
          %ma = MatMul(%x, %ca) : f32[4,80]
          %aa = Add(%ma, %ba) : f32[4,80]
          %ga = Mul(%aa, %sa) : f32[4,80]
          %ea = Gelu(%ga) : f32[4,80]
          %ya = Clip(%ea, %lo, %hi) : f32[4,80]
          %mb = MatMul(%x, %cb) : f32[4,80]
          %ab = Add(%mb, %bb) : f32[4,80]
          %gb = Mul(%ab, %sb) : f32[4,80]
          %eb = Gelu(%gb) : f32[4,80]
          %yb = Clip(%eb, %lo, %hi) : f32[4,80]
        }
    """, _payloads(ca=(8, 80), cb=(8, 80), ba=(80,), bb=(80,), sa=(1, 80), sb=(1, 80)))
    result = check_pass(MergeSiblingMatMuls(), g, expect=lambda out: _ops(out) == ["effarch::FusedMatMul", "Slice",
                                                                                   "Slice"])
    group = result.graph.nodes[0]
    assert [n.op for n in group.body.nodes] == ["MatMul", "Add", "Mul", "Gelu", "Clip"]
    assert [v.type.shape for v in group.inputs] == [(4, 8), (8, 160), (160,), (1, 160)]  # type: ignore[union-attr]


def _payloads(**shapes: tuple[int, ...]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def test_plain_matmuls_without_an_epilogue_merge() -> None:
    g = parse("""
        graph main(%x: f32[2,5]) -> (%a, %b) {
          %wa = const f32[5,3] @wa
          %wb = const f32[5,2] @wb
          %a = MatMul(%x, %wa) : f32[2,3]  # a
          %b = MatMul(%x, %wb) : f32[2,2]  # b
        }
    """, _payloads(wa=(5, 3), wb=(5, 2)))
    result = check_pass(MergeSiblingMatMuls(), g, expect=lambda out: _ops(out) == ["MatMul", "Slice", "Slice"])
    assert result.graph.nodes[0].outputs[0].type.shape == (2, 5)  # type: ignore[union-attr]


def test_gemms_with_trans_b_concatenate_their_rows() -> None:
    g = parse("""
        graph main(%x: f32[3,4]) -> (%a, %b) {
          %wa = const f32[5,4] @wa
          %wb = const f32[2,4] @wb
          %ca = const f32[5] @ca
          %cb = const f32[2] @cb
          %a = Gemm(%x, %wa, %ca) {alpha=0.5, beta=2.0, transB=1} : f32[3,5]
          %b = Gemm(%x, %wb, %cb) {alpha=0.5, beta=2.0, transB=1} : f32[3,2]
        }
    """, _payloads(wa=(5, 4), wb=(2, 4), ca=(5,), cb=(2,)))
    result = check_pass(MergeSiblingMatMuls(), g, expect=lambda out: _ops(out) == ["Gemm", "Slice", "Slice"])
    assert [v.type.shape for v in result.graph.nodes[0].inputs] == [(3, 4), (7, 4), (7,)]  # type: ignore[union-attr]


# Weight-only int8 (what quantize-weights writes, then fuse-operators): per column, or per tensor.
def _weight_only(scales: tuple[str, str], axis: str = "{axis=1}") -> Graph:
    q = {"qa": np.random.default_rng(2).integers(-127, 128, (8, 6)).astype(np.int8),
         "qb": np.random.default_rng(3).integers(-127, 128, (8, 6)).astype(np.int8)}
    return _fused(f"""
        graph main(%x: f32[2,8]) -> (%ya, %yb) {{
          %qa = const i8[8,6] @qa
          %qb = const i8[8,6] @qb
          %sa = const {scales[0]}
          %sb = const {scales[1]}
          %wa = DequantizeLinear(%qa, %sa) {axis} : f32[8,6]
          %wb = DequantizeLinear(%qb, %sb) {axis} : f32[8,6]
          %ma = MatMul(%x, %wa) : f32[2,6]
          %ya = Relu(%ma) : f32[2,6]
          %mb = MatMul(%x, %wb) : f32[2,6]
          %yb = Relu(%mb) : f32[2,6]
        }}
    """, q)


COLUMN_SCALES = ("f32[6] [0.01, 0.02, 0.03, 0.01, 0.02, 0.03]", "f32[6] [0.02, 0.02, 0.02, 0.04, 0.04, 0.04]")


@pytest.mark.parametrize("scales", [COLUMN_SCALES, ("f32[] [0.02]", "f32[] [0.02]")], ids=["per-column", "per-tensor"])
def test_weight_only_quantized_weights_merge_into_one_dequantize(scales: tuple[str, str]) -> None:
    result = check_pass(MergeSiblingMatMuls(), _weight_only(scales),
                        expect=lambda out: _ops(out)[-4:] == ["DequantizeLinear", "effarch::FusedMatMul", "Slice",
                                                              "Slice"])
    dq = next(n for n in result.graph.nodes if n.op == "DequantizeLinear" and n.outputs[0].uses)
    assert dq.outputs[0].type.shape == (8, 12)  # type: ignore[union-attr]


# ---- left alone, and why ------------------------------------------------------------------------
def test_weights_quantized_per_tensor_with_different_scales_stay_apart() -> None:
    check_not_fired(MergeSiblingMatMuls(), _weight_only(("f32[] [0.02]", "f32[] [0.03]")),
                    "its weight is quantized per tensor with another scale or zero point")


def test_a_weight_quantized_along_k_stays_apart() -> None:
    scales = ("f32[8] [1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0]",) * 2
    check_not_fired(MergeSiblingMatMuls(), _weight_only(scales, "{axis=0}"), "is quantized along K")


def test_a_weight_that_is_not_constant_stays_apart() -> None:
    g = _fused("""
        graph main(%x: f32[2,4], %w: f32[4,3]) -> (%a, %b) {
          %c = const f32[4,3] @c
          %a = MatMul(%x, %w) : f32[2,3]
          %b = MatMul(%x, %c) : f32[2,3]
        }
    """, _payloads(c=(4, 3)))
    check_not_fired(MergeSiblingMatMuls(), g, "its weight %w is not a constant")


def test_a_different_epilogue_stays_apart() -> None:
    g = _fused(QKV_PLAIN.replace("%v = Add(%mv, %bv) : f32[2,4]", "%av = Add(%mv, %bv) : f32[2,4]\n"
                                 "          %v = Relu(%av) : f32[2,4]"), _payloads(wq=(8, 4), wv=(8, 4)))
    check_not_fired(MergeSiblingMatMuls(), g, "its epilogue is MatMul+Add+Relu, not MatMul+Add")


QKV_PLAIN = """
        graph main(%x: f32[2,8], %r: f32[2,4]) -> (%q, %v) {
          %wq = const f32[8,4] @wq
          %wv = const f32[8,4] @wv
          %bq = const f32[4] [0.1, 0.2, 0.3, 0.4]
          %bv = const f32[4] [0.5, 0.6, 0.7, 0.8]
          %mq = MatMul(%x, %wq) : f32[2,4]
          %q = Add(%mq, %bq) : f32[2,4]
          %mv = MatMul(%x, %wv) : f32[2,4]
          %v = Add(%mv, %bv) : f32[2,4]
        }
"""


def test_small_weights_stay_inside_the_merged_body() -> None:
    # fuse-operators copies constants of up to 64 elements into a body; the merged 8x8 weight stays there
    result = check_pass(MergeSiblingMatMuls(), _fused(QKV_PLAIN, _payloads(wq=(8, 4), wv=(8, 4))),
                        expect=lambda out: _ops(out) == ["effarch::FusedMatMul", "Slice", "Slice"])
    body = result.graph.nodes[0].body
    assert [v.type.shape for v in body.inputs] == [(2, 8)] and body.constants["wq_merged"].const.shape == (8, 8)


def test_products_whose_epilogue_is_not_fused_yet_stay_apart() -> None:
    check_not_fired(MergeSiblingMatMuls(), parse(QKV_PLAIN, _payloads(wq=(8, 4), wv=(8, 4))),
                    "feeds an epilogue that fuse-operators has not grouped yet")


def test_an_epilogue_reading_a_residual_stays_apart() -> None:
    text = QKV_PLAIN.replace("%v = Add(%mv, %bv) : f32[2,4]", "%av = Add(%mv, %bv) : f32[2,4]\n"
                             "          %v = Add(%av, %r) : f32[2,4]")
    text = text.replace("%q = Add(%mq, %bq) : f32[2,4]", "%aq = Add(%mq, %bq) : f32[2,4]\n"
                        "          %q = Add(%aq, %r) : f32[2,4]")
    check_not_fired(MergeSiblingMatMuls(), _fused(text, _payloads(wq=(8, 4), wv=(8, 4))),
                    "its epilogue reads %r, which is not a constant")


def test_a_merged_weight_over_the_bound_is_not_made(monkeypatch: Any) -> None:
    monkeypatch.setattr(merge_module, "MAX_MERGED_ELEMENTS", 63)  # each weight has 32 elements
    check_not_fired(MergeSiblingMatMuls(), _fused(QKV_PLAIN, _payloads(wq=(8, 4), wv=(8, 4))),
                    "its weight would hold 64 elements, over the bound of 63")


def test_the_bound_keeps_the_first_siblings_that_fit(monkeypatch: Any) -> None:
    monkeypatch.setattr(merge_module, "MAX_MERGED_ELEMENTS", 16 * 6)  # Q and K fit, V would not
    result = check_pass(MergeSiblingMatMuls(), qkv(), expect=lambda out: _ops(out) == [
        "effarch::FusedMatMul", "Slice", "Slice", "effarch::FusedMatMul"])
    assert any("over the bound" in n.reason for n in result.notes if not n.fired)


# ---- in the pipeline ------------------------------------------------------------------------------
def test_it_runs_right_after_fusion_at_O2_and_O3() -> None:
    for level in (2, 3):
        assert "fuse-operators,merge-sibling-matmuls," in default_pipeline(level)
    assert "merge-sibling-matmuls" not in default_pipeline(1)


def test_minilm_q_k_v_merge_in_every_layer_and_attention_reads_the_slices() -> None:
    pipeline = default_pipeline(2).replace("merge-sibling-matmuls,", "")
    fused = PassManager(pipeline).run(load_model("zoo:minilm").graph).graph
    result = check_pass(MergeSiblingMatMuls(), fused)
    groups = [n for n in result.graph.nodes if n.qualified_op == "effarch::FusedMatMul"]
    assert len(groups) == 36 - 12
    assert sum(1 for g in groups if g.outputs[0].type.shape == (1, 32, 1152)) == 6  # type: ignore[union-attr]
    assert _ops(result.graph).count("Slice") == 18 and _ops(result.graph).count("effarch::Attention") == 6
    assert all(u.op == "Reshape" for n in result.graph.nodes if n.op == "Slice" for u, _ in n.outputs[0].uses)
