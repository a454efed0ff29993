"""A strided convolution over few input channels as a stride-1 one over space-to-depth channels (CUDA).

A network's first convolution (ResNet's 7x7 stride-2 stem over 3 colour channels) reduces over
``kh * kw * 3`` values per output pixel, three contiguous at a time in NHWC. The tensor-core rule gathers that
operand one element at a time, and each element costs its own index arithmetic (divisions by 21, 7 and 3):
on the H200 the stem took 119.7 us of ResNet-18's 0.75 ms at batch 32 in fp16 (2026-12-03), integer-bound, at
63 TFLOP/s where the 3x3 convolutions run at 100-160.

Folding each 2x2 patch of the (padded) input into channels turns a stride-2 ``k x k`` convolution over
``c`` channels into a stride-1 ``ceil(k/2) x ceil(k/2)`` one over ``4 * c'`` channels, where ``c'`` rounds
``c`` up to even so that a patch row is a multiple of 8 fp16 values (16 bytes, one vector load):

    x'[n, i, j, (p, q, ch)] = xpad[n, 2i + p, 2j + q, ch]
    w'[a, b, (p, q, ch), o] = w[o, ch, 2a + p, 2b + q]   (zero where 2a + p >= k or 2b + q >= k)

so that ``y[n, i, j, o] = sum_{a,b} x'[n, i + a, j + b, :] . w'[a, b, :, o]``, the original convolution:
``xpad[2(i + a) + p] = xpad[2i + (2a + p)]`` and ``2a + p`` runs over the kernel's rows. The folded input is
one kernel of its own (``fold_input``; on CUDA a thread stores a 16-byte vector of a folded pixel, ``gpu_fold``),
about as large as the input; the weights are folded here, once. The reduction grows (the stem: 147 -> 256
values) but every operand load is a 16-byte vector.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tvm import relax, te, tirx
from tvm.relax import op as R

from targets.schedules.gpu_fold import FOLD_BLOCK

# Folding pays where the reduction is gathered from few channels and the fold adds little to it: ResNet's 7x7
# stem (147 -> 256 values; H200, 2026-12-03, fp16 batch 32: 120.3 us -> 60.5 us plus 32.0 for the fold kernel
# under dlight's Fallback; with ``gpu_fold`` the model 0.740 -> 0.696 ms, bf16 0.782 -> 0.725). A 3x3
# kernel's reduction more than doubles (27 -> 64): MobileNetV2 at batch 32 measured slower, fp16 0.590 -> 0.612
# ms, bf16 0.858 -> 0.899.
MAX_CHANNELS = 4
MIN_KERNEL = 7


def applies(weight_shape: tuple[int, ...], strides: list[int], dilations: list[int], groups: int) -> bool:
    """A dense stride-2 convolution with a kernel of ``MIN_KERNEL`` or more in both dims over at most
    ``MAX_CHANNELS``."""
    _, channels, kh, kw = weight_shape
    return (groups == 1 and channels <= MAX_CHANNELS and list(strides) == [2, 2] and list(dilations) == [1, 1]
            and kh >= MIN_KERNEL and kw >= MIN_KERNEL)


def folded_channels(channels: int) -> int:
    """Channels of one folded pixel: 4 per input channel, rounded up to even input channels."""
    return 4 * _even(channels)


def _even(channels: int) -> int:
    return channels + channels % 2


def fold_weight(weight: np.ndarray) -> np.ndarray:
    """OIHW weights -> the folded convolution's HWIO weights (module docstring)."""
    out, channels, kh, kw = weight.shape
    even = _even(channels)
    a, b = -(-kh // 2), -(-kw // 2)
    padded = np.zeros((out, even, 2 * a, 2 * b), dtype=weight.dtype)
    padded[:, :channels, :kh, :kw] = weight
    # [o, ch, a, p, b, q] -> [a, b, p, q, ch, o]
    folded = padded.reshape(out, even, a, 2, b, 2).transpose(2, 4, 3, 5, 1, 0)
    return np.ascontiguousarray(folded.reshape(a, b, folded_channels(channels), out))


def fold_input(x: te.Tensor, nchw: bool, kernel: list[int], pads: list[int]) -> te.Tensor:
    """The input ``x`` (NCHW or NHWC, static shape) padded and folded into ``[n, rows, cols, folded_channels]``
    NHWC, with as many rows and columns as the stride-1 convolution over it reads: one TE op, its block named
    ``FOLD_BLOCK`` (the CUDA build schedules it with ``gpu_fold``)."""
    if nchw:
        n, channels, height, width = (int(d) for d in x.shape)
    else:
        n, height, width, channels = (int(d) for d in x.shape)
    out_h = (height + pads[0] + pads[2] - kernel[0]) // 2 + 1
    out_w = (width + pads[1] + pads[3] - kernel[1]) // 2 + 1
    rows, cols = out_h + -(-kernel[0] // 2) - 1, out_w + -(-kernel[1] // 2) - 1
    even = _even(channels)
    zero = tirx.const(0, x.dtype)

    def value(b: Any, i: Any, j: Any, ch: Any) -> Any:
        # ch = (p * 2 + q) * even + c: row 2i + p, column 2j + q of the padded input; rows and columns past the
        # padding only meet zero weights, as does the added channel
        p, q, c = ch // (2 * even), ch // even % 2, ch % even
        y, z = 2 * i + p - pads[0], 2 * j + q - pads[1]
        inside = tirx.all(c < channels, y >= 0, y < height, z >= 0, z < width)
        load = x[b, c, y, z] if nchw else x[b, y, z, c]
        return tirx.if_then_else(inside, load, zero)

    return te.compute((n, rows, cols, folded_channels(channels)), value, name=FOLD_BLOCK)


def conv2d(folded: relax.Expr, folded_weight: relax.Expr) -> Any:
    """The convolution (NHWC in and out) as a stride-1 one over the folded input (``fold_input``) and weights
    (``fold_weight``)."""
    return R.nn.conv2d(folded, folded_weight, strides=[1, 1], padding=[0, 0, 0, 0], data_layout="NHWC",
                       kernel_layout="HWIO")
