"""Converters of sampling and spatial rearrangement ops: GridSample, AffineGrid, SpaceToDepth,
DepthToSpace, CenterCropPad, Col2Im, DeformConv, MaxUnpool (opset-21 semantics).

GridSample samples at run-time coordinates, so it is a TE kernel: each output point maps its grid
coordinate into the input, pads it (border, reflection) and sums its 2^D (linear) or 4^D (cubic)
weighted taps, or takes one tap (nearest); taps outside the input read 0 with zeros padding.
"""

from __future__ import annotations

import itertools
from typing import Any

from tvm import relax, te, tirx

from targets.lowering.registry import Call, converter

_CUBIC_A = -0.75  # GridSample's cubic kernel (Keys, a = -0.75), fixed by the spec


# ---- GridSample ------------------------------------------------------------------------------------
def _reflect(x: Any, lo: float, hi: float, f: str) -> Any:
    """Reflect ``x`` (of float type ``f``) at the borders ``lo``/``hi`` until it lies between them."""
    span = tirx.const(hi - lo, f)

    def fold(dx: Any, first: float, second: float, sign: float) -> Any:
        # Past the border by dx: an even number of whole spans lands near ``first``, odd near ``second``.
        n = tirx.floor(dx / span)
        r = dx - n * span
        even = n - tirx.floor(n / tirx.const(2.0, f)) * tirx.const(2.0, f) == tirx.const(0.0, f)
        return tirx.Select(even, tirx.const(first, f) + sign * r, tirx.const(second, f) - sign * r)

    below = fold(tirx.const(lo, f) - x, lo, hi, 1.0)
    above = fold(x - tirx.const(hi, f), hi, lo, -1.0)
    return tirx.Select(x < tirx.const(lo, f), below, tirx.Select(x > tirx.const(hi, f), above, x))


def _linear_weights(t: Any) -> list[Any]:
    return [1.0 - t, t]


def _cubic_weights(t: Any) -> list[Any]:
    a = _CUBIC_A

    def near(d: Any) -> Any:
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d: Any) -> Any:
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def grid_sample(x: te.Tensor, grid: te.Tensor, mode: str, padding: str, align_corners: bool) -> te.Tensor:
    spatial = [int(d) for d in x.shape[2:]]
    nd = len(spatial)
    ftype = grid.dtype
    borders = [(0.0, d - 1.0) if align_corners else (-0.5, d - 0.5) for d in spatial]

    def coord(n: Any, out: tuple[Any, ...], i: int) -> Any:
        g = grid[(n, *out, nd - 1 - i)]  # the grid's last axis lists coordinates x (last dim) first
        d = spatial[i]
        v = (g + 1) / 2 * (d - 1) if align_corners else ((g + 1) * d - 1) / 2
        if mode == "nearest":
            v = tirx.round(v)  # half to even, as np.rint
        lo, hi = borders[i]
        if padding == "border":
            v = tirx.max(tirx.min(v, tirx.const(d - 1.0, ftype)), tirx.const(0.0, ftype))
        elif padding == "reflection":
            v = _reflect(v, lo, hi, ftype)
        return v

    def pixel(n: Any, ch: Any, idx: list[Any]) -> Any:
        """The input at integer ``idx`` under the padding rule (outside reads 0 with zeros padding)."""
        inside: Any = tirx.const(True, "bool")
        fixed = []
        for i, j in enumerate(idx):
            d = spatial[i]
            if padding == "zeros":
                inside = tirx.all(inside, j >= 0, j < d)
            elif padding == "reflection":
                lo, hi = borders[i]
                j = _reflect(j.astype(ftype), lo, hi, ftype).astype("int32")
            fixed.append(tirx.max(tirx.min(j, d - 1), 0))
        value = x[(n, ch, *fixed)].astype(ftype)
        return tirx.Select(inside, value, tirx.const(0.0, ftype)) if padding == "zeros" else value

    def body(n: Any, ch: Any, *out: Any) -> Any:
        coords = [coord(n, out, i) for i in range(nd)]
        if mode == "nearest":
            return pixel(n, ch, [v.astype("int32") for v in coords]).astype(x.dtype)
        weights, first = (_linear_weights, 0) if mode == "linear" else (_cubic_weights, -1)
        bases = [tirx.floor(v) for v in coords]
        per_dim = [weights(v - b) for v, b in zip(coords, bases, strict=True)]
        total: Any = tirx.const(0.0, ftype)
        for combo in itertools.product(*[range(len(w)) for w in per_dim]):
            w: Any = tirx.const(1.0, ftype)
            for i, k in enumerate(combo):
                w = w * per_dim[i][k]
            idx = [b.astype("int32") + (first + k) for b, k in zip(bases, combo, strict=True)]
            total = total + w * pixel(n, ch, idx)
        return total.astype(x.dtype)

    out_shape = (x.shape[0], x.shape[1], *grid.shape[1:-1])
    return te.compute(out_shape, body, name="grid_sample")


@converter("GridSample")
def _grid_sample(c: Call) -> relax.Expr:
    mode = c.attr("mode", "linear")
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode)
    padding = c.attr("padding_mode", "zeros")
    if mode not in ("linear", "nearest", "cubic"):
        raise c.fail(f"mode '{mode}' is not linear, nearest or cubic")
    if padding not in ("zeros", "border", "reflection"):
        raise c.fail(f"padding_mode '{padding}' is not zeros, border or reflection")
    if mode == "cubic" and c.rank(0) != 4:
        raise c.fail("cubic GridSample is defined for 2-D images only (ONNX spec)")
    c.static(0)
    return c.bb.emit_te(grid_sample, c.arg(0), c.arg(1), mode, padding, bool(c.attr("align_corners", 0)),
                        primfunc_name_hint="grid_sample")
