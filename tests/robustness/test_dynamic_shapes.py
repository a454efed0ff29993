"""Models with symbolic dims (batch, sequence length) compile once, without --shape, and run at
any size, matching onnxruntime at each; --shape still specialises.

Each model is compiled once per module through the CLI and run at three sizes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.cli.main import main
from targets.runtime import load_artifact

RTOL = ATOL = 1e-4  # float32 sums in another order than onnxruntime's, through softmax and layer norm
D, HEADS = 32, 4


class _Weights:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.inits: list[onnx.TensorProto] = []

    def rand(self, name: str, *shape: int) -> str:
        return self.const(name, (self.rng.standard_normal(shape) * 0.2).astype(np.float32))

    def const(self, name: str, arr: Any) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name


def _model(nodes: list[onnx.NodeProto], name: str, inputs: dict[str, list[Any]], outputs: dict[str, list[Any]],
           w: _Weights) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name,
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()],
                              w.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def cnn() -> onnx.ModelProto:
    """Conv, pools, Flatten and Gemm on a symbolic batch."""
    w, n = _Weights(0), helper.make_node
    nodes = [n("Conv", ["x", w.rand("w1", 8, 3, 3, 3), w.rand("b1", 8)], ["c1"], pads=[1, 1, 1, 1]),
             n("Relu", ["c1"], ["r1"]),
             n("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             n("Conv", ["p1", w.rand("w2", 16, 8, 3, 3), w.rand("b2", 16)], ["c2"], pads=[1, 1, 1, 1]),
             n("Relu", ["c2"], ["r2"]),
             n("GlobalAveragePool", ["r2"], ["g"]),
             n("Flatten", ["g"], ["f"]),
             n("Gemm", ["f", w.rand("w3", 10, 16), w.rand("b3", 10)], ["y"], transB=1)]
    return _model(nodes, "cnn", {"x": ["batch", 3, 16, 16]}, {"y": ["batch", 10]}, w)


def encoder() -> onnx.ModelProto:
    """One attention layer: LayerNorm, Q/K/V MatMuls, heads split by Reshape [0, 0, H, D/H] and
    Transpose, a padding mask over (batch, seq), Softmax, heads merged by Reshape [0, 0, -1],
    residual, LayerNorm, and a mean over the sequence."""
    w, n = _Weights(1), helper.make_node
    heads = w.const("heads", np.array([0, 0, HEADS, D // HEADS], np.int64))
    nodes = [n("LayerNormalization", ["x", w.rand("ln_g", D), w.rand("ln_b", D)], ["xn"], axis=-1)]
    for t in "qkv":
        nodes += [n("MatMul", ["xn", w.rand(f"w{t}", D, D)], [f"{t}0"]),
                  n("Add", [f"{t}0", w.rand(f"b{t}", D)], [t]),
                  n("Reshape", [t, heads], [f"{t}h"]),
                  n("Transpose", [f"{t}h"], [f"{t}t"], perm=[0, 2, 3, 1] if t == "k" else [0, 2, 1, 3])]
    nodes += [
        n("MatMul", ["qt", "kt"], ["s0"]),
        n("Mul", ["s0", w.const("scale", np.array(1 / np.sqrt(D // HEADS), np.float32))], ["s1"]),
        n("Unsqueeze", ["mask", w.const("axes12", np.array([1, 2], np.int64))], ["m1"]),
        n("Sub", [w.const("one", np.array(1.0, np.float32)), "m1"], ["m2"]),
        n("Mul", ["m2", w.const("neg", np.array(-1e4, np.float32))], ["m3"]),
        n("Add", ["s1", "m3"], ["s2"]),
        n("Softmax", ["s2"], ["p"], axis=-1),
        n("MatMul", ["p", "vt"], ["ctx"]),
        n("Transpose", ["ctx"], ["ctxt"], perm=[0, 2, 1, 3]),
        n("Reshape", ["ctxt", w.const("merge", np.array([0, 0, -1], np.int64))], ["ctxm"]),
        n("MatMul", ["ctxm", w.rand("wo", D, D)], ["o0"]),
        n("Add", ["o0", "x"], ["o1"]),
        n("LayerNormalization", ["o1", w.rand("ln2_g", D), w.rand("ln2_b", D)], ["y"], axis=-1),
        n("ReduceMean", ["y", w.const("ax1", np.array([1], np.int64))], ["pooled"], keepdims=0),
    ]
    return _model(nodes, "encoder", {"x": ["batch", "seq", D], "mask": ["batch", "seq"]},
                  {"y": ["batch", "seq", D], "pooled": ["batch", D]}, w)


def _compile(tmp: Path, model: onnx.ModelProto, *extra: str) -> tuple[Path, Path]:
    src, art = tmp / f"{model.graph.name}.onnx", tmp / f"{model.graph.name}.effarch"
    onnx.save(model, str(src))
    assert main(["compile", str(src), "-o", str(art), *extra]) == 0
    return src, art


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    tmp = tmp_path_factory.mktemp("dynamic")
    return {"cnn": _compile(tmp, cnn()), "encoder": _compile(tmp, encoder())}


def _check_sizes(src: Path, art: Path, shapes: list[dict[str, tuple[int, ...]]]) -> None:
    sess = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    model = load_artifact(art)
    rng = np.random.default_rng(0)
    for feeds_shapes in shapes:
        feeds = {k: rng.standard_normal(s).astype(np.float32) for k, s in feeds_shapes.items()}
        if "mask" in feeds:  # padding: every sequence but the first ends in two masked positions
            feeds["mask"] = np.ones(feeds_shapes["mask"], np.float32)
            feeds["mask"][1:, -2:] = 0.0
        want = sess.run(None, feeds)
        got = model.run(feeds)
        for (name, g), ref in zip(got.items(), want, strict=True):
            assert g.shape == ref.shape, (name, feeds_shapes)
            np.testing.assert_allclose(g, ref, rtol=RTOL, atol=ATOL, err_msg=f"{name} at {feeds_shapes}")


def test_cnn_compiled_once_runs_at_every_batch(built: dict[str, tuple[Path, Path]]) -> None:
    src, art = built["cnn"]
    _check_sizes(src, art, [{"x": (b, 3, 16, 16)} for b in (1, 3, 8)])


def test_encoder_compiled_once_runs_at_every_batch_and_length(built: dict[str, tuple[Path, Path]]) -> None:
    src, art = built["encoder"]
    _check_sizes(src, art, [{"x": (b, s, D), "mask": (b, s)} for b, s in ((1, 5), (3, 16), (8, 33))])


def test_manifest_and_inspect_name_the_symbolic_dims(built: dict[str, tuple[Path, Path]],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    _, art = built["encoder"]
    m = load_artifact(art).manifest
    assert [i["shape"] for i in m["inputs"]] == [["batch", "seq", D], ["batch", "seq"]]
    assert m["symbolic_dims"] == {"batch": ["x[0]", "mask[0]", "y[0]", "pooled[0]"],
                                  "seq": ["x[1]", "mask[1]", "y[1]"]}
    assert set(m["schedules"]) <= {"symbolic", "symbolic-contraction"}  # no static rule on symbolic kernels
    assert main(["inspect", str(art)]) == 0
    out = capsys.readouterr().out
    assert "batch: x[0], mask[0], y[0], pooled[0]" in out and "seq: x[1], mask[1], y[1]" in out


def test_run_takes_any_size_and_refuses_a_contradiction(built: dict[str, tuple[Path, Path]],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    src, art = built["encoder"]
    code = main(["run", str(art), "--shape", "x=2x7x32", "--shape", "mask=2x7", "--reference", str(src)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "y: float32[2, 7, 32]" in out and "pooled: float32[2, 32]" in out
    code = main(["run", str(art), "--shape", "x=2x7x32", "--shape", "mask=2x9"])
    _, err = capsys.readouterr()
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "input 'mask' has shape (2, 9)" in lines[0] and "seq=7" in lines[0], err


def test_shape_option_still_specialises(tmp_path: Path) -> None:
    """--shape fixes the batch: static kernels, scheduled by the static rules, no symbolic dims."""
    w = _Weights(2)
    nodes = [helper.make_node("MatMul", ["x", w.rand("w1", 16, 32)], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    model = _model(nodes, "mlp", {"x": ["batch", 16]}, {"y": ["batch", 32]}, w)
    src, art = _compile(tmp_path, model, "--shape", "x=4x16")
    m = load_artifact(art).manifest
    assert m["inputs"][0]["shape"] == [4, 16] and "symbolic_dims" not in m
    assert not {"symbolic", "symbolic-contraction"} & set(m["schedules"])
    _check_sizes(src, art, [{"x": (4, 16)}])
