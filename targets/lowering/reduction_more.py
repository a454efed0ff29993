"""Converters of the norm-like reductions (ReduceL1/L2/SumSquare/LogSum/LogSumExp), LpNormalization,
LpPool and the statistics normalizations (GroupNormalization, InstanceNormalization,
MeanVarianceNormalization)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tvm import relax
from tvm.relax import op as R

from targets.lowering.elementwise import scalar
from targets.lowering.pooling import _drop_windows_starting_in_padding
from targets.lowering.registry import Call, converter, norm_axis
from targets.lowering.spatial import window

_FLOATS = ("float16", "float32", "float64", "bfloat16")


def _square(x: relax.Expr) -> relax.Expr:
    return R.multiply(x, x)


def _identity(x: relax.Expr) -> relax.Expr:
    return x


def _sqrt(x: relax.Expr) -> relax.Expr:
    return R.sqrt(x)


# op -> (map applied to each element before summing, map applied to the sum, value of an empty sum).
# Summing over no axis at all (noop_with_empty_axes) applies both maps to each element alone.
_SUM_OF: dict[str, tuple[Callable[[relax.Expr], relax.Expr], Callable[[relax.Expr], relax.Expr], float]] = {
    "ReduceL1": (R.abs, _identity, 0.0),
    "ReduceL2": (_square, _sqrt, 0.0),
    "ReduceSumSquare": (_square, _identity, 0.0),
    "ReduceLogSum": (_identity, R.log, -np.inf),
}


def _axes(c: Call) -> list[int] | None:
    """The reduced axes, sorted; None where noop_with_empty_axes makes the op elementwise."""
    rank = c.rank(0)
    axes = sorted({norm_axis(a, rank) for a in c.ints(1, "axes")}) if c.has(1) else []
    if not axes:
        return None if c.attr("noop_with_empty_axes", 0) else list(range(rank))
    return axes


def _reduced_shape(c: Call, axes: list[int], keepdims: bool) -> list[int]:
    shape = c.static(0)
    return [1 if i in axes else d for i, d in enumerate(shape) if keepdims or i not in axes]


@converter(*_SUM_OF, "ReduceLogSumExp")
def _reduce_norm(c: Call) -> relax.Expr:
    axes, keepdims, dt = _axes(c), bool(c.attr("keepdims", 1)), c.dtype(0)
    if axes is not None and any(c.shape(0)[a] == 0 for a in axes):
        # An empty sum: the result does not depend on the (empty) input.
        empty = -np.inf if c.op == "ReduceLogSumExp" else _SUM_OF[c.op][2]
        return relax.const(np.full(_reduced_shape(c, axes, keepdims), empty, dtype=dt), dt)
    x = c.arg(0)
    if dt not in _FLOATS and c.op not in ("ReduceL1", "ReduceSumSquare"):
        # Square roots and logarithms of integers: in float64, rounded back as onnxruntime does.
        x = c.emit(R.astype(x, "float64"))
    y = c.emit(_log_sum_exp(c, x, axes, keepdims) if c.op == "ReduceLogSumExp" else _sum_of(c, x, axes, keepdims))
    return y if str(y.ty.dtype) == dt else R.astype(y, dt)


def _sum_of(c: Call, x: relax.Expr, axes: list[int] | None, keepdims: bool) -> relax.Expr:
    before, after, _ = _SUM_OF[c.op]
    if axes is None:
        return after(before(x))
    return after(c.emit(R.sum(c.emit(before(x)), axes, keepdims=keepdims)))


def _log_sum_exp(c: Call, x: relax.Expr, axes: list[int] | None, keepdims: bool) -> relax.Expr:
    if axes is None:
        return x
    # log(sum(exp(x - m))) + m with m the maximum, so exp does not overflow.
    peak = c.emit(R.max(x, axes, keepdims=True))
    total = c.emit(R.sum(c.emit(R.exp(c.emit(R.subtract(x, peak)))), axes, keepdims=keepdims))
    shift = peak if keepdims else c.emit(R.squeeze(peak, axes))
    return R.add(c.emit(R.log(total)), shift)


@converter("LpNormalization")
def _lp_normalization(c: Call) -> relax.Expr:
    p, axis = int(c.attr("p", 2)), norm_axis(int(c.attr("axis", -1)), c.rank(0))
    if p not in (1, 2):
        raise c.fail(f"p={p} is not a norm LpNormalization defines; use p=1 or p=2")
    x = c.arg(0)
    if p == 1:
        norm = c.emit(R.sum(c.emit(R.abs(x)), [axis], keepdims=True))
    else:
        norm = c.emit(R.sqrt(c.emit(R.sum(c.emit(_square(x)), [axis], keepdims=True))))
    # A zero norm gives zeros (0 / 0 would be NaN).
    zero = scalar(0, c.dtype(0))
    safe = c.emit(R.where(R.equal(norm, zero), scalar(1, c.dtype(0)), norm))
    return R.divide(x, safe)


_AVG = {1: R.nn.avg_pool1d, 2: R.nn.avg_pool2d, 3: R.nn.avg_pool3d}
_LAYOUT = {1: "NCW", 2: "NCHW", 3: "NCDHW"}


@converter("LpPool")
def _lp_pool(c: Call) -> relax.Expr:
    # (sum of |x|^p over the window)^(1/p): an average pool of |x|^p, padding counted as zeros,
    # times the window's size.
    spatial = c.static(0)[2:]
    n, dt = len(spatial), c.dtype(0)
    if n not in _AVG:
        raise c.fail(f"{n}-D pooling is not supported (1-D to 3-D are)")
    p = float(c.attr("p", 2))
    win = window(c, spatial, list(c.attr("kernel_shape")))
    ceil_mode = bool(c.attr("ceil_mode", 0))
    powered = c.emit(R.power(c.emit(R.abs(c.arg(0))), scalar(p, dt)))
    mean = c.emit(_AVG[n](powered, pool_size=win.kernel, strides=win.strides, padding=win.pads,
                          dilation=win.dilations, ceil_mode=ceil_mode, count_include_pad=True,
                          layout=_LAYOUT[n]))
    if ceil_mode:
        mean = c.emit(_drop_windows_starting_in_padding(c, mean, spatial, win))
    total = c.emit(R.multiply(mean, scalar(float(np.prod(win.kernel)), dt)))
    return R.power(total, scalar(1.0 / p, dt))


def _standardize(c: Call, x: relax.Expr, axes: list[int], eps: float, *, eps_outside: bool = False) -> relax.Expr:
    """(x - mean) / sqrt(var + eps) over ``axes``, in float32 for narrower floats."""
    dt = str(x.ty.dtype)
    work = "float64" if dt == "float64" else "float32"
    if dt != work:
        x = c.emit(R.astype(x, work))
    mean = c.emit(R.mean(x, axes, keepdims=True))
    centred = c.emit(R.subtract(x, mean))
    var = c.emit(R.mean(c.emit(_square(centred)), axes, keepdims=True))
    if eps_outside:  # MeanVarianceNormalization: (x - mean) / (sqrt(var) + eps)
        y = c.emit(R.divide(centred, c.emit(R.add(c.emit(R.sqrt(var)), scalar(eps, work)))))
    else:
        y = c.emit(R.multiply(centred, c.emit(R.rsqrt(c.emit(R.add(var, scalar(eps, work)))))))
    return y if dt == work else c.emit(R.astype(y, dt))


def _per_channel(c: Call, i: int, rank: int) -> relax.Expr:
    v = c.arg(i)
    if c.dtype(i) != c.dtype(0):
        v = c.emit(R.astype(v, c.dtype(0)))
    return c.emit(R.reshape(v, [1, -1] + [1] * (rank - 2)))


def _scale_and_shift(c: Call, y: relax.Expr, rank: int) -> relax.Expr:
    return R.add(c.emit(R.multiply(y, _per_channel(c, 1, rank))), _per_channel(c, 2, rank))


@converter("InstanceNormalization")
def _instance_norm(c: Call) -> relax.Expr:
    rank = c.rank(0)
    y = _standardize(c, c.arg(0), list(range(2, rank)), float(c.attr("epsilon", 1e-5)))
    return _scale_and_shift(c, y, rank)


@converter("GroupNormalization")
def _group_norm(c: Call) -> relax.Expr:
    # Opset 21: statistics over each group of C / num_groups channels, then scale and bias per channel.
    shape = c.shape(0)
    rank, groups = len(shape), int(c.attr("num_groups"))
    channels = shape[1]
    if isinstance(channels, int) and channels % groups:
        raise c.fail(f"{channels} channels do not split into num_groups={groups} groups")
    grouped = c.emit(R.reshape(c.arg(0), [shape[0], groups, -1]))
    y = _standardize(c, grouped, [2], float(c.attr("epsilon", 1e-5)))
    y = c.emit(R.reshape(y, shape))
    return _scale_and_shift(c, y, rank)


@converter("MeanVarianceNormalization")
def _mvn(c: Call) -> relax.Expr:
    rank = c.rank(0)
    axes = sorted({norm_axis(int(a), rank) for a in c.attr("axes", [0, 2, 3])})
    return _standardize(c, c.arg(0), axes, 1e-9, eps_outside=True)
