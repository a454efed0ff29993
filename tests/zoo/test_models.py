"""Every zoo model builds, exports to ONNX, and onnxruntime on the export matches PyTorch eager."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from compiler import zoo

# (rtol, atol) per output dtype, judged against the reference's largest magnitude: ORT and PyTorch
# use different matmul/conv kernels, so float32 results differ by accumulated rounding only.
TOLERANCE = {np.dtype(np.float32): (1e-4, 1e-5)}

SLOW = {"resnet18", "mobilenetv2", "minilm"}
PARAMS = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in zoo.names()]


def _eager(model: zoo.ZooModel, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    module, _ = model.build()
    with torch.no_grad():
        out = module(*(torch.from_numpy(inputs[n]) for n in model.input_names))
    outs = out if isinstance(out, tuple) else (out,)
    return [o.numpy() for o in outs]


def _onnxruntime(model: zoo.ZooModel, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3  # its constant-folding warnings are not test failures
    session = ort.InferenceSession(str(model.onnx_path()), opts, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(model.input_names)
    assert [o.name for o in session.get_outputs()] == list(model.output_names)
    return [np.asarray(o) for o in session.run(None, inputs)]


@pytest.mark.parametrize("name", PARAMS)
def test_onnxruntime_matches_eager(name: str) -> None:
    model = zoo.get(name)
    inputs = model.sample_inputs(seed=3)
    assert list(inputs) == list(model.input_names)
    expected, got = _eager(model, inputs), _onnxruntime(model, inputs)
    assert len(got) == len(expected) == len(model.output_names)
    for out_name, g, e in zip(model.output_names, got, expected, strict=True):
        assert g.shape == e.shape and g.dtype == e.dtype, out_name
        assert np.isfinite(e).all() and np.abs(e).max() > 0, f"{out_name}: degenerate reference"
        rtol, atol = TOLERANCE[e.dtype]
        assert np.abs(g - e).max() <= atol + rtol * np.abs(e).max(), out_name


@pytest.mark.parametrize("name", PARAMS)
def test_example_inputs_match_sample_inputs(name: str) -> None:
    model = zoo.get(name)
    _, example = model.build()
    sample = model.sample_inputs(seed=0)
    assert len(example) == len(model.input_names)
    for n, t in zip(model.input_names, example, strict=True):
        assert t.shape == sample[n].shape and t.numpy().dtype == sample[n].dtype, n
