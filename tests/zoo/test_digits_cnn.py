"""digits_cnn: shipped weights, real data, held-out accuracy."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from compiler.zoo import digits_cnn


def _torch_predict() -> Callable[[np.ndarray], np.ndarray]:
    module, _ = digits_cnn.MODEL.build()

    def predict(batch: np.ndarray) -> np.ndarray:
        assert batch.shape == (digits_cnn.BATCH, 1, 8, 8)
        with torch.no_grad():
            return module(torch.from_numpy(batch)).numpy()

    return predict


def test_pytorch_accuracy_on_held_out_split() -> None:
    assert digits_cnn.test_accuracy(_torch_predict()) >= 0.95


def test_accuracy_counts_wrong_answers() -> None:
    # A constant predictor scores about one class in ten: the metric is not rigged.
    score = digits_cnn.test_accuracy(lambda b: np.zeros(len(b), dtype=np.int64))
    assert 0.05 < score < 0.15


def test_sample_inputs_are_real_test_digits() -> None:
    images, _ = digits_cnn.test_split()
    sample = digits_cnn.MODEL.sample_inputs(seed=5)["images"]
    assert sample.shape == (digits_cnn.BATCH, 1, 8, 8) and sample.dtype == np.float32
    assert all(any(np.array_equal(s, img) for img in images) for s in sample)


def test_weights_load_without_pickle() -> None:
    with np.load(digits_cnn.WEIGHTS, allow_pickle=False) as data:
        assert all(data[k].dtype != object for k in data.files)


def test_training_is_deterministic(tmp_path: Path) -> None:
    # Two epochs are enough to show the same seed gives the same bytes; the full run takes seconds.
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    digits_cnn.train(epochs=2, out=a)
    digits_cnn.train(epochs=2, out=b)
    with np.load(a) as x, np.load(b) as y:
        assert x.files == y.files and all(np.array_equal(x[k], y[k]) for k in x.files)
