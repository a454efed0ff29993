"""Resize (opset-21 semantics; opset-9 Upsample arrives converted to it).

Resize is separable: each resized axis is interpolated on its own, and with static shapes and
constant scales or sizes every axis's taps are known at compile time. Per axis, ``_taps`` gives
for each output position the ``n`` source indices (edge-clamped), their coefficients and, for
``tf_crop_and_resize``, whether the position lies outside the input (``extrapolation_value``).
The graph then gathers each tap along the axis and sums the weighted taps; nearest mode is a
single gather, exact for every element type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tvm import relax
from tvm.relax import op as R

from targets.lowering.registry import Call, converter, norm_axis

Coeffs = Callable[[np.ndarray, float], np.ndarray]  # ratios [out] and scale -> coefficients [out, n]
_ROUNDING = {
    "round_prefer_floor": lambda r: r > 0.5,
    "round_prefer_ceil": lambda r: r >= 0.5,
    "floor": lambda r: np.zeros_like(r, bool),
    "ceil": lambda r: np.ones_like(r, bool),
}


@dataclass(frozen=True, slots=True)
class Taps:
    index: np.ndarray  # [out, n] source indices, clamped into [0, in)
    coeff: np.ndarray  # [out, n] float64
    outside: np.ndarray | None  # [out] bool: tf_crop_and_resize positions given extrapolation_value


@dataclass(frozen=True, slots=True)
class AxisPlan:
    in_size: int
    out_size: int
    scale: float
    roi: tuple[float, float]


# ---- coefficients per mode -------------------------------------------------------------------------
def _nearest(mode: str) -> Coeffs:
    if mode not in _ROUNDING:
        raise ValueError(f"nearest_mode '{mode}' is not one of {', '.join(_ROUNDING)}")
    up = _ROUNDING[mode]

    def coeffs(ratio: np.ndarray, scale: float) -> np.ndarray:
        # ratio 1 marks an exact source position: the right-hand tap (the position itself).
        take_right = np.where(ratio == 1.0, True, up(ratio))
        return np.stack([~take_right, take_right], axis=1).astype(np.float64)
    return coeffs


def _linear(antialias: bool) -> Coeffs:
    def coeffs(ratio: np.ndarray, scale: float) -> np.ndarray:
        if not antialias or scale >= 1.0:
            return np.stack([1.0 - ratio, ratio], axis=1)
        start = int(np.floor(-1 / scale) + 1)  # a triangle stretched by 1/scale
        offsets = np.arange(start, 2 - start, dtype=np.float64)
        w = np.clip(1.0 - np.abs((offsets[None, :] - ratio[:, None]) * scale), 0.0, 1.0)
        return w / w.sum(axis=1, keepdims=True)
    return coeffs


def _keys(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with parameter ``a`` at distances ``x``."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def _cubic(a: float, antialias: bool) -> Coeffs:
    def coeffs(ratio: np.ndarray, scale: float) -> np.ndarray:
        s = min(scale, 1.0) if antialias else 1.0
        start = int(np.floor(-2 / s) + 1)
        offsets = np.arange(start, 2 - start, dtype=np.float64)
        w = _keys((offsets[None, :] - ratio[:, None]) * s, a)
        return w / w.sum(axis=1, keepdims=True) if antialias else w
    return coeffs


# ---- source coordinates ----------------------------------------------------------------------------
def source_coords(mode: str, p: AxisPlan) -> tuple[np.ndarray, np.ndarray | None]:
    """Each output position's coordinate in the input, and (tf_crop_and_resize) which fall outside."""
    y = np.arange(p.out_size, dtype=np.float64)
    width = p.scale * p.in_size  # the unrounded output width
    if mode == "align_corners":
        return (np.zeros_like(y) if width == 1 else y * (p.in_size - 1) / (width - 1)), None
    if mode == "asymmetric":
        return y / p.scale, None
    if mode == "tf_crop_and_resize":
        lo, hi = p.roi
        span = (hi - lo) * (p.in_size - 1)
        x = np.full_like(y, span / 2) if width == 1 else y * span / (width - 1)
        x = x + lo * (p.in_size - 1)
        return x, (x < 0) | (x > p.in_size - 1)
    if mode == "pytorch_half_pixel":
        return (np.full_like(y, -0.5) if width == 1 else (y + 0.5) / p.scale - 0.5), None
    if mode == "half_pixel":
        return (y + 0.5) / p.scale - 0.5, None
    if mode == "half_pixel_symmetric":
        offset = p.in_size / 2 * (1 - p.out_size / width)
        return offset + (y + 0.5) / p.scale - 0.5, None
    raise ValueError(f"coordinate_transformation_mode '{mode}' is unknown")


def taps(coord_mode: str, coeffs: Coeffs, p: AxisPlan, exclude_outside: bool) -> Taps:
    x, outside = source_coords(coord_mode, p)
    base = np.floor(x)
    ratio = np.where(x == base, 1.0, x - base)  # an exact position counts as the right-hand tap
    w = coeffs(ratio, p.scale)
    n = w.shape[1]
    # The n source positions nearest x, ties going to the smaller one (the window is the same
    # as ONNX's neighbour search over the edge-padded input).
    if n % 2 == 0:
        start = base.astype(np.int64) - n // 2 + np.where(x == base, 0, 1)
    else:
        near = np.floor(x + 0.5)
        start = np.where(x - base == 0.5, base, near).astype(np.int64) - (n - 1) // 2
    index = start[:, None] + np.arange(n)[None, :]
    if exclude_outside:
        w = np.where((index < 0) | (index >= p.in_size), 0.0, w)
        total = w.sum(axis=1, keepdims=True)
        w = w / np.where(total == 0, 1.0, total)
    return Taps(np.clip(index, 0, p.in_size - 1), w, outside)


