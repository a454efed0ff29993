"""effarch's CPU schedule library: every kernel scheduled by a named rule, vector math without
libm calls, channels-last convolutions that match onnxruntime, NEON in the Arm library."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.driver import load_model, optimize, pipeline_for
from compiler.frontends.onnx import import_onnx
from targets.artifact import read_manifest
from targets.build import build
from targets.runtime import load_artifact

# libm functions LLVM calls for transcendentals it does not vectorise. The check covers the zoo's
# models (exp, erf, tanh, sigmoid: softmax, GELU). Rarer ops still call libm once per element: Log,
# Softplus, Mish and Atanh (logf), Tan (sincosf), Asin/Acos/Atan/Asinh/Acosh (asinf...); Sinh/Cosh
# go through the vectorised exp (lowering.elementwise_more).
LIBM = {"expf", "erff", "tanhf", "exp", "erf", "tanh", "logf", "powf", "__expf_finite"}


def _optimized(name: str) -> object:
    graph, _ = optimize(load_model(f"zoo:{name}").graph, pipeline_for(2, None))
    return graph


def _library(path: Path) -> bytes:
    manifest = read_manifest(path)
    with zipfile.ZipFile(path) as z:
        return z.read(manifest["members"]["library"]["name"])


@pytest.mark.parametrize("name", ["mlp", "digits_cnn", "gpt"])
def test_every_kernel_is_scheduled_by_a_rule(name: str, tmp_path: Path) -> None:
    result = build(_optimized(name), tmp_path / "m.effarch")
    assert result.schedules, "no kernel went through the schedule library"
    assert "none" not in result.schedules.values()
    contractions = [k for k, rule in result.schedules.items() if rule == "contraction"]
    assert contractions, result.schedules  # every zoo model has a matmul or a conv
    assert result.manifest["relax_pipeline"] == "effarch-schedules"
    assert sum(result.manifest["schedules"].values()) == len(result.schedules)


def test_O1_keeps_tvms_unscheduled_pipeline(tmp_path: Path) -> None:
    result = build(_optimized("mlp"), tmp_path / "m.effarch", opt_level=1)
    assert result.schedules == {} and result.manifest["relax_pipeline"] == "default"


def _undefined_symbols(lib: bytes, tmp_path: Path) -> set[str]:
    so = tmp_path / "model.so"
    so.write_bytes(lib)
    out = subprocess.run(["nm", "-D", "--undefined-only", str(so)], capture_output=True, text=True, check=True)
    return {line.split()[-1].split("@")[0] for line in out.stdout.splitlines() if line.strip()}


def test_transcendentals_are_vectorised_not_libm_calls(tmp_path: Path) -> None:
    # MLP has GELU (erf); GPT has softmax (exp) and GELU: neither may call libm per element.
    for name in ("mlp", "gpt"):
        path = build(_optimized(name), tmp_path / f"{name}.effarch").path
        imported = _undefined_symbols(_library(path), tmp_path)
        assert not imported & LIBM, f"{name} calls {sorted(imported & LIBM)}"


def _unary_model(op: str, x: np.ndarray) -> onnx.ModelProto:
    g = helper.make_graph([helper.make_node(op, ["x"], ["y"])], op,
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])


@pytest.mark.parametrize(("op", "exact", "atol", "rtol"), [
    ("Exp", np.exp, 0.0, 4e-7), ("Erf", None, 3e-7, 0.0), ("Tanh", np.tanh, 3e-7, 0.0),
    ("Sigmoid", lambda v: 1 / (1 + np.exp(-v)), 3e-7, 0.0),
])
def test_vector_math_accuracy(op: str, exact: object, atol: float, rtol: float, tmp_path: Path) -> None:
    x = np.concatenate([np.linspace(-87, 88, 4000), np.linspace(-6, 6, 4000)]).astype(np.float32).reshape(8, 1000)
    path = build(import_onnx(_unary_model(op, x)), tmp_path / "m.effarch").path
    got = load_artifact(path, cache_dir=tmp_path / "cache").run({"x": x})["y"]
    if exact is None:
        from math import erf
        want = np.vectorize(erf)(x.astype(np.float64))
    else:
        want = exact(x.astype(np.float64))  # type: ignore[operator]
    assert np.all(np.abs(got - want) <= atol + rtol * np.abs(want)), np.max(np.abs(got - want))


def test_exp_of_a_masked_score_is_zero_not_a_denormal(tmp_path: Path) -> None:
    """Below ln(2^-126) exp gives 0: a softmax's masked scores (-1e9, -inf) would otherwise leave
    denormal probabilities, each a ~100-cycle assist in the FMAs that read them (GPT ran 2.3x slower)."""
    x = np.array([[-np.inf, -1e9, -1e4, -104.0, -88.0, -87.34, -87.33, -87.0, 0.0, 1.0, 80.0, 88.0]], np.float32)
    x = np.repeat(x, 16, axis=0)  # long enough rows that the kernel runs in vectors
    path = build(import_onnx(_unary_model("Exp", x)), tmp_path / "m.effarch").path
    got = load_artifact(path, cache_dir=tmp_path / "cache").run({"x": x})["y"]
    small = x < -87.3365
    assert np.all(got[small] == 0.0)
    assert not np.any((got != 0) & (np.abs(got) < np.finfo(np.float32).tiny))  # no denormal anywhere
    want = np.exp(x[~small].astype(np.float64))
    np.testing.assert_allclose(got[~small], want, rtol=4e-7)


def _conv_zoo_model() -> onnx.ModelProto:
    """Convolutions of every kind the channels-last lowering handles, with what sits between them:
    strided, grouped, depthwise, dilated and 1x1 convs; max and average pools with pads; a channel
    concat, a residual add, a per-channel scale, a global pool and a flatten into a Gemm."""
    rng = np.random.default_rng(0)

    def w(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)

    inits = [w("w1", 16, 3, 3, 3), w("b1", 16), w("w2", 16, 4, 3, 3), w("w3", 16, 1, 3, 3),
             w("w4", 8, 16, 1, 1), w("w5", 8, 16, 3, 3), w("s", 1, 24, 1, 1), w("fc", 24, 5)]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], group=4, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c2", "w3"], ["c3"], group=16, pads=[2, 2, 2, 2], dilations=[2, 2]),
        helper.make_node("Add", ["c3", "r1"], ["a"]),
        helper.make_node("MaxPool", ["a"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["p", "w4"], ["c4"]),
        helper.make_node("Conv", ["p", "w5"], ["c5"], pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["c4", "c5", "c4"], ["cat"], axis=1),
        helper.make_node("Mul", ["cat", "s"], ["m"]),
        helper.make_node("AveragePool", ["m"], ["ap"], kernel_shape=[2, 2], pads=[0, 0, 1, 1]),
        helper.make_node("GlobalAveragePool", ["ap"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 32, 30])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def test_channels_last_convolutions_match_onnxruntime(tmp_path: Path) -> None:
    model = _conv_zoo_model()
    graph, _ = optimize(import_onnx(model), pipeline_for(2, None))
    result = build(graph, tmp_path / "m.effarch")
    assert "none" not in result.schedules.values()
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 30)).astype(np.float32)
    got = load_artifact(result.path, cache_dir=tmp_path / "cache").run({"x": x})["y"]
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_zoo_runs_on_every_core(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TVM's pool would start one worker on a 2-CPU x86; loading an artifact asks for all."""
    import os

    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    path = build(_optimized("mlp"), tmp_path / "m.effarch").path
    load_artifact(path, cache_dir=tmp_path / "cache")
    assert os.environ["TVM_NUM_THREADS"] == str(len(os.sched_getaffinity(0)))


