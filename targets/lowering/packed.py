"""Contractions that read their weights pre-packed: the layout the CPU schedule's register tile reads.

A tile computes ``MR x NR`` outputs with NR = a few vectors of output columns (channels). With
the weight packed as ``[N/NR, K, NR]`` (dense) or ``[OC/NR, KH, KW, IC, NR]`` (NHWC convolution),
each step of the reduction reads one contiguous NR-wide row, and a tile's whole weight panel is
one contiguous block. Row-major weights instead put consecutive rows a power-of-two stride apart
(N = 1024 floats is 4 KiB), which maps them to the same L1 cache set. The packing happens once,
in numpy, when the model is compiled; ``pack`` is chosen from the target's vector width.

The block of each compute is annotated ``effarch.packed`` with NR, for the schedule rules.
"""

from __future__ import annotations

import numpy as np
from tvm import te, topi

from targets.schedules.contraction import PACK_ATTR  # the rule keeps a tile within one panel


def panel_width(columns: int, pack: int) -> int:
    """The panel width for ``columns`` output columns: ``pack`` (two vectors) if it divides them,
    else half of it (one vector), else 0: not packed."""
    for nr in (pack, pack // 2):
        if nr >= 4 and columns % nr == 0:
            return nr
    return 0


def pack_dense(w: np.ndarray, nr: int) -> np.ndarray:
    """[K, N] -> [N/NR, K, NR]."""
    k, n = w.shape
    return np.ascontiguousarray(w.reshape(k, n // nr, nr).transpose(1, 0, 2))


def dense_packed(x: te.Tensor, wp: te.Tensor) -> te.Tensor:
    """x[..., M, K] @ W[K, N] with W packed as wp[N/NR, K, NR]."""
    panels, k_ext, nr = (int(d) for d in wp.shape)
    batch = list(x.shape[:-1])
    k = te.reduce_axis((0, k_ext), "k")

    def body(*idx: te.Var) -> te.Tensor:
        *lead, n = idx
        return te.sum(x[(*lead, k)] * wp[n // nr, k, n % nr], axis=k)

    return te.compute((*batch, panels * nr), body, name="dense_packed", attrs={PACK_ATTR: nr})


def pack_conv(w_oihw: np.ndarray, nr: int) -> np.ndarray:
    """[OC, IC/g, KH, KW] -> [OC/NR, KH, KW, IC/g, NR]."""
    oc, icg, kh, kw = w_oihw.shape
    return np.ascontiguousarray(w_oihw.reshape(oc // nr, nr, icg, kh, kw).transpose(0, 3, 4, 2, 1))


def conv_packable(oc: int, icg: int, groups: int, nr: int) -> bool:
    """Whether an NR-wide vector of output channels reads contiguous input channels: one group
    (all of it), depthwise (channel c reads channel c), or groups at least NR channels wide."""
    if oc % nr:
        return False
    ocg = oc // groups
    return groups == 1 or (icg == 1 and ocg == 1) or ocg % nr == 0


def conv2d_nhwc_packed(x: te.Tensor, wp: te.Tensor, strides: list[int], pads: list[int],
                       dilations: list[int], groups: int) -> te.Tensor:
    """NHWC convolution; ``pads`` is [top, left, bottom, right] (ONNX order)."""
    n_ = x.shape[0]  # the batch may be symbolic
    h, w_ = (int(d) for d in x.shape[1:3])
    panels, kh_ext, kw_ext, icg, nr = (int(d) for d in wp.shape)
    oc = panels * nr
    ocg = oc // groups
    if any(pads):
        x = topi.nn.pad(x, [0, pads[0], pads[1], 0], [0, pads[2], pads[3], 0], name="pad_temp")
    oh = (h + pads[0] + pads[2] - dilations[0] * (kh_ext - 1) - 1) // strides[0] + 1
    ow = (w_ + pads[1] + pads[3] - dilations[1] * (kw_ext - 1) - 1) // strides[1] + 1
    kh = te.reduce_axis((0, kh_ext), "kh")
    kw = te.reduce_axis((0, kw_ext), "kw")
    ic = te.reduce_axis((0, icg), "ic")

    def body(b: te.Var, y: te.Var, xx: te.Var, c: te.Var) -> te.Tensor:
        channel = ic if groups == 1 else (c // ocg) * icg + ic
        pixel = x[b, y * strides[0] + kh * dilations[0], xx * strides[1] + kw * dilations[1], channel]
        return te.sum(pixel * wp[c // nr, kh, kw, ic, c % nr], axis=[kh, kw, ic])

    return te.compute((n_, oh, ow, oc), body, name="conv2d_nhwc_packed", attrs={PACK_ATTR: nr})
