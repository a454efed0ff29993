"""RNN/GRU/LSTM lowering against onnxruntime on what the backend cases leave out: sequence_lens
shorter than the sequence (as a constant and as a run-time input), clip, activations with alpha and
beta, GRU's linear_before_reset, LSTM's input_forget and peepholes, both directions at once."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.frontends.onnx import import_onnx
from targets.lowering.to_relax import lower
from tests.targets import run_lowered

RTOL, ATOL = 1e-4, 1e-5  # float32, a few steps of tanh/sigmoid
T, B, IN, H = 3, 3, 4, 5
LENS = np.array([3, 1, 2], dtype=np.int32)


def _model(op: str, attrs: dict, lens_as_input: bool) -> tuple[onnx.ModelProto, dict]:
    rng = np.random.default_rng(7)
    gates = {"RNN": 1, "GRU": 3, "LSTM": 4}[op]
    dirs = 2 if attrs.get("direction") == "bidirectional" else 1
    data = {
        "X": rng.standard_normal((T, B, IN)).astype(np.float32),
        "W": rng.standard_normal((dirs, gates * H, IN)).astype(np.float32) * 0.5,
        "R": rng.standard_normal((dirs, gates * H, H)).astype(np.float32) * 0.5,
        "B": rng.standard_normal((dirs, 2 * gates * H)).astype(np.float32) * 0.5,
        "sequence_lens": LENS,
        "initial_h": rng.standard_normal((dirs, B, H)).astype(np.float32),
    }
    if op == "LSTM":
        data["initial_c"] = rng.standard_normal((dirs, B, H)).astype(np.float32)
        data["P"] = rng.standard_normal((dirs, 3 * H)).astype(np.float32)
    names = list(data)
    outputs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    node = helper.make_node(op, names, outputs, hidden_size=H, **attrs)
    runtime = {"X"} | ({"sequence_lens"} if lens_as_input else set())
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(data[n].dtype), data[n].shape)
              for n in names if n in runtime]
    inits = [numpy_helper.from_array(data[n], n) for n in names if n not in runtime]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs]
    graph = helper.make_graph([node], "g", inputs, outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    return model, {n: data[n] for n in names if n in runtime}


# Three compiles (each ~20 s: every unrolled step is its own kernels) cover the features between them.
CASES: dict[str, tuple[str, dict[str, object], bool]] = {
    "lstm_bidirectional_clip_input_forget_runtime_lens": ("LSTM", {
        "direction": "bidirectional", "clip": 1.5, "input_forget": 1}, True),
    "gru_reverse_linear_before_reset_activations": ("GRU", {
        "direction": "reverse", "linear_before_reset": 1, "activations": ["HardSigmoid", "LeakyRelu"],
        "activation_alpha": [0.3, 0.05], "activation_beta": [0.4]}, False),
    "rnn_bidirectional_activations": ("RNN", {
        "direction": "bidirectional", "activations": ["Relu", "ScaledTanh"], "activation_alpha": [0.7],
        "activation_beta": [1.3]}, False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_recurrent_matches_onnxruntime(case: str) -> None:
    op, attrs, lens_as_input = CASES[case]
    model, feeds = _model(op, attrs, lens_as_input)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, feeds)
    got = run_lowered(lower(import_onnx(model)), feeds)
    for name, g, w in zip(["Y", "Y_h", "Y_c"], got, want, strict=False):
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL, err_msg=f"{case}: {name}")
    # The masked steps: outputs past each entry's length are zero.
    assert not np.any(got[0][LENS[1]:, :, 1, :])
