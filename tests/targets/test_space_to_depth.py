"""A stride-2 convolution over few channels lowered as a stride-1 one over 2x2 patches folded into channels
(``targets.lowering.space_to_depth``, CUDA channels-last builds): the same numbers as onnxruntime on the CPU
for kernel sizes, paddings and channel counts that take every branch, and only where it applies; the fold's
CUDA kernel (``targets.schedules.gpu_fold``) in SASS."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import helper, numpy_helper
from tvm import relax, tirx

from compiler.driver import optimize, pipeline_for
from compiler.frontends.onnx import import_onnx
from targets.base import get_target
from targets.build import lowering_options
from targets.cuda import compile_fatbin, pass_config
from targets.lowering import space_to_depth
from targets.lowering.to_relax import lower
from targets.schedules.gpu_fold import GpuFold
from tests.targets import run_lowered, run_onnxruntime
from tests.targets.gpu_kernel_checks import sass_by_function


def _conv(channels: int, kernel: int, pads: list[int], size: tuple[int, int], strides: tuple[int, int] = (2, 2),
          out: int = 8) -> onnx.ModelProto:
    rng = np.random.default_rng(channels * 100 + kernel)
    w = numpy_helper.from_array(rng.standard_normal((out, channels, kernel, kernel)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(out).astype(np.float32), "b")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=pads, strides=list(strides)),
             helper.make_node("Relu", ["c"], ["y"])]
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, channels, *size])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    return helper.make_model(helper.make_graph(nodes, "conv", [x], [y], [w, b]),
                             opset_imports=[helper.make_opsetid("", 17)])


def _conv_strides(mod: object) -> list[tuple[int, ...]]:
    """The strides of every conv2d in ``main``."""
    found: list[tuple[int, ...]] = []

    def visit(e: object) -> None:
        if isinstance(e, relax.Call) and getattr(e.op, "name", "") == "relax.nn.conv2d":
            found.append(tuple(int(s) for s in e.attrs.strides))

    relax.analysis.post_order_visit(mod["main"].body, visit)  # type: ignore[index]
    return found


@pytest.mark.parametrize(("channels", "kernel", "pads", "size"), [
    (3, 7, [3, 3, 3, 3], (32, 32)),   # ResNet's stem: 7x7, 3 channels (padded to 4)
    (3, 3, [1, 1, 1, 1], (16, 16)),   # MobileNet's first convolution
    (1, 5, [2, 1, 0, 2], (15, 17)),   # one channel, uneven pads, odd sizes
    (4, 4, [0, 0, 0, 0], (13, 12)),   # even kernel, no pad, an input row the convolution never reads
])
def test_folded_convolution_matches_onnxruntime(channels: int, kernel: int, pads: list[int],
                                                size: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(space_to_depth, "MIN_KERNEL", 3)  # the fold's arithmetic for any kernel (the build: 7x7)
    g = import_onnx(_conv(channels, kernel, pads, size))
    options = lowering_options(get_target("cuda"), "sm_90", 2, channels_last=True)
    assert options["space_to_depth"]
    lowered = lower(g, **options)
    assert _conv_strides(lowered.mod) == [(1, 1)]  # the stride-2 convolution became a stride-1 one
    x = np.random.default_rng(1).standard_normal((2, channels, *size)).astype(np.float32)
    got, want = run_lowered(lowered, {"x": x})[0], run_onnxruntime(g, {"x": x})[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("channels", "kernel", "strides"), [
    (8, 7, (2, 2)),   # too many channels: the gather is already wide
    (3, 1, (2, 2)),   # a 1x1 kernel: nothing to fold
    (3, 7, (1, 1)),   # stride 1
    (3, 3, (2, 2)),   # MobileNet's first convolution: folding more than doubles its reduction (measured slower)
])
def test_other_convolutions_are_left_alone(channels: int, kernel: int, strides: tuple[int, int]) -> None:
    g = import_onnx(_conv(channels, kernel, [0, 0, 0, 0], (16, 16), strides))
    lowered = lower(g, **lowering_options(get_target("cuda"), "sm_90", 2, channels_last=True))
    assert _conv_strides(lowered.mod) == [strides]


def test_weights_fold_to_the_same_products() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 3, 7, 7)).astype(np.float32)
    folded = space_to_depth.fold_weight(w)
    assert folded.shape == (4, 4, space_to_depth.folded_channels(3), 5) == (4, 4, 16, 5)
    # w'[a, b, (p, q, ch), o] = w[o, ch, 2a + p, 2b + q], zero past the kernel and for the padding channel
    assert folded[1, 2, (1 * 2 + 0) * 4 + 2, 3] == w[3, 2, 3, 4]
    assert not folded[3, 0, (1 * 2 + 0) * 4 + 0].any()  # kernel row 7 does not exist
    assert not folded[..., 3::4, :].any()  # the fourth (padding) channel of every patch position


def test_only_cuda_folds() -> None:
    assert lowering_options(get_target("cuda"), "sm_90", 2)["space_to_depth"]
    assert not lowering_options(get_target("x86"), None, 2)["space_to_depth"]


def _stem(batch: int = 2) -> onnx.ModelProto:
    """ResNet's stem, small: 7x7 stride-2 convolution over 3 channels, batch norm, ReLU, then a 3x3 stride-1
    convolution (which stays as it is)."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(a.astype(np.float32), name) for name, a in (
        ("w", rng.standard_normal((8, 3, 7, 7)) * 0.1), ("scale", rng.uniform(0.5, 1.5, 8)),
        ("bias", rng.standard_normal(8)), ("mean", rng.standard_normal(8) * 0.1), ("var", rng.uniform(0.5, 2, 8)),
        ("w2", rng.standard_normal((8, 8, 3, 3)) * 0.1))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[3, 3, 3, 3], strides=[2, 2]),
             helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["bn"]),
             helper.make_node("Relu", ["bn"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1, 1, 1, 1])]
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [batch, 3, 24, 24])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    return helper.make_model(helper.make_graph(nodes, "stem", [x], [y], inits),
                             opset_imports=[helper.make_opsetid("", 17)])


