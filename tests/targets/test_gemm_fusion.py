"""CUDA sm_90: GEMMs and their epilogues as wgmma kernels (``targets.gemm_fusion``, ``targets.gemm_kernel``).

Checked without a GPU: which graphs the pass takes and which it leaves, that the GPU check's numpy reference
is what the graph computes, the plan's choices, and the machine code (HGMMA, sm_90 only). Its numbers are
checked on the H200 (``tools/gpu_gemm_check.py`` against numpy, ``tools/gpu_check.py`` against PyTorch)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tvm
from tvm import relax

from compiler.driver import compile_model, load_model
from targets import cuda, gemm_cases
from targets import gemm_kernel as gk
from targets.artifact import open_artifact
from targets.gemm_fusion import MIN_ROWS, find_gemms
from tests.targets.test_attention_fusion import _sass

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import gpu_gemm_check as check  # noqa: E402  (tools/ is not a package)
from gpu_models import batched_source  # noqa: E402
from gpu_tensorcore_check import host_array  # noqa: E402


@pytest.mark.parametrize("name", list(check.CASES))
def test_every_check_case_is_one_kernel(name: str) -> None:
    kernel, args, out, out_dtype = gemm_cases.fused_kernel(check.case(name), check.shapes(check.case(name)), "sm_90")
    assert kernel.attrs["effarch.kernel"] == "wgmma-gemm"
    assert args == list(check.shapes(check.case(name)))
    assert out_dtype == ("float32" if "to_float32" in name else check.case(name)["dtype"])


@pytest.mark.parametrize("name", ["bias_gelu_3d", "residual_left_long_k", "rows_300_gelu_tanh", "bf16_wide_gelu",
                                  "logits_to_float32", "weight_nk_plain"])
def test_reference_is_the_graph(name: str) -> None:
    """The graph on the CPU, its products accumulated in float32 as the kernel does (float16 ones rounded once
    after), against the tool's float64 reference: within one rounding of the 16-bit type."""
    c = check.case(name)
    vals = check.inputs(list(check.CASES).index(name), c)
    wide = {**c, "wide": True}
    vm = relax.VirtualMachine(tvm.compile(gemm_cases.graph(wide, check.shapes(c)), target="llvm"), tvm.cpu())
    args = [tvm.runtime.empty(vals[k].shape, c["dtype"], tvm.cpu()).copyfrom(host_array(vals[k], c["dtype"]))
            for k in check.shapes(c)]
    out = vm["main"](*args)
    got = (check._from_bf16_bits(out._create_view(out.shape, "uint16").numpy()) if str(out.dtype) == "bfloat16"
           else out.numpy()).astype(np.float64)
    ref = check.reference(c, vals)
    assert np.abs(ref).max() > 1
    assert np.abs(got - ref).max() / np.abs(ref).max() < check.TOLERANCE[c["dtype"]] / 3


def _case(**kw: Any) -> dict[str, Any]:
    return {**check.DEFAULTS, "x": (1024, 384), "n": 384, **kw}


def _graph(c: dict[str, Any]) -> tvm.IRModule:
    return gemm_cases.graph(c, check.shapes(c))


@pytest.mark.parametrize("case", [
    _case(x=(MIN_ROWS - 64, 384)),  # too few rows: the schedule rules' smaller tiles
    _case(dtype="float32"),  # not a 16-bit GEMM
    _case(x=(1024, 96)),  # K not a multiple of 64
    _case(n=200),  # N not a multiple of 64
], ids=["few-rows", "float32", "k-96", "n-200"])
def test_what_stays_with_the_schedule_rules(case: dict[str, Any]) -> None:
    assert find_gemms(_graph(case)) == []


def test_an_unsupported_step_leaves_the_function() -> None:
    """A step that is not elementwise (softmax) in the grouped function: the whole function stays."""
    mod = _graph(_case(steps=[("add", "bias", False)]))
    assert len(find_gemms(mod)) == 1
    params = [relax.Var(p.name, p.ty) for p in mod["epilogue"].params]
    bb = relax.BlockBuilder()
    with bb.function("epilogue", params, attrs={"Primitive": True}, private=True):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(params[0], params[1], out_dtype="float16"))
            y = bb.emit(relax.op.add(y, params[2]))
            out = bb.emit_output(bb.emit(relax.op.nn.softmax(y)))
        bb.emit_func_output(out)
    mod["epilogue"] = bb.get()["epilogue"]
    assert find_gemms(mod) == []


def test_plan_keeps_every_block_in_one_wave() -> None:
    def plan(m: int, n: int, k: int) -> gk.Plan:
        g = gk.Gemm("float16", "float16", (m, k), n, False, (), ())
        p = gk.plan(g)
        assert p is not None
        return p

    up = plan(2048, 1024, 256)  # 512 blocks: 4 a SM with 3 buffers fit one wave, 3 with 4 do not
    assert (up.bm, up.bn, up.stages, up.inflight) == (64, 64, 3, 0)
    down = plan(2048, 256, 1024)  # 128 blocks: 4 buffers, one product group left in flight
    assert (down.stages, down.inflight) == (4, 1)
    assert down.grid(gk.Gemm("float16", "float16", (2048, 1024), 256, False, (), ())) == (4, 32)
    assert gk.plan(gk.Gemm("float16", "float16", (2048, 100), 256, False, (), ())) is None
    assert gk.plan(gk.Gemm("float16", "float16", (64 * gk.MAX_GRID_Y + 1, 64), 64, False, (), ())) is None


