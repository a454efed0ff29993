"""Scoring a model on a test set: top-1 accuracy against labels, or cosine similarity of its
outputs to the fp32 model's when the set has no labels. Both are percentages, so an accuracy
budget (``--max-accuracy-drop``) is in points either way."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from compiler.ir import Graph
from compiler.numerics.datasets import Dataset

# A model under test: a batch of inputs -> its first output.
Predict = Callable[[dict[str, np.ndarray]], np.ndarray]
DEFAULT_BATCH = 32


@dataclass(frozen=True)
class Score:
    metric: str  # "top-1" or "cosine"
    percent: float
    samples: int

    def drop_from(self, reference: Score) -> float:
        """Points lost against ``reference`` (positive: worse)."""
        return reference.percent - self.percent

    def __str__(self) -> str:
        return f"{self.metric} {self.percent:.2f}% ({self.samples} samples)"


def batch_size(g: Graph) -> int:
    """The batch a model's first input takes: its static first dim, else DEFAULT_BATCH."""
    t = g.inputs[0].type
    first = t.shape[0] if t is not None and t.shape else None
    return first if isinstance(first, int) and first > 0 else DEFAULT_BATCH


def outputs(predict: Predict, data: Dataset, batch: int) -> np.ndarray:
    """The first output for every sample of ``data`` (padding dropped)."""
    parts = [np.asarray(predict(feeds))[:real] for feeds, real in data.batches(batch)]
    return np.concatenate(parts)


def score(got: np.ndarray, data: Dataset, reference: np.ndarray | None) -> Score:
    """Top-1 of ``got`` against the labels, or its mean cosine with ``reference`` per sample."""
    if data.labels is not None:
        predicted = got.reshape(len(got), -1).argmax(axis=1) if got.ndim > 1 else got
        return Score("top-1", 100.0 * float(np.mean(predicted == data.labels)), len(got))
    assert reference is not None, "without labels the fp32 outputs are the reference"
    return Score("cosine", 100.0 * float(np.mean(cosine_per_sample(got, reference))), len(got))


def cosine_per_sample(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64 = a.reshape(len(a), -1).astype(np.float64)
    b64 = b.reshape(len(b), -1).astype(np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return np.where(norms > 0, np.sum(a64 * b64, axis=1) / np.maximum(norms, 1e-300), 1.0)
