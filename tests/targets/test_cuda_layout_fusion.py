"""CUDA: no kernel that only moves data next to a contraction (``targets.cast_fusion``, layout kernels).

A transformer's head split (``Reshape -> Slice -> Transpose`` of the fused QKV projection: q, k and v one
kernel each) and head merge (``Transpose -> Reshape`` after the attention product) were four kernels a
layer in GPT and MiniLM. The pass moves each into the GEMM next to it, and the GEMM rules read through
the copies (``gpu_tensorcore.inline_copies``). Checked without a GPU: the kernels after the CUDA pipeline,
the operand layout the tensor-core rule sees, and the same numbers with and without the pass on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax, s_tir
from tvm.relax import op as R

from targets import cuda
from targets.cast_fusion import is_layout_kernel
from targets.schedules import ScheduleReport
from targets.schedules.gpu_tensorcore import analyze_operand, find_gemm
from tests.targets.test_cuda_cast_fusion import cuda_target, fused, launches, run_on_cpu, zoo_module

B, S, HEADS, HEAD = 2, 16, 4, 16
D = HEADS * HEAD


def attention(dtype: str = "float32") -> tvm.IRModule:
    """GPT's attention as the ONNX importer lowers it: one QKV projection, its heads split by reshape,
    slice and transpose, softmax(q k^T) v, the heads merged by transpose and reshape, the output projection."""
    x = relax.Var("x", relax.TensorType((B, S, D), dtype))
    w_qkv = relax.Var("w_qkv", relax.TensorType((D, 3 * D), dtype))
    w_out = relax.Var("w_out", relax.TensorType((D, D), dtype))
    bb = relax.BlockBuilder()
    with bb.function("main", [x, w_qkv, w_out], attrs={"num_input": 1}):
        with bb.dataflow():
            qkv = bb.emit(R.reshape(bb.emit(R.matmul(x, w_qkv)), (B, S, 3, HEADS, HEAD)))

            def head(i: int, axes: list[int]) -> relax.Expr:
                part = bb.emit(R.strided_slice(qkv, axes=[2], begin=[i], end=[i + 1]))
                return bb.emit(R.permute_dims(bb.emit(R.reshape(part, (B, S, HEADS, HEAD))), axes))

            q, k_t, v = head(0, [0, 2, 1, 3]), head(1, [0, 2, 3, 1]), head(2, [0, 2, 1, 3])
            scores = bb.emit(R.nn.softmax(bb.emit(R.matmul(q, k_t)), axis=-1))
            heads = bb.emit(R.permute_dims(bb.emit(R.matmul(scores, v)), [0, 2, 1, 3]))
            y = bb.emit_output(R.matmul(bb.emit(R.reshape(heads, (B, S, D))), w_out))
        bb.emit_func_output(y)
    return bb.get()


def layout_launches(mod: tvm.IRModule) -> list[str]:
    return [n for n in launches(mod) if is_layout_kernel(mod[n])]


def test_head_split_and_merge_join_the_gemms() -> None:
    mod = attention()
    before, after = fused(mod, casts_fused=False), fused(mod, casts_fused=True)
    # q, k (with its transpose), v and the merge: four kernels that only move data
    assert len(layout_launches(before)) == 4, launches(before)
    assert layout_launches(after) == []
    assert len(launches(after)) == len(launches(before)) - 4


def test_same_numbers_on_the_cpu() -> None:
    rng = np.random.default_rng(0)
    args = [a.astype(np.float32) for a in (rng.standard_normal((B, S, D)), rng.standard_normal((D, 3 * D)) / 8,
                                           rng.standard_normal((D, D)) / 8)]
    plain, moved = run_on_cpu(attention(), args, False), run_on_cpu(attention(), args, True)
    assert np.isfinite(plain).all() and np.abs(plain).max() > 0
    np.testing.assert_allclose(moved, plain, rtol=1e-5, atol=1e-6)


def test_tensor_core_rule_reads_k_along_the_reduction() -> None:
    """The scores GEMM reads q and k from the projection's output, where both run along the head dimension
    (the reduction): 16-byte vector copies. Without reading through the copies, k^T would look N-major."""
    after = fused(attention("float16"), casts_fused=True)
    names = [n for n in launches(after) if n.startswith("layout_layout_")]  # q and k moved into the scores
    assert len(names) == 1, launches(after)
    sch = s_tir.Schedule(after[names[0]])
    gemm = find_gemm(sch)
    assert gemm is not None
    stmt = sch.get(gemm.block)
    a, b = analyze_operand(stmt, 0), analyze_operand(stmt, 1)
    assert a.k_inner and b.k_inner, (a, b)
    assert a.lanes == HEAD and b.lanes == HEAD, (a, b)
    # both operands are the same tensor, passed twice: two buffers, so the GEMM keeps two reads
    assert len({r.source.name for r in stmt.reads}) == 2


def test_gpt_kernels_move_no_data_on_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """GPT (4 layers, fp16): 16 layout kernels before the pass, none after; each attention GEMM that took
    them in is still on tensor cores. (The build fuses GPT's attention into one kernel, which reads through
    the head split itself: ``test_attention_fusion``; unfused is how attentions it does not take run.)"""
    monkeypatch.setattr(cuda, "FUSED_ATTENTION", False)
    mod = zoo_module("gpt", "fp16")
    before, after = fused(mod, casts_fused=False), fused(mod, casts_fused=True)
    assert len(layout_launches(before)) == 16, launches(before)
    assert layout_launches(after) == []
    report = ScheduleReport()
    with tvm.transform.PassContext(config={"relax.backend.use_cuda_graph": True}):
        cuda.cuda_pipeline(cuda_target(), report)(mod)
    moved = {k: rule for k, rule in report.rules.items() if k.startswith("layout_") or k.endswith("_layout")}
    assert len(moved) == 2 and set(moved.values()) == {"tensorcore"}, report.rules


def test_a_scalars_reshape_stays_beside_an_integer_gemm() -> None:
    """A quantized matmul's zero point reshaped from [] to []: nothing to gain, and the integer kernels keep the
    form they were measured in on the H200 (moved, the kernel would be ``layout_int8_matmul_gpu``)."""
    from tests.targets.test_cuda_int8 import MATMUL, _cuda_source, _graph, _weights

    source = _cuda_source(_graph(MATMUL, w=_weights((40, 64))))
    assert ") int8_matmul_gpu_kernel(" in source
