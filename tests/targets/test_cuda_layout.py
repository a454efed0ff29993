"""Channels-last convolutions on CUDA (``CudaTarget.channels_last_for``): which models the fp16/bf16
builds lower NHWC, and that such a build still puts its convolutions on tensor cores. No GPU here; the
speed that decided the policy was measured on the H200 (docs/cuda.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tvm import relax

from compiler.driver import compile_model, load_model, optimize, pipeline_for
from targets import cuda
from targets.artifact import open_artifact
from targets.base import get_target
from targets.build import lowering_options
from targets.lowering.to_relax import lower


def _graph(name: str):  # type: ignore[no-untyped-def]
    return optimize(load_model(f"zoo:{name}").graph, pipeline_for(2, None))[0]


@pytest.mark.parametrize(("name", "precision", "nhwc"), [
    ("digits_cnn", "fp16", True),     # batch 16, dense convolutions
    ("digits_cnn", "bf16", True),
    ("digits_cnn", "fp32", False),    # fp32 convolutions stay with dlight's NCHW kernels
    ("resnet18", "fp16", False),      # batch 1: NCHW measured faster
    ("mobilenetv2", "fp16", False),   # depthwise convolutions: the depthwise rule reads NCHW
    ("mlp", "fp16", False),           # no convolution
])
def test_which_models_go_channels_last(name: str, precision: str, nhwc: bool) -> None:
    assert get_target("cuda").channels_last_for(_graph(name), precision) is nhwc


def test_batch_threshold() -> None:
    g = _graph("digits_cnn")
    assert g.inputs[0].type.shape[0] == 16 >= cuda.CHANNELS_LAST_MIN_BATCH
    x86 = get_target("x86")
    assert x86.channels_last_for(g, "fp32") is x86.channels_last  # CPU targets: their fixed layout


def _conv_layouts(mod: object) -> set[str]:
    layouts: set[str] = set()

    def visit(e: object) -> None:
        if isinstance(e, relax.Call) and getattr(e.op, "name", "") == "relax.nn.conv2d":
            layouts.add(str(e.attrs.data_layout))

    for func in mod.functions.values():  # type: ignore[attr-defined]
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func.body, visit)
    return layouts


def test_channels_last_build_lowers_nhwc_and_uses_tensor_cores(tmp_path: Path) -> None:
    spec = get_target("cuda")
    g = _graph("digits_cnn")
    nhwc = lower(g, **lowering_options(spec, "sm_90", 2, channels_last=spec.channels_last_for(g, "fp16")))
    nchw = lower(g, **lowering_options(spec, "sm_90", 2))
    assert _conv_layouts(nhwc.mod) == {"NHWC"} and _conv_layouts(nchw.mod) == {"NCHW"}
    path = tmp_path / "digits.effarch"
    compile_model(load_model("zoo:digits_cnn"), path, target="cuda", cpu="sm_90", precision="fp16")
    sass = cuda.sass_opcodes(open_artifact(path).library_bytes())
    assert sass.get("HMMA", 0) > 0
