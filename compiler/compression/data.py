"""``CompressionData``: the calibration set, the test set and the accuracy budget of one compile."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from compiler.errors import EffarchError
from compiler.ir import Graph
from compiler.numerics.accuracy import Score, batch_size, outputs, score
from compiler.numerics.datasets import Dataset
from compiler.numerics.reference import ReferenceSession


@dataclass
class CompressionData:
    """Passes read activations of ``calibration`` and scores on ``accuracy`` through this.

    ``reference`` is the fp32 graph the user gave (after folding, before compression): scores
    without labels compare with its outputs, and ``baseline()`` is its own score."""

    calibration: Dataset | None = None
    accuracy: Dataset | None = None
    max_drop: float | None = None  # points of the score a pass may lose; None: no budget
    reference: Graph | None = None
    progress: Callable[[str], None] | None = None  # one line per calibration batch (the CLI's stderr)
    _reference_outputs: np.ndarray | None = field(default=None, repr=False)
    _baseline: Score | None = field(default=None, repr=False)

    def activations(self, g: Graph, names: list[str]) -> Iterator[dict[str, np.ndarray]]:
        """Per calibration batch, the values ``names`` of ``g`` (run by onnxruntime)."""
        if self.calibration is None:
            raise EffarchError("static quantization needs calibration data; pass --calibration FILE.npz")
        session = ReferenceSession(g, extra=names)
        batch = batch_size(g)
        total = -(-len(self.calibration) // batch)
        for i, (feeds, real) in enumerate(self.calibration.batches(batch)):
            if self.progress is not None:
                self.progress(f"calibration: batch {i + 1}/{total} ({len(names)} tensors)")
            got = {**feeds, **session.run(feeds)}  # graph inputs are calibrated too
            yield {n: got[n][:real] if _batched(got[n], feeds) else got[n] for n in names if n in got}

    def score(self, g: Graph) -> Score:
        """``g``'s score on the test set (top-1 with labels, else cosine to the reference's outputs)."""
        data = self._test_set()
        return score(self._outputs(g), data, self._reference())

    def baseline(self) -> Score:
        if self._baseline is None:
            assert self.reference is not None, "a budget needs the fp32 graph"
            self._baseline = self.score(self.reference)
        return self._baseline

    def _outputs(self, g: Graph) -> np.ndarray:
        session = ReferenceSession(g)
        first = g.outputs[0].name
        return outputs(lambda feeds: session.run(feeds)[first], self._test_set(), batch_size(g))

    def _reference(self) -> np.ndarray:
        if self._reference_outputs is None:
            assert self.reference is not None, "scores without labels need the fp32 graph"
            self._reference_outputs = self._outputs(self.reference)
        return self._reference_outputs

    def _test_set(self) -> Dataset:
        if self.accuracy is None:
            raise EffarchError("an accuracy budget needs test data; pass --accuracy-data FILE.npz")
        return self.accuracy


def _batched(value: np.ndarray, feeds: dict[str, np.ndarray]) -> bool:
    """Whether ``value`` has the batch as its first axis (padding rows can then be dropped)."""
    n = len(next(iter(feeds.values())))
    return value.ndim > 0 and value.shape[0] == n