# ---- the converter ---------------------------------------------------------------------------------
def _given(c: Call, i: int, what: str) -> np.ndarray | None:
    """Input ``i`` as a float64 array, or None where it is omitted or empty."""
    if not c.has(i):
        return None
    arr = np.asarray(c.const(i, what), dtype=np.float64).reshape(-1)
    return arr if arr.size else None


def _plans(c: Call, shape: list[int], axes: list[int]) -> list[AxisPlan]:
    scales, sizes, roi = _given(c, 2, "scales"), _given(c, 3, "sizes"), _given(c, 1, "roi")
    k = len(axes)
    rois = [(0.0, 1.0)] * k if roi is None else [(float(roi[i]), float(roi[k + i])) for i in range(k)]
    if roi is not None and roi.size != 2 * k:
        raise c.fail(f"roi has {roi.size} values; it needs 2 per resized axis ({2 * k})")
    ins = [shape[a] for a in axes]
    if sizes is not None:
        if sizes.size != k:
            raise c.fail(f"sizes has {sizes.size} values for {k} axes")
        factors = [float(s) / d for s, d in zip(sizes, ins, strict=True)]
        policy = c.attr("keep_aspect_ratio_policy", "stretch")
        outs = [int(s) for s in sizes]
        if policy != "stretch":
            if policy not in ("not_larger", "not_smaller"):
                raise c.fail(f"keep_aspect_ratio_policy '{policy}' is not stretch, not_larger or not_smaller")
            one = min(factors) if policy == "not_larger" else max(factors)
            factors = [one] * k
            outs = [int(one * d + 0.5) for d in ins]
    elif scales is not None:
        if scales.size != k:
            raise c.fail(f"scales has {scales.size} values for {k} axes")
        factors = [float(s) for s in scales]
        outs = [int(np.floor(s * d)) for s, d in zip(factors, ins, strict=True)]
    else:
        raise c.fail("Resize needs scales or sizes; the model gives neither")
    if any(o <= 0 for o in outs) or any(f <= 0 for f in factors):
        raise c.fail(f"output sizes {outs} (scales {factors}) must be positive")
    return [AxisPlan(d, o, f, r) for d, o, f, r in zip(ins, outs, factors, rois, strict=True)]


def _coeffs(c: Call) -> Coeffs:
    mode, antialias = c.attr("mode", "nearest"), bool(c.attr("antialias", 0))
    if mode == "nearest":
        return _nearest(c.attr("nearest_mode", "round_prefer_floor"))
    if mode == "linear":
        return _linear(antialias)
    if mode == "cubic":
        return _cubic(float(c.attr("cubic_coeff_a", -0.75)), antialias)
    raise c.fail(f"mode '{mode}' is not nearest, linear or cubic")


def _along(shape_rank: int, axis: int, arr: np.ndarray, dtype: str) -> relax.Expr:
    """A [out] vector shaped to broadcast along ``axis`` of a rank-``shape_rank`` tensor."""
    dims = [1] * shape_rank
    dims[axis] = arr.size
    return relax.const(arr.reshape(dims).astype(dtype), dtype)


def _resize_axis(c: Call, x: relax.Expr, axis: int, rank: int, t: Taps, float_type: str) -> relax.Expr:
    if c.attr("mode", "nearest") == "nearest":
        chosen = t.index[np.arange(len(t.index)), np.argmax(t.coeff, axis=1)]
        return c.emit(R.take(x, relax.const(chosen.astype(np.int64), "int64"), axis))
    total: relax.Expr | None = None
    for k in range(t.index.shape[1]):
        if not np.any(t.coeff[:, k]):
            continue
        tap = R.take(x, relax.const(t.index[:, k].astype(np.int64), "int64"), axis)
        term = c.emit(R.multiply(tap, _along(rank, axis, t.coeff[:, k], float_type)))
        total = term if total is None else c.emit(R.add(total, term))
    assert total is not None, "every row of coefficients sums to one"
    if t.outside is not None and t.outside.any():
        fill = relax.const(np.asarray(c.attr("extrapolation_value", 0.0), float_type), float_type)
        total = c.emit(R.where(_along(rank, axis, t.outside, "bool"), fill, total))
    return total


@converter("Resize")
def _resize(c: Call) -> relax.Expr:
    shape, dtype = c.static(0), c.dtype(0)
    rank = len(shape)
    axes = [norm_axis(int(a), rank) for a in c.attr("axes", list(range(rank)))]
    coord_mode = c.attr("coordinate_transformation_mode", "half_pixel")
    coeffs, exclude = _coeffs(c), bool(c.attr("exclude_outside", 0))
    interpolating = c.attr("mode", "nearest") != "nearest"
    if interpolating and not dtype.startswith(("float", "bfloat")):
        raise c.fail(f"{c.attr('mode')} Resize of {dtype} is not supported (float types are; nearest takes any)")
    try:
        plans = _plans(c, shape, axes)
        x = c.arg(0)
        for axis, plan in zip(axes, plans, strict=True):
            identity = plan.out_size == plan.in_size and plan.scale == 1.0 and plan.roi == (0.0, 1.0)
            if not identity:
                x = _resize_axis(c, x, axis, rank, taps(coord_mode, coeffs, plan, exclude), dtype)
    except ValueError as e:
        raise c.fail(str(e)) from None
    return x
