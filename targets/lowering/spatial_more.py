"""Converters of sampling and spatial rearrangement ops: GridSample, AffineGrid, SpaceToDepth,
DepthToSpace, CenterCropPad, Col2Im, DeformConv, MaxUnpool (opset-21 semantics).

GridSample samples at run-time coordinates, so it is a TE kernel: each output point maps its grid
coordinate into the input, pads it (border, reflection) and sums its 2^D (linear) or 4^D (cubic)
weighted taps, or takes one tap (nearest); taps outside the input read 0 with zeros padding.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
from tvm import relax, te, tirx
from tvm.relax import op as R

from targets.lowering.registry import Call, converter, norm_axis

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


# ---- block rearrangements ------------------------------------------------------------------------
@converter("DepthToSpace")
def _depth_to_space(c: Call) -> relax.Expr:
    n, ch, h, w = c.static(0)
    b = int(c.attr("blocksize"))
    if c.attr("mode", "DCR") == "DCR":  # depth holds (block row, block column, channel)
        x = c.emit(R.reshape(c.arg(0), [n, b, b, ch // (b * b), h, w]))
        x = c.emit(R.permute_dims(x, [0, 3, 4, 1, 5, 2]))
    else:  # CRD: (channel, block row, block column)
        x = c.emit(R.reshape(c.arg(0), [n, ch // (b * b), b, b, h, w]))
        x = c.emit(R.permute_dims(x, [0, 1, 4, 2, 5, 3]))
    return R.reshape(x, [n, ch // (b * b), h * b, w * b])


@converter("SpaceToDepth")
def _space_to_depth(c: Call) -> relax.Expr:
    n, ch, h, w = c.static(0)
    b = int(c.attr("blocksize"))
    x = c.emit(R.reshape(c.arg(0), [n, ch, h // b, b, w // b, b]))
    x = c.emit(R.permute_dims(x, [0, 3, 5, 1, 2, 4]))  # depth holds (block row, block column, channel)
    return R.reshape(x, [n, ch * b * b, h // b, w // b])


@converter("CenterCropPad")
def _center_crop_pad(c: Call) -> relax.Expr:
    shape = c.static(0)
    rank = len(shape)
    axes = [norm_axis(int(a), rank) for a in c.attr("axes", list(range(rank)))]
    wanted = c.ints(1, "shape")
    if len(wanted) != len(axes):
        raise c.fail(f"shape has {len(wanted)} values for {len(axes)} axes")
    x = c.arg(0)
    for axis, size in zip(axes, wanted, strict=True):
        have = shape[axis]
        if size < have:  # crop: the extra row goes at the end (start rounds down)
            start = (have - size) // 2
            x = c.emit(R.strided_slice(x, [axis], [start], [start + size]))
        elif size > have:  # pad with zeros: the extra row goes at the end
            before = (size - have) // 2
            widths = [0] * (2 * rank)
            widths[2 * axis], widths[2 * axis + 1] = before, size - have - before
            x = c.emit(R.nn.pad(x, widths))
    return x


# ---- AffineGrid ----------------------------------------------------------------------------------
def _base_grid(size: list[int], align_corners: bool) -> np.ndarray:
    """Normalised coordinates of every output point, (x, y[, z], 1) per point, x varying fastest."""
    axes = []
    for d in size:
        if align_corners:
            axes.append(np.linspace(-1.0, 1.0, d) if d > 1 else np.zeros(1))
        else:
            axes.append((np.arange(d) * 2.0 + 1.0) / d - 1.0)
    mesh = np.meshgrid(*axes, indexing="ij")  # spatial order: (D,) H, W
    coords = [m.reshape(-1) for m in reversed(mesh)]  # x (W) first
    return np.stack([*coords, np.ones_like(coords[0])], axis=1)


@converter("AffineGrid")
def _affine_grid(c: Call) -> relax.Expr:
    size = c.ints(1, "size")
    spatial = size[2:]
    if len(spatial) not in (2, 3):
        raise c.fail(f"size {size} must be 4-D (N, C, H, W) or 5-D (N, C, D, H, W)")
    dtype = c.dtype(0)
    base = _base_grid(spatial, bool(c.attr("align_corners", 0))).astype(dtype)
    # grid[n, p, :] = theta[n] @ base[p]  ->  base @ theta[n]^T
    theta_t = c.emit(R.permute_dims(c.arg(0), [0, 2, 1]))
    grid = c.emit(R.matmul(relax.const(base, dtype), theta_t))
    return R.reshape(grid, [size[0], *spatial, len(spatial)])


# ---- Col2Im ----------------------------------------------------------------------------------------
def col2im(cols: te.Tensor, image: list[int], block: list[int], dilations: list[int], pads: list[int],
           strides: list[int]) -> te.Tensor:
    """Each image pixel sums the column entries whose block position lands on it."""
    nd = len(image)
    counts = [(image[i] + pads[i] + pads[nd + i] - dilations[i] * (block[i] - 1) - 1) // strides[i] + 1
              for i in range(nd)]
    channels = int(cols.shape[1]) // int(np.prod(block))
    ks = [te.reduce_axis((0, b), name=f"k{i}") for i, b in enumerate(block)]

    def body(n: Any, ch: Any, *p: Any) -> Any:
        ok: Any = tirx.const(True, "bool")
        col: Any = 0
        chan: Any = ch
        for i in range(nd):
            q = p[i] + pads[i] - ks[i] * dilations[i]  # this block's start, in padded coordinates
            ok = tirx.all(ok, q >= 0, tirx.floormod(q, strides[i]) == 0, q < counts[i] * strides[i])
            col = col * counts[i] + tirx.max(tirx.min(tirx.floordiv(q, strides[i]), counts[i] - 1), 0)
            chan = chan * block[i] + ks[i]
        value = cols[n, chan, col]
        return te.sum(tirx.Select(ok, value, tirx.const(0, cols.dtype)), axis=ks)

    return te.compute((cols.shape[0], channels, *image), body, name="col2im")


@converter("Col2Im")
def _col2im(c: Call) -> relax.Expr:
    image, block = c.ints(1, "image_shape"), c.ints(2, "block_shape")
    nd = len(image)
    c.static(0)
    return c.bb.emit_te(col2im, c.arg(0), image, block, list(c.attr("dilations", [1] * nd)),
                        list(c.attr("pads", [0] * (2 * nd))), list(c.attr("strides", [1] * nd)),
                        primfunc_name_hint="col2im")


# ---- DeformConv ------------------------------------------------------------------------------------
def _bilinear_zero(x: te.Tensor, n: Any, ch: Any, y: Any, xx: Any, h: int, w: int) -> Any:
    """x[n, ch] at the real position (y, xx); taps outside the image read 0."""
    y0, x0 = tirx.floor(y), tirx.floor(xx)
    ty, tx = y - y0, xx - x0
    total: Any = tirx.const(0.0, x.dtype)
    for dy, wy in ((0, 1 - ty), (1, ty)):
        for dx, wx in ((0, 1 - tx), (1, tx)):
            iy, ix = y0.astype("int32") + dy, x0.astype("int32") + dx
            inside = tirx.all(iy >= 0, iy < h, ix >= 0, ix < w)
            tap = x[n, ch, tirx.max(tirx.min(iy, h - 1), 0), tirx.max(tirx.min(ix, w - 1), 0)]
            total = total + tirx.Select(inside, tap, tirx.const(0.0, x.dtype)) * wy * wx
    return total


def deform_conv2d(x: te.Tensor, weight: te.Tensor, offset: te.Tensor, mask: te.Tensor | None,
                  bias: te.Tensor | None, strides: list[int], pads: list[int], dilations: list[int],
                  group: int, offset_group: int) -> te.Tensor:
    n_, ic, h, w = (int(d) for d in x.shape)
    oc, icg, kh, kw = (int(d) for d in weight.shape)
    oh, ow = int(offset.shape[2]), int(offset.shape[3])
    per_offset_group, ocg = ic // offset_group, oc // group

    def sampled(n: Any, ch: Any, ky: Any, kx: Any, oy: Any, ox: Any) -> Any:
        base = (ch // per_offset_group) * kh * kw + ky * kw + kx
        y = (oy * strides[0] - pads[0] + ky * dilations[0]).astype(x.dtype) + offset[n, 2 * base, oy, ox]
        xx = (ox * strides[1] - pads[1] + kx * dilations[1]).astype(x.dtype) + offset[n, 2 * base + 1, oy, ox]
        value = _bilinear_zero(x, n, ch, y, xx, h, w)
        return value * mask[n, base, oy, ox] if mask is not None else value

    cols = te.compute((n_, ic, kh, kw, oh, ow), sampled, name="deform_sample")
    r_c, r_y, r_x = te.reduce_axis((0, icg), "rc"), te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")

    def conv(n: Any, o: Any, oy: Any, ox: Any) -> Any:
        ch = (o // ocg) * icg + r_c
        return te.sum(cols[n, ch, r_y, r_x, oy, ox] * weight[o, r_c, r_y, r_x], axis=[r_c, r_y, r_x])

    out = te.compute((n_, oc, oh, ow), conv, name="deform_conv")
    if bias is None:
        return out
    return te.compute(out.shape, lambda n, o, y, xx: out[n, o, y, xx] + bias[o], name="deform_bias")


@converter("DeformConv")
def _deform_conv(c: Call) -> relax.Expr:
    if c.rank(0) != 4:
        raise c.fail(f"{c.rank(0) - 2}-D DeformConv is not supported (2-D is, as in ONNX's reference)")
    c.static(0)
    c.static(1)
    c.static(2)
    pads = list(c.attr("pads", [0, 0, 0, 0]))
    bias = c.arg(3) if c.has(3) else None
    mask = c.arg(4) if c.has(4) else None
    return c.bb.emit_te(deform_conv2d, c.arg(0), c.arg(1), c.arg(2), mask, bias, list(c.attr("strides", [1, 1])),
                        pads[:2], list(c.attr("dilations", [1, 1])), int(c.attr("group", 1)),
                        int(c.attr("offset_group", 1)), primfunc_name_hint="deform_conv2d")


# ---- MaxUnpool -------------------------------------------------------------------------------------
@converter("MaxUnpool")
def _max_unpool(c: Call) -> relax.Expr:
    shape = c.static(0)
    nd = len(shape) - 2
    kernel = list(c.attr("kernel_shape"))
    strides = list(c.attr("strides", [1] * nd))
    pads = list(c.attr("pads", [0] * (2 * nd)))
    natural = shape[:2] + [(shape[2 + i] - 1) * strides[i] + kernel[i] - pads[i] - pads[nd + i] for i in range(nd)]
    # The indices are flat positions in the natural output (as MaxPool's Indices output gives them).
    flat = relax.const(np.zeros(int(np.prod(natural)), c.dtype(0)))
    idx = c.emit(R.reshape(c.arg(1), [-1]))
    values = c.emit(R.reshape(c.arg(0), [-1]))
    y = c.emit(R.reshape(c.emit(R.scatter_elements(flat, idx, values, 0)), natural))
    if not c.has(2):
        return y
    out = c.ints(2, "output_shape")
    if len(out) != len(natural) or any(o < d for o, d in zip(out, natural, strict=True)):
        raise c.fail(f"output_shape {out} must have rank {len(natural)} and be at least {natural}")
    # A larger output_shape adds zero rows and columns after the natural output.
    return R.nn.pad(y, [w for d, o in zip(natural, out, strict=True) for w in (0, o - d)])
