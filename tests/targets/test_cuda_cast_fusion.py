"""CUDA ``--precision fp16|bf16``: no kernel that only casts (``targets.cast_fusion``).

Mixed precision casts at every border of the fp32 islands; before this pass ``FuseOps`` left 9 of those
casts as kernels of their own in the zoo's GPT and 48 in MiniLM (2-3 us a launch on an H200). Checked
without a GPU: the kernels after the CUDA pipeline (TIR), the kernels in a built library (SASS), and the
same numbers with and without the pass on the CPU."""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tvm
from tvm import relax, tirx
from tvm.relax import op as R
from tvm.relax.backend.cpu_generic import pipeline as cpu

from compiler.driver import compile_model, load_model, optimize, pipeline_for
from targets import cuda
from targets.artifact import open_artifact
from targets.base import get_target
from targets.build import lowering_options
from targets.cast_fusion import fuse_casts, is_cast_kernel
from targets.lowering.to_relax import lower
from targets.mixed_precision import to_mixed_precision
from targets.schedules import ScheduleReport

ARCH = "sm_90"
_FUSION = [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
           relax.transform.FuseOps()]


def cuda_target() -> tvm.target.Target:
    return get_target("cuda").tvm_target(ARCH)


@functools.cache
def zoo_module(name: str, precision: str) -> tvm.IRModule:
    spec = get_target("cuda")
    graph, _ = optimize(load_model(f"zoo:{name}").graph, pipeline_for(2, None), opt_level=2, target="cuda")
    lowered = lower(graph, **lowering_options(spec, ARCH, 2))
    mod, _, _ = spec.prepare(lowered.mod, list(lowered.param_names), list(lowered.params), precision=precision)
    return mod


def fused(mod: tvm.IRModule, *, casts_fused: bool) -> tvm.IRModule:
    """``mod`` through the CUDA pipeline's fusion, with or without ``fuse_casts``: one PrimFunc per kernel."""
    passes = [*_FUSION, *([fuse_casts()] if casts_fused else []), relax.transform.FuseTIR(),
              relax.transform.DeadCodeElimination()]
    with cuda_target():
        return tvm.transform.Sequential(passes)(mod)


def launches(mod: tvm.IRModule) -> list[str]:
    """The PrimFunc each kernel launch in ``main`` calls, in order."""
    names: list[str] = []

    def visit(e: Any) -> None:
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name == "relax.call_tir":
            names.append(e.args[0].name_hint)

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return names


def cast_launches(mod: tvm.IRModule) -> list[str]:
    return [n for n in launches(mod) if is_cast_kernel(mod[n])]


# ---- a hand-built block: matmul, residual, layer norm, matmul, softmax ----------------------------
def block() -> tvm.IRModule:
    """fp32: matmul, residual add, layer norm, matmul, residual add, softmax; weights after the input."""
    x = relax.Var("x", relax.TensorType((32, 256), "float32"))
    w1, w2 = (relax.Var(n, relax.TensorType((256, 256), "float32")) for n in ("w1", "w2"))
    g, b = (relax.Var(n, relax.TensorType((256,), "float32")) for n in ("g", "b"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x, w1, w2, g, b], attrs={"num_input": 1}):
        with bb.dataflow():
            r = bb.emit(R.add(bb.emit(R.matmul(x, w1)), x))  # read by the layer norm (fp32) and a residual
            n = bb.emit(R.nn.layer_norm(r, g, b, axes=[-1]))
            m = bb.emit(R.add(bb.emit(R.matmul(n, w2)), r))
            y = bb.emit_output(R.nn.softmax(m, axis=-1))
        bb.emit_func_output(y)
    return bb.get()


def block_fp16() -> tuple[tvm.IRModule, list[np.ndarray]]:
    """``block()`` in fp16 with its weights cast once, as the build stores them; the fp32 input ``x`` first."""
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((256, 256)) / 16, rng.standard_normal((256, 256)) / 16,
               rng.uniform(0.5, 1.5, 256), rng.standard_normal(256) * 0.1]
    mod, _, params = cuda.lift_weight_transforms(to_mixed_precision(block(), "fp16"), ["w1", "w2", "g", "b"],
                                                 [w.astype(np.float32) for w in weights])
    return mod, [rng.standard_normal((32, 256)).astype(np.float32), *params]


def test_hand_built_block_has_cast_kernels_only_without_the_pass() -> None:
    mod, _ = block_fp16()
    before, after = fused(mod, casts_fused=False), fused(mod, casts_fused=True)
    # FuseOps leaves the input's cast (read by a matmul and an add) and the layer norm's up-cast (its
    # input is also the fp16 residual) as kernels; the pass puts each inside its readers.
    assert len(cast_launches(before)) == 2, launches(before)
    assert cast_launches(after) == []
    assert len(launches(after)) == len(launches(before)) - 2


