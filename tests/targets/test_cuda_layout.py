"""Channels-last convolutions on CUDA (``CudaTarget.channels_last_for``): which models the fp16/bf16
builds lower NHWC, and that such a build still puts its convolutions on tensor cores. No GPU here; the
speed that decided the policy was measured on the H200 (docs/cuda.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from tvm import relax, tirx

from compiler.driver import compile_model, load_model, optimize, pipeline_for
from targets import cuda
from targets.artifact import open_artifact
from targets.base import get_target
from targets.build import lowering_options
from targets.lowering.to_relax import lower
from targets.tuning import fused_module


def _graph(name: str):  # type: ignore[no-untyped-def]
    return optimize(load_model(f"zoo:{name}").graph, pipeline_for(2, None))[0]


@pytest.mark.parametrize(("name", "precision", "nhwc"), [
    ("digits_cnn", "fp16", True),     # batch 16, dense convolutions
    ("digits_cnn", "bf16", True),
    ("digits_cnn", "fp32", False),    # fp32 convolutions stay with dlight's NCHW kernels
    ("resnet18", "fp16", False),      # batch 1: NCHW measured faster
    ("mobilenetv2", "fp16", False),   # batch 1 (its depthwise convolutions alone would not keep it NCHW)
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


def _inverted_residual(tmp_path: Path, groups: int, batch: int = 8) -> Path:
    """MobileNetV2's block, small: 1x1 expansion 16 -> 32, two 3x3 convolutions of ``groups`` groups (stride 1,
    then 2), 1x1 projection to 16; ReLU between, biases on all."""
    rng = np.random.default_rng(0)
    shapes = {"w0": (32, 16, 1, 1), "w1": (32, 32 // groups, 3, 3), "w2": (32, 32 // groups, 3, 3),
              "w3": (16, 32, 1, 1)}
    inits = [numpy_helper.from_array(a.astype(np.float32), name) for w, shape in shapes.items() for name, a in
             ((w, rng.standard_normal(shape) * 0.1), (f"b{w[1]}", rng.standard_normal(shape[0])))]
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"]), helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], group=groups, pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], group=groups, pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["r2"]), helper.make_node("Conv", ["r2", "w3", "b3"], ["y"])]
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [batch, 16, 14, 14])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [batch, 16, 7, 7])
    path = tmp_path / f"block-g{groups}.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "block", [x], [y], inits)), path)
    return path


def _rules_logged(caplog: pytest.LogCaptureFixture) -> dict[str, str]:
    """kernel -> rule, from the build's "kernel X scheduled by RULE" lines."""
    lines = [r.getMessage().split() for r in caplog.records if " scheduled by " in r.getMessage()]
    return {w[1]: w[-1] for w in lines if w[0] == "kernel"}


def _depthwise_kernels(g: object, precision: str) -> set[str]:
    mod, _ = fused_module(g, "cuda", "sm_90", precision)  # type: ignore[arg-type]
    return {gv.name_hint for gv, f in mod.functions_items()
            if isinstance(f, tirx.PrimFunc) and "group_conv2d_nhwc" in f.script()}


def test_depthwise_convolutions_go_channels_last_on_their_rule(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    source = load_model(str(_inverted_residual(tmp_path, groups=32)))
    g = optimize(source.graph, pipeline_for(2, None))[0]
    assert get_target("cuda").channels_last_for(g, "fp16")
    assert not get_target("cuda").channels_last_for(optimize(load_model(str(_inverted_residual(
        tmp_path, groups=32, batch=1))).graph, pipeline_for(2, None))[0], "fp16")  # batch 1 stays NCHW
    depthwise = _depthwise_kernels(g, "fp16")
    assert len(depthwise) == 2  # stride 1 and stride 2
    caplog.set_level("INFO")
    path = tmp_path / "block.effarch"
    compile_model(source, path, target="cuda", cpu="sm_90", precision="fp16")
    rules = _rules_logged(caplog)
    assert {k: rules[k] for k in depthwise} == dict.fromkeys(depthwise, "depthwise-nhwc")
    assert open_artifact(path).manifest["schedules"]["depthwise-nhwc"] == 2


def test_other_grouped_convolutions_keep_nchw(tmp_path: Path) -> None:
    g = optimize(load_model(str(_inverted_residual(tmp_path, groups=4))).graph, pipeline_for(2, None))[0]
    spec = get_target("cuda")
    assert not spec.channels_last_for(g, "fp16")
    assert _conv_layouts(lower(g, **lowering_options(spec, "sm_90", 2, channels_last=False)).mod) == {"NCHW"}


@pytest.mark.slow
def test_mobilenetv2_batch32_fp16_lowers_nhwc_with_every_depthwise_kernel_on_its_rule(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    import gpu_models  # tools/ is not a package; exports the batch-32 ONNX once into the zoo's cache

    source = load_model(gpu_models.batched_source("mobilenetv2", 32))
    g = optimize(source.graph, pipeline_for(2, None))[0]
    assert get_target("cuda").channels_last_for(g, "fp16")
    depthwise = _depthwise_kernels(g, "fp16")
    assert len(depthwise) == 10  # 17 depthwise layers, 10 distinct (channels, size, stride)
    caplog.set_level("INFO")
    path = tmp_path / "mobilenetv2-b32.effarch"
    compile_model(source, path, target="cuda", cpu="sm_90", precision="fp16")
    rules = _rules_logged(caplog)
    assert {k for k, r in rules.items() if r == "depthwise-nhwc"} == depthwise
    assert "depthwise" not in rules.values()  # the NCHW rule has nothing left
    assert cuda.machine_code_report(open_artifact(path).library_bytes())["cuda_source_kernels"] == 0