def test_a_fused_group_reads_the_input_folded_by_a_kernel_before_it() -> None:
    model = _stem()
    g = optimize(import_onnx(model), pipeline_for(2, None))[0]
    assert any(n.body is not None for n in g.nodes)  # the convolution, batch norm and ReLU are one group
    lowered = lower(g, **lowering_options(get_target("cuda"), "sm_90", 2, channels_last=True))
    groups = [f for gv, f in lowered.mod.functions_items()
              if isinstance(f, relax.Function) and gv.name_hint != "main"]
    folded = [str(p.name) for f in groups for p in f.params if str(p.name).endswith("_folded")]
    assert folded == ["x_folded"]  # the group takes the folded input as a parameter, not the image
    assert _conv_strides(lowered.mod) == [(1, 1)]  # in main only the 3x3 convolution, which reads the group
    x = np.random.default_rng(4).standard_normal((2, 3, 24, 24)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(run_lowered(lowered, {"x": x})[0], want[0], rtol=1e-4, atol=1e-4)


def _fold_kernel(dtype: str) -> tirx.PrimFunc:
    """The fold of ResNet's 224x224 NCHW float32 image at batch 4, cast to ``dtype`` in the same kernel (as the
    build's cast fusion leaves it)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 3, 224, 224), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            folded = bb.emit_te(space_to_depth.fold_input, x, True, [7, 7], [3, 3, 3, 3])
            out = bb.emit_output(bb.emit(relax.op.astype(folded, dtype)))
        bb.emit_func_output(out)
    passes = [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FuseOps(),
              relax.transform.FuseTIR()]
    (func,) = [f for _, f in tvm.transform.Sequential(passes)(bb.get()).functions_items()
               if isinstance(f, tirx.PrimFunc)]
    return func


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_fold_kernel_stores_a_16_byte_vector_per_thread(dtype: str, tmp_path: Path) -> None:
    """No GPU here: the fold's kernel scheduled by ``gpu_fold``, generated and compiled by nvcc for sm_90. A thread
    loads the 6 values of one patch row (2 columns x 3 channels; the fourth channel is zero) and stores the row's 8
    folded channels as one 16-byte vector."""
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host={"kind": "llvm"})
    func = _fold_kernel(dtype)
    sch = GpuFold().apply(func, target, False)
    assert sch is not None
    with target, tvm.transform.PassContext(config=pass_config(cuda_graphs=False)):
        lib = tvm.compile(tvm.IRModule({"k": sch.mod["main"].with_attr("global_symbol", "k")}), target=target)
    sass = sass_by_function(compile_fatbin(lib.mod.imports[0].inspect_source(), "sm_90", tmp_path), tmp_path)
    kernel = sass["k_kernel"]
    assert len(re.findall(r"\bSTG\.E\.128\b", kernel)) == 1 and not re.findall(r"\bSTG\.E(\.U16|\.16)?\s", kernel)
    assert len(re.findall(r"\bLDG\.E(\.CONSTANT)?\s", kernel)) == 6, re.findall(r"\bLDG\S*", kernel)


def test_fold_rule_takes_only_the_fold() -> None:
    from tests.targets.test_gpu_pool_nhwc import TARGET, pool

    assert GpuFold().apply(pool((8, 28, 28, 32), "float16"), TARGET, False) is None
    assert GpuFold().apply(_fold_kernel("float16"), tvm.target.Target("llvm"), False) is None