def test_arm_library_uses_neon_vectors(tmp_path: Path) -> None:
    path = build(_optimized("digits_cnn"), tmp_path / "m.effarch", target="arm", cpu="cortex-a72").path
    so = tmp_path / "model.so"
    so.write_bytes(_library(path))
    objdump = shutil.which("aarch64-linux-gnu-objdump")  # binutils, installed with the cross gcc
    assert objdump, "aarch64-linux-gnu-objdump is missing; run tools/install-system-deps.sh"
    asm = subprocess.run([objdump, "-d", str(so)], capture_output=True, text=True,
                         check=True).stdout
    fmla = [line for line in asm.splitlines() if "\tfmla\tv" in line]
    assert len(fmla) >= 8, "no NEON fmla on vector registers in the aarch64 library"



def test_kernel_profile_names_every_kernel_and_its_rule() -> None:
    from targets.profile import kernel_times

    kernels = kernel_times(_optimized("mlp"), repeat=3)
    assert len(kernels) == 3 and all(k.rule == "contraction" and k.ms > 0 for k in kernels)
    assert kernels == sorted(kernels, key=lambda k: -k.total_ms)


def _reductions_model() -> onnx.ModelProto:
    """Row reductions in the shapes that tripped rules up: a mean over NCHW's spatial axes, a
    softmax over a single row, a layer norm over rows, a max over the middle axis."""
    rng = np.random.default_rng(2)
    scale = numpy_helper.from_array(rng.standard_normal(40).astype(np.float32), "scale")
    nodes = [
        helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=1),
        helper.make_node("Reshape", ["m", "shape"], ["flat"]),
        helper.make_node("Softmax", ["flat"], ["sm"], axis=-1),
        helper.make_node("LayerNormalization", ["rows", "scale"], ["ln"], axis=-1),
        helper.make_node("ReduceMax", ["rows", "axes0"], ["mx"], keepdims=0),
    ]
    inits = [numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
             numpy_helper.from_array(np.array([1, -1], np.int64), "shape"), scale,
             numpy_helper.from_array(np.array([1], np.int64), "axes0")]
    graph = helper.make_graph(nodes, "reductions",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 96, 7, 7]),
                               helper.make_tensor_value_info("rows", TensorProto.FLOAT, [6, 12, 40])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("sm", "ln", "mx")],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def _run_kernel(func: object, target: object, arrays: list[np.ndarray]) -> list[np.ndarray]:
    import tvm

    lib = tvm.tirx.build(func.with_attr("global_symbol", "k"), target=target)  # type: ignore[attr-defined]
    args = [tvm.runtime.tensor(a.copy(), tvm.cpu()) for a in arrays]
    lib["k"](*args)
    return [a.numpy() for a in args]