def test_gpt_at_batch_32_runs_its_gemms_on_wgmma(tmp_path: Path) -> None:
    """zoo GPT at batch 32 in fp16 for sm_90: the QKV projection, the output projection with its residual,
    the FFN's up (GELU) and down (residual) projections and the head (cast to float32) are wgmma kernels with
    HGMMA in their SASS; for sm_80 none is."""
    path = tmp_path / "gpt.effarch"
    compile_model(load_model(batched_source("gpt", 32)), path, target="cuda", cpu="sm_90", precision="fp16")
    library = open_artifact(path).library_bytes()
    assert cuda.machine_code_report(library) == {"fatbin_entries": [("sass", "sm_90a")], "cuda_source_kernels": 0}
    sass = _sass(library, tmp_path)
    functions = re.split(r"\n\s*Function : ", sass)
    kernels = [f for f in functions[1:] if f.startswith("wgmma_gemm")]
    assert len(kernels) == 5, [f.split("\n", 1)[0] for f in functions[1:]]
    assert all("HGMMA.64x64x16.F32" in k for k in kernels)
    assert not [f for f in functions[1:] if f.startswith("effarch_matmul") or "matmul" in f.split("\n", 1)[0]]
    older = tmp_path / "gpt80.effarch"
    compile_model(load_model(batched_source("gpt", 32)), older, target="cuda", cpu="sm_80", precision="fp16")
    sass80 = _sass(open_artifact(older).library_bytes(), tmp_path)
    assert "HGMMA" not in sass80 and "wgmma_gemm" not in sass80


def test_scalar_and_per_row_inputs_build(tmp_path: Path) -> None:
    """Epilogue inputs that do not run along the columns (a 0-d constant, a per-row [M, 1] tensor, a float32
    bias) are read a value a row, or as two 16-byte halves: the kernel builds and compiles for sm_90a."""
    from targets.schedules.tensorcore_kernels import build_library

    dt = "float16"
    x = relax.Var("x", relax.TensorType((512, 128), dt))
    w = relax.Var("w", relax.TensorType((128, 192), dt))
    rows = relax.Var("rows", relax.TensorType((512, 1), dt))
    bias = relax.Var("bias", relax.TensorType((192,), "float32"))
    fparams = [relax.Var(v.name, v.ty) for v in (x, w, rows, bias)]
    bb = relax.BlockBuilder()
    with bb.function("epilogue", fparams, attrs={"Primitive": True}, private=True):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(fparams[0], fparams[1], out_dtype=dt))
            y = bb.emit(relax.op.multiply(y, relax.const(0.5, dt)))
            y = bb.emit(relax.op.multiply(y, fparams[2]))
            y = bb.emit(relax.op.astype(y, "float32"))
            out = bb.emit_output(bb.emit(relax.op.add(y, fparams[3])))
        bb.emit_func_output(out)
    gv = bb.get().get_global_var("epilogue")
    with bb.function("main", [x, w, rows, bias]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(relax.Call(gv, [x, w, rows, bias])))
        bb.emit_func_output(out)
    (match,) = find_gemms(bb.get())
    assert [(s.op, s.arg) for s in match.gemm.steps] == [("multiply", 2), ("multiply", 3), ("astype", None),
                                                          ("add", 4)]
    assert match.gemm.out_dtype == "float32"
    build_library({"k": gk.build(match.gemm, match.plan, "k")}, "sm_90", tmp_path / "k.so")
    sass = _sass((tmp_path / "k.so").read_bytes(), tmp_path)
    assert "HGMMA.64x64x16.F32" in sass


def test_only_a_transpose_makes_the_weight_k_major() -> None:
    """``permute_dims(t)`` or ``permute_dims(t, [1, 0])`` of a 2-D t is read as [N, K]; the identity
    permutation is an ordinary [K, N] weight."""
    for axes, kmajor in ((None, True), ([1, 0], True), ([0, 1], False)):
        x = relax.Var("x", relax.TensorType((512, 128), "float16"))
        t = relax.Var("t", relax.TensorType((128, 128), "float16"))
        bb = relax.BlockBuilder()
        with bb.function("main", [x, t]):
            with bb.dataflow():
                w = bb.emit(relax.op.permute_dims(t, axes))
                out = bb.emit_output(bb.emit(relax.op.matmul(x, w, out_dtype="float16")))
            bb.emit_func_output(out)
        (match,) = find_gemms(bb.get())
        assert match.gemm.w_kmajor is kmajor and match.args[1].same_as(t if kmajor else w)
