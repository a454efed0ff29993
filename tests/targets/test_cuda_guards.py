"""``targets.cuda.branch_free_guards``: the conditions of TVM's ``if_then_else`` guards evaluated without
short-circuits where they only compare index arithmetic, and what that does to the SASS of a convolution
whose float32 NCHW input is cast and transposed inside its gather (ResNet-18's stem at batch 32)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import tvm
from tvm import relax, tirx

from targets import cuda
from targets.cuda import branch_free_guards, compile_fatbin, gpu_rules, nhwc_convolutions, pass_config
from tests.targets.gpu_kernel_checks import sass_by_function
from tests.targets.test_cuda_cast_fusion import fused

TARGET = {"kind": "cuda", "arch": "sm_90"}


def _guard(cond: str, name: str = "condval") -> str:
    return (f"  half {name};\n  if ({cond}) {{\n    {name} = p[i];\n  }} else {{\n"
            f"    {name} = __float2half_rn(0x0p+0f);\n  }}\n")


def test_index_only_conditions_lose_their_short_circuits() -> None:
    index = ("((((int)threadIdx.y) >> 2) < 147) && (3 <= ((((((int)blockIdx.x) % 98) * 8) + cse_v3) / 7))"
             " && (((((int)threadIdx.x) & 7) * 2) < 227)")
    out = branch_free_guards(_guard(index) + _guard("(a < 3) || (b == 4)", "condval_1"))
    assert "&&" not in out and "||" not in out
    assert out == _guard(index.replace("&&", "&")) + _guard("(a < 3) | (b == 4)", "condval_1")


def test_guards_that_read_memory_call_or_divide_by_a_variable_are_kept() -> None:
    kept = ["(i < n) && (p[i] > 0)",                     # the first operand protects the load
            "(i < n) && (*(int4*)(p + i)).x > 0",
            "(min(i, j) < 3) && (k < 4)",                 # a call
            "(i < n) && ((j / n) < 4)",                   # n may be 0 where i < n is false
            "(i < n) && ((j % m) < 4)"]
    source = "".join(_guard(c) for c in kept)
    assert branch_free_guards(source) == source
    plain_if = "  if ((i < n) && (j < m)) {\n    q[i] = 0;\n  }\n"  # not a guard of a value: left alone
    assert branch_free_guards(plain_if) == plain_if


def _nhwc_stem_of_float32_input() -> tirx.PrimFunc:
    """A 7x7 stride-2 convolution of 3 channels at batch 32, channels-last, its float32 NCHW input cast to
    float16 and transposed inside the kernel (the CUDA pipeline's cast fusion), as ResNet-18's stem."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((32, 3, 56, 56), "float32"))
    w = relax.Var("w", relax.TensorType((7, 7, 3, 64), "float16"))
    with bb.function("main", [x, w], attrs={"num_input": 1}):
        with bb.dataflow():
            h = bb.emit(relax.op.permute_dims(bb.emit(relax.op.astype(x, "float16")), [0, 2, 3, 1]))
            y = bb.emit_output(relax.op.nn.conv2d(h, w, strides=2, padding=3, data_layout="NHWC",
                                                  kernel_layout="HWIO", out_dtype="float16"))
        bb.emit_func_output(y)
    (conv,) = [f for _, f in fused(bb.get(), casts_fused=True).functions_items()
               if isinstance(f, tirx.PrimFunc) and "conv" in f.script()]
    return conv


def test_the_stem_gathers_with_predicated_loads_instead_of_branches(tmp_path: Path) -> None:
    """nvcc 13 branches around every guarded load of the stem's gather when the guard short-circuits
    (each load then completes before the next one is issued); without short-circuits it predicates
    them. The build rewrites the guards of channels-last builds only (``test_channels_last_builds_...``)."""
    target = tvm.target.Target(TARGET, host={"kind": "llvm"})
    sch = dict(gpu_rules())["tensorcore"].apply(_nhwc_stem_of_float32_input(), target, False)
    assert sch is not None
    with target, tvm.transform.PassContext(config=pass_config(cuda_graphs=False)):
        lib = tvm.compile(tvm.IRModule({"k": sch.mod["main"].with_attr("global_symbol", "k")}), target=target)
    source = lib.mod.imports[0].inspect_source()
    counts = {}
    for guards in (False, True):
        workdir = tmp_path / str(guards)
        workdir.mkdir()
        sass = sass_by_function(compile_fatbin(source, "sm_90", workdir, guards), workdir)["k_kernel"]
        counts[guards] = (len(re.findall(r"\bBRA\b", sass)), len(re.findall(r"\bLDG\b", sass)),
                          len(re.findall(r"@!?P\d+ +LDG\b", sass)))
    branches, loads, predicated = counts[False]
    assert branches > 4 * counts[True][0] and predicated < loads  # what the rewrite is for (nvcc 13)
    assert counts[True][1] == counts[True][2] > 0  # every load predicated


def _conv(layout: str) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    nhwc = layout == "NHWC"
    x = relax.Var("x", relax.TensorType((8, 16, 16, 8) if nhwc else (8, 8, 16, 16), "float32"))
    w = relax.Var("w", relax.TensorType((3, 3, 8, 8) if nhwc else (8, 8, 3, 3), "float32"))
    with bb.function("main", [x, w], attrs={"num_input": 1}):
        with bb.dataflow():
            y = bb.emit_output(relax.op.nn.conv2d(x, w, padding=1, data_layout=layout,
                                                  kernel_layout="HWIO" if nhwc else "OIHW"))
        bb.emit_func_output(y)
    return bb.get()


def test_channels_last_builds_take_branch_free_guards() -> None:
    """Measured on the H200 (docs/cuda.md, 2026-12-03): faster for every channels-last (batch-32) build,
    slower for ResNet-18's NCHW batch-1 convolutions; so the build decides by the layout of its convolutions."""
    assert nhwc_convolutions(_conv("NHWC")) and not nhwc_convolutions(_conv("NCHW"))
    for layout, expected in (("NHWC", True), ("NCHW", False)):
        mod = _conv(layout)
        shape = [int(d) for d in mod["main"].params[1].ty.shape]
        cuda.TARGET.prepare(mod, ["w"], [np.zeros(shape, np.float32)], precision="fp16")
        assert cuda._build_state.guards is expected
