"""prune-channels on zoo models after -O2 folding: the structure of what it removes (residual groups
in ResNet-18, depthwise convs in MobileNetV2, Flatten into Gemm in digits_cnn, heads in MiniLM, MLP
neurons in the GPT), the verifier, and onnxruntime running the result; plus the budget search on
digits_cnn's held-out split."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from compiler.compression import CompressionData
from compiler.driver import load_model, optimize
from compiler.ir import Graph, verify
from compiler.ir.stats import graph_stats
from compiler.numerics.datasets import Dataset
from compiler.numerics.reference import random_inputs, run_onnxruntime
from compiler.pass_manager import PassContext
from passes.prune import PruneChannels

FOLDING = ("fixpoint<8>(simplify,fold-constants,eliminate-dead-code),canonicalize-patterns,fold-constants,"
           "fold-batchnorm,fold-constants,eliminate-dead-code")


@cache
def folded(name: str) -> Graph:
    graph, _ = optimize(load_model(f"zoo:{name}").graph, FOLDING)
    return graph


def pruned(name: str, **options: object) -> tuple[Graph, list]:
    result = PruneChannels(**options).run(folded(name).clone(), PassContext())
    verify(result.graph)
    outputs = run_onnxruntime(result.graph, random_inputs(result.graph))
    assert [o.shape for o in outputs.values()] == [v.type.static_shape() for v in folded(name).outputs]
    return result.graph, result.notes


def weight(g: Graph, node: str, index: int = 1) -> tuple[int, ...]:
    n = next(n for n in g.nodes if n.name == node)
    return tuple(n.inputs[index].const.shape)  # type: ignore[union-attr]


def test_resnet18_prunes_each_residual_stage_as_one_group() -> None:
    g, notes = pruned("resnet18", ratio=0.25)
    # stage 0: the stem conv and both blocks' second convs write the same residual stream
    stream = ["node__native_batch_norm_legit_no_training__0", "node__native_batch_norm_legit_no_training_2__0",
              "node__native_batch_norm_legit_no_training_4__0"]
    assert {weight(g, n)[0] for n in stream} == {48}
    adds = [n for n in g.nodes if n.op == "Add"]
    assert adds[0].outputs[0].type.shape[1] == 48  # type: ignore[union-attr, index]
    assert any("coupled with 2 more" in n.reason for n in notes if n.fired)
    assert graph_stats(g).flops < graph_stats(folded("resnet18")).flops  # type: ignore[operator]


def test_mobilenetv2_prunes_through_depthwise_convs() -> None:
    g, _ = pruned("mobilenetv2", ratio=0.25)
    depthwise = [n for n in g.nodes if n.op == "Conv" and n.attrs.get("group", 1) > 1]
    before = [n for n in folded("mobilenetv2").nodes if n.op == "Conv" and n.attrs.get("group", 1) > 1]
    assert [n.attrs["group"] for n in depthwise] == [weight(g, n.name)[0] for n in depthwise]
    assert all(a.attrs["group"] < b.attrs["group"] for a, b in zip(depthwise, before, strict=True))


def test_digits_cnn_flatten_into_gemm() -> None:
    g, notes = pruned("digits_cnn", ratio=0.5)
    assert weight(g, "node_linear") == (10, 16 * 2 * 2)
    assert any("graph output %logits" in n.reason for n in notes if not n.fired)


def test_minilm_prunes_whole_heads_of_q_k_v_together() -> None:
    g, notes = pruned("minilm", ratio=0.25)
    views = [n for n in g.nodes if n.op == "Reshape" and n.outputs[0].type.rank == 4]  # type: ignore[union-attr]
    assert views and all(n.outputs[0].type.shape[2:] == (9, 32) for n in views)  # type: ignore[union-attr, index]
    assert weight(g, "node_MatMul_20") == (384, 9 * 32) and weight(g, "node_MatMul_50") == (9 * 32, 384)
    assert any("32-channel heads" in n.reason for n in notes if n.fired)
    assert any("LayerNormalization, not a prunable layer" in n.reason for n in notes if not n.fired)


def test_gpt_prunes_mlp_neurons_and_refuses_the_fused_qkv() -> None:
    g, notes = pruned("gpt", ratio=0.25)
    assert weight(g, "node_MatMul_32") == (256, 768) and weight(g, "node_MatMul_34") == (768, 256)
    assert any("fused QKV" in n.reason for n in notes if not n.fired)


def _digits_test_set() -> Dataset:
    from compiler.zoo.digits_cnn import test_split

    images, labels = test_split()
    return Dataset({"images": images}, labels, "digits test split")


@pytest.mark.parametrize("max_drop", [0.5, 2.0])
def test_budget_search_stays_within_the_measured_budget(max_drop: float) -> None:
    base = folded("digits_cnn")
    data = CompressionData(accuracy=_digits_test_set(), max_drop=max_drop, reference=base)
    result = PruneChannels(flops=0.25, recalibrate=False).run(base.clone(), PassContext(data=data))
    verify(result.graph)
    assert data.score(result.graph).drop_from(data.score(base)) <= max_drop
    assert any("sensitivity alone" in n.reason for n in result.notes if n.fired)


def test_recalibration_is_measured_and_reported() -> None:
    base = folded("digits_cnn")
    images = _digits_test_set().inputs["images"]
    data = CompressionData(calibration=Dataset({"images": images[:128]}, None, "calibration"), reference=base)
    result = PruneChannels(ratio=0.5).run(base.clone(), PassContext(data=data))
    note = next(n for n in result.notes if n.rule == "recalibrate")
    assert "cosine" in note.reason and ("kept" in note.reason) == note.fired
    assert np.isfinite(run_onnxruntime(result.graph, random_inputs(result.graph))["logits"]).all()
