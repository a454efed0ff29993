"""CUDA: a fused group holding more than one contraction or reduction (attention: QK^T, softmax, PV) is
lowered op by op, so TVM's FuseOps makes each matmul a kernel of its own that the tensor-core rule takes;
on x86 the group stays one kernel (``targets.lowering.fused``). Checked on the zoo's GPT without a GPU:
the kernels after FuseTIR, the rule that schedules each, and the precision each op computes in."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import tvm
from tvm import relax, s_tir, tirx
from tvm.ir import TensorLoad

from compiler.driver import load_model, optimize, pipeline_for
from compiler.ir import Graph
from targets.base import get_target
from targets.build import lowering_options
from targets.cuda import gpu_rules
from targets.lowering.fused import KERNEL_PREFIX, multi_stage
from targets.lowering.to_relax import lower
from targets.mixed_precision import to_mixed_precision
from targets.schedules import ScheduleReport
from targets.schedules.gpu_rules import apply_rules

ARCH = "sm_90"


@functools.cache
def graph(name: str) -> Graph:
    g, _ = optimize(load_model(f"zoo:{name}").graph, pipeline_for(2, None), opt_level=2, target="cuda")
    return g


def cuda_target() -> tvm.target.Target:
    spec = get_target("cuda")
    return tvm.target.Target(spec.target_dict(spec.resolve_cpu(ARCH)), host={"kind": "llvm"})


def fused_kernels(mod: tvm.IRModule) -> tvm.IRModule:
    """``mod`` through the CUDA pipeline's legalization and fusion (``targets.cuda.cuda_pipeline``),
    before any schedule: one PrimFunc per kernel."""
    passes = [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
              relax.transform.FuseOps(), relax.transform.FuseTIR()]
    with cuda_target():
        return tvm.transform.Sequential(passes)(mod)


@functools.cache
def cuda_module(name: str, precision: str = "fp16") -> tvm.IRModule:
    lowered = lower(graph(name), **lowering_options(get_target("cuda"), ARCH, 2))
    return to_mixed_precision(lowered.mod, precision)


def _strip_casts(e: Any) -> Any:
    while isinstance(e, tirx.Cast):
        e = e.value
    return e


def is_contraction(block: Any) -> bool:
    """``C[...] += A[...] * B[...]`` over a reduction axis with A and B two different buffers (a sum of
    squares in a normalization is not one)."""
    body = block.body
    if not any(iv.iter_type == tirx.IterVar.CommReduce for iv in block.iter_vars):
        return False
    if not isinstance(body, tirx.BufferStore) or not isinstance(body.value, tirx.Add):
        return False
    for term in (body.value.a, body.value.b):
        term = _strip_casts(term)
        if isinstance(term, tirx.Mul):
            a, b = _strip_casts(term.a), _strip_casts(term.b)
            if (isinstance(a, TensorLoad) and isinstance(b, TensorLoad)
                    and not a.source.same_as(b.source)):
                return True
    return False


def stages_of(func: tirx.PrimFunc) -> tuple[int, int]:
    """(contraction blocks, reduction blocks) of an unscheduled PrimFunc."""
    sch = s_tir.Schedule(func)
    blocks = [sch.get(b) for b in sch.get_child_blocks(sch.get_sblock("root"))]
    reductions = [b for b in blocks if any(iv.iter_type == tirx.IterVar.CommReduce for iv in b.iter_vars)]
    return sum(is_contraction(b) for b in reductions), len(reductions)


def per_head(func: tirx.PrimFunc) -> bool:
    """Whether the kernel's contraction is batched over heads: 4-D result from two 4-D operands."""
    sch = s_tir.Schedule(func)
    for b in (sch.get(rv) for rv in sch.get_child_blocks(sch.get_sblock("root"))):
        if is_contraction(b):
            product = next(_strip_casts(t) for t in (b.body.value.a, b.body.value.b)
                           if isinstance(_strip_casts(t), tirx.Mul))
            operands = [_strip_casts(product.a), _strip_casts(product.b)]
            return len(b.body.indices) == 4 and all(len(o.indices) == 4 for o in operands)
    return False


def kernels(mod: tvm.IRModule) -> dict[str, tirx.PrimFunc]:
    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}


def test_multi_stage_picks_attention_only() -> None:
    decided = {(n.op, multi_stage(n)) for name in ("gpt", "minilm") for n in graph(name).nodes if n.body is not None}
    assert ("Attention", True) in decided and ("FusedMatMul", False) in decided
    assert {op for op, split in decided if split} == {"Attention"}, sorted(decided)


@pytest.mark.parametrize("name", ["gpt", "minilm"])
def test_cuda_kernel_holds_at_most_one_contraction(name: str) -> None:
    attention = sum(n.op == "Attention" for n in graph(name).nodes)
    assert attention >= 1  # the model has attention groups to split
    found = kernels(fused_kernels(cuda_module(name)))
    stages = {k: stages_of(f) for k, f in found.items()}
    mixed = {k: s for k, s in stages.items() if s[0] > 1 or (s[0] == 1 and s[1] > 1)}
    assert not mixed, f"kernels with a contraction and another contraction or reduction: {mixed}"
    assert not [k for k in found if k.startswith(f"{KERNEL_PREFIX}attention")]
    # QK^T and PV: batched over the heads, each its own kernel (the projections are not per head).
    batched = [k for k, f in found.items() if stages[k][0] == 1 and per_head(f)]
    assert len(batched) >= 2, sorted(found)


def test_x86_keeps_the_attention_group() -> None:
    lowered = lower(graph("gpt"), **lowering_options(get_target("x86"), None, 2))
    names = [gv.name_hint for gv in lowered.mod.functions]
    assert any(n.startswith(f"{KERNEL_PREFIX}attention") for n in names), names


def test_split_attention_computes_matmuls_low_softmax_fp32() -> None:
    main = cuda_module("gpt", "fp16")["main"]
    seen: dict[str, list[list[str]]] = {"relax.matmul": [], "relax.nn.softmax": []}

    def visit(e: Any) -> None:
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name in seen:
            seen[e.op.name].append([a.ty.dtype for a in e.args])

    relax.analysis.post_order_visit(main.body, visit)
    assert len(seen["relax.nn.softmax"]) == 4  # one per layer, inline in main
    assert all(d == ["float32"] for d in seen["relax.nn.softmax"])
    assert len(seen["relax.matmul"]) >= 8 and all(d == ["float16", "float16"] for d in seen["relax.matmul"])


def test_every_attention_matmul_takes_tensor_cores() -> None:
    mod = fused_kernels(cuda_module("gpt", "fp16"))
    contracting = {k for k, f in kernels(mod).items() if stages_of(f)[0] == 1}
    report = ScheduleReport()
    with cuda_target():
        apply_rules(gpu_rules(), report)(mod)
    assert contracting and {k: report.rules[k] for k in contracting} == {k: "tensorcore" for k in contracting}