def run_on_cpu(mod: tvm.IRModule, args: list[np.ndarray], casts_fused: bool) -> np.ndarray:
    """``mod`` through the CUDA pipeline's fusion (with or without ``fuse_casts``), built and run on LLVM."""
    host = tvm.target.Target({"kind": "llvm"})

    @tvm.transform.module_pass(opt_level=0, name="test.cpu_pipeline")
    def pipeline(m: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        passes = [*_FUSION, *([fuse_casts()] if casts_fused else []), relax.transform.FuseTIR(),
                  *cpu.dataflow_lower_passes(host), *cpu.finalize_passes(host)]
        with host:
            return tvm.transform.Sequential(passes)(m)

    vm = relax.VirtualMachine(tvm.compile(mod, target=host, relax_pipeline=pipeline), tvm.cpu())
    return np.asarray(vm["main"](*[tvm.runtime.tensor(a) for a in args]).numpy())


def test_hand_built_block_same_numbers_on_the_cpu() -> None:
    """The fused casts compute what the cast kernels did (fp16 on LLVM: bit for bit)."""
    mod, args = block_fp16()
    plain, fused_casts = run_on_cpu(mod, args, False), run_on_cpu(mod, args, True)
    assert np.isfinite(plain).all() and np.abs(plain).max() > 0
    np.testing.assert_array_equal(fused_casts, plain)


def test_casts_stay_beside_kernels_fusion_cannot_reopen() -> None:
    """A cast next to an already scheduled kernel (a library's) stays: FuseTIR cannot merge into one."""
    mod, _ = block_fp16()
    with cuda_target():
        grouped = tvm.transform.Sequential(_FUSION)(mod)
    for gv, func in list(grouped.functions_items()):
        if isinstance(func, tirx.PrimFunc) and not is_cast_kernel(func):
            grouped[gv] = func.with_attr("tirx.is_scheduled", True)
    assert len(cast_launches(grouped)) == 2
    tvm.ir.assert_structural_equal(fuse_casts()(grouped), grouped)


def test_is_cast_kernel() -> None:
    legal = relax.transform.LegalizeOps()(to_mixed_precision(block(), "fp16"))
    prims = {gv.name_hint: f for gv, f in legal.functions_items() if isinstance(f, tirx.PrimFunc)}
    casts = sorted(n for n, f in prims.items() if is_cast_kernel(f))
    assert casts and all(n.startswith("cast") for n in casts), sorted(prims)
    assert not any(is_cast_kernel(prims[n]) for n in prims if not n.startswith("cast"))


# ---- zoo transformers: the CUDA pipeline's kernels and a built library ----------------------------
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_gpt_kernels_after_the_cuda_pipeline(precision: str) -> None:
    """GPT (4 layers): 9 cast kernels before the pass (the fp16 residual cast up before each layer norm,
    the embedding sum cast down); none after, every kernel still taken by the rule it had. (The pass also
    moves the 16 head split and merge kernels: ``test_cuda_layout_fusion``.)"""
    mod = zoo_module("gpt", precision)
    before, after = fused(mod, casts_fused=False), fused(mod, casts_fused=True)
    assert len(cast_launches(before)) == 9
    assert cast_launches(after) == [] and len(launches(after)) == len(launches(before)) - 9 - 16
    report = ScheduleReport()
    with tvm.transform.PassContext(config={"relax.backend.use_cuda_graph": True}):
        built = cuda.cuda_pipeline(cuda_target(), report)(mod)
    kernels = [f for _, f in built.functions_items() if isinstance(f, tirx.PrimFunc)]
    assert kernels and not any(is_cast_kernel(f) for f in kernels)
    counts = report.counts()
    # the matmuls that now cast their residual or result stay on tensor cores, the layer norms that read
    # the fp16 residual on the row rule; attention is one kernel of its own (``test_attention_fusion``)
    assert counts.get("tensorcore", 0) == 7 and counts.get("gpu-rows", 0) == 2, counts
    assert counts.get("fused-attention", 0) == 1, counts


def _sass_functions(library: bytes, tmp: Path) -> list[str]:
    tool = cuda.find_cuobjdump()
    env = {"PATH": f"{tool.parent}:/usr/bin:/bin"}
    names: list[str] = []
    for i, fatbin in enumerate(cuda.fatbins_in(library)):
        path = tmp / f"{i}.fatbin"
        path.write_bytes(fatbin)
        text = subprocess.run([str(tool), "-sass", str(path)], capture_output=True, text=True, check=True,
                              env=env).stdout
        names += re.findall(r"\n\s*Function : (\S+)\n", text)
    return names


def test_gpt_fp16_library_has_no_cast_kernel(tmp_path: Path) -> None:
    path = tmp_path / "gpt.effarch"
    compile_model(load_model("zoo:gpt"), path, target="cuda", cpu=ARCH, precision="fp16")
    names = _sass_functions(open_artifact(path).library_bytes(), tmp_path)
    assert any(n.startswith("fused_layer_norm") or "layer_norm" in n for n in names), names
    # legalized astype kernels are named cast, cast1, ...; fused groups made only of casts fused_cast...
    assert not [n for n in names if re.fullmatch(r"(fused_)?cast\d*(_cast\d*)*_kernel(_\d+)?", n)], names
