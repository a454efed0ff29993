"""Activation ranges from calibration data: min-max, percentile, and entropy (KL) thresholds.

Statistics are gathered over every calibration batch (``CompressionData.activations`` runs the
graph in batches), first the exact min and max, then a histogram of |x| over [0, max|x|] that the
percentile and entropy methods read. A range always contains 0, so 0 is exact in the quantized
domain (ReLU outputs, zero padding).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from compiler.errors import EffarchError

logger = logging.getLogger(__name__)

METHODS = ("minmax", "percentile", "entropy")
BINS = 2048
QUANT_LEVELS = 128  # |x| maps onto 128 levels of a symmetric int8, or 256 of a one-sided u8


@dataclass
class Stats:
    lo: float = math.inf
    hi: float = -math.inf
    samples: int = 0
    histogram: np.ndarray | None = None  # of |x| over [0, absmax], BINS bins
    channel_sum: np.ndarray | None = None  # per channel, over samples and positions
    channel_count: int = 0

    @property
    def channel_mean(self) -> np.ndarray | None:
        return None if self.channel_sum is None else self.channel_sum / max(self.channel_count, 1)

    @property
    def absmax(self) -> float:
        return max(abs(self.lo), abs(self.hi))


Batches = Callable[[], Iterable[dict[str, np.ndarray]]]


def collect(batches: Batches, names: list[str], method: str, *,
            means: dict[str, int] | None = None) -> dict[str, Stats]:
    """Statistics of the values ``names`` over the batches (two sweeps when a histogram is needed);
    ``means`` maps a value to its channel axis where per-channel means are wanted (bias correction)."""
    if method not in METHODS:
        raise EffarchError(f"unknown calibration method '{method}'; use one of {', '.join(METHODS)}")
    stats = {n: Stats() for n in names}
    for batch in batches():
        for n, a in batch.items():
            s = stats[n]
            s.lo, s.hi = min(s.lo, float(np.min(a))), max(s.hi, float(np.max(a)))
            s.samples += len(a) if a.ndim else 1
            if means and n in means and a.ndim > 1:
                _add_channel_sum(s, a, means[n])
    if method != "minmax":
        for batch in batches():
            for n, a in batch.items():
                _add_histogram(stats[n], a)
    return stats


def _add_channel_sum(s: Stats, a: np.ndarray, axis: int) -> None:
    moved = np.moveaxis(a, axis, -1).reshape(-1, a.shape[axis]).astype(np.float64)
    total = moved.sum(axis=0)
    s.channel_sum = total if s.channel_sum is None else s.channel_sum + total
    s.channel_count += len(moved)


def _add_histogram(s: Stats, a: np.ndarray) -> None:
    top = s.absmax or 1.0
    counts, _ = np.histogram(np.abs(a.astype(np.float64, copy=False)), bins=BINS, range=(0.0, top))
    s.histogram = counts if s.histogram is None else s.histogram + counts


def activation_range(s: Stats, method: str, percentile: float = 99.99) -> tuple[float, float]:
    """The clipping range [lo, hi] of a value under ``method`` (always containing 0)."""
    lo, hi = min(s.lo, 0.0), max(s.hi, 0.0)
    if method == "minmax" or s.histogram is None or s.absmax == 0.0:
        return lo, hi
    threshold = _percentile(s, percentile) if method == "percentile" else _entropy(s)
    return max(lo, -threshold), min(hi, threshold)


def _percentile(s: Stats, percentile: float) -> float:
    assert s.histogram is not None
    cdf = np.cumsum(s.histogram) / max(s.histogram.sum(), 1)
    index = int(np.searchsorted(cdf, percentile / 100.0))
    return (index + 1) * s.absmax / BINS


def _entropy(s: Stats) -> float:
    """The |x| threshold whose quantized histogram is closest (KL divergence) to the clipped one,
    the method TensorRT made standard for int8 activations. A one-sided value (ReLU's) has all 256
    levels of a u8 for [0, t]; a two-sided one 128 per side."""
    assert s.histogram is not None
    hist = s.histogram.astype(np.float64)
    levels = 2 * QUANT_LEVELS if s.lo >= 0 else QUANT_LEVELS
    best_t, best_kl = BINS, math.inf
    for t in range(levels, BINS + 1, 16):
        kl = _kl_at(hist, t, levels)
        if kl < best_kl:
            best_t, best_kl = t, kl
    return best_t * s.absmax / BINS


def _kl_at(hist: np.ndarray, t: int, levels: int) -> float:
    """KL(P || Q): P = the first t bins with the clipped mass added to the last; Q = the first t
    bins merged into ``levels`` levels, each spread evenly over the bins P uses."""
    p = hist[:t].copy()
    p[t - 1] += hist[t:].sum()
    if p.sum() == 0:
        return math.inf
    edges = np.linspace(0, t, levels + 1).astype(int)
    q = np.zeros(t)
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        used = p[a:b] > 0
        if used.any():
            q[a:b][used] = hist[a:b].sum() / used.sum()
    p, q = p / p.sum(), q / max(q.sum(), 1e-300)
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))


def uint8_params(lo: float, hi: float) -> tuple[float, int]:
    """(scale, zero point) of an asymmetric u8 covering [lo, hi] (lo <= 0 <= hi)."""
    span = hi - lo
    if span <= 0:
        return 1.0, 0
    scale = span / 255.0
    return scale, int(np.clip(round(-lo / scale), 0, 255))
