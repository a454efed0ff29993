"""Which activations of quantize-static are better quantized per row at run time.

A per-tensor scale fixed by calibration spends 256 levels on the loudest row (token) ever seen.
Where the calibrated range of a MatMul's input is many times its typical row's, the static pass
writes the dynamic per-row form instead (``quantize_dynamic``: one scale per row from its own
max|x|, zero point 128), and keeps per-tensor static scales everywhere else.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

DEFAULT_RATIO = 5.0


def row_peaks(values: np.ndarray) -> np.ndarray:
    """max|row| of every row (last axis) of a batch of activations."""
    return np.abs(values.reshape(-1, values.shape[-1])).max(axis=1)


def row_ratios(batches: Iterator[dict[str, np.ndarray]], names: Iterable[str]) -> dict[str, float]:
    """Per activation name: its calibrated range (max|x| over all the samples, what a static
    per-tensor scale covers) over the median of max|row| over all the samples' rows."""
    seen: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for batch in batches:
        for name, values in batch.items():
            if name in seen and values.ndim >= 2:
                seen[name].append(row_peaks(values))
    ratios = {}
    for name, peaks in seen.items():
        if peaks:
            rows = np.concatenate(peaks)
            typical = float(np.median(rows))
            ratios[name] = float(rows.max()) / typical if typical > 0 else 1.0
    return ratios


def per_row(ratios: dict[str, float], threshold: float) -> set[str]:
    """The activations whose ratio reaches ``threshold`` (0: none)."""
    return {name for name, r in ratios.items() if threshold and r >= threshold}