@pytest.mark.parametrize("source", ["zoo:digits_cnn", "zoo:gpt", "reductions"])
def test_every_scheduled_kernel_computes_what_the_plain_loop_does(source: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Each kernel, scheduled by its rule and left as TVM's plain loop nest, on the same random
    buffers: a rule may reorder a float sum, never change what is computed."""
    from tvm import tirx

    import targets.schedules as schedules
    from targets.profile import scheduled_module

    graph = import_onnx(_reductions_model()) if source == "reductions" else load_model(source).graph
    graph, _ = optimize(graph, pipeline_for(2, None))
    scheduled, target, report = scheduled_module(graph)
    monkeypatch.setattr(schedules, "RULES", [("plain", lambda sch, m, t: True)])
    plain, _, _ = scheduled_module(graph)
    rng = np.random.default_rng(0)
    checked = 0
    for gv, func in scheduled.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        arrays = [rng.standard_normal([int(d) for d in p.shape]).astype(str(p.dtype)) if "float" in str(p.dtype)
                  else np.zeros([int(d) for d in p.shape], str(p.dtype)) for p in func.params]
        got = _run_kernel(func, target, arrays)[-1]
        want = _run_kernel(plain[gv.name_hint], target, arrays)[-1]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4,
                                   err_msg=f"{gv.name_hint} ({report.rules[gv.name_hint]})")
        checked += 1
    assert checked >= 3
    if source == "reductions":
        assert "row-reduction" in report.rules.values()
