"""Window arithmetic shared by Conv, ConvTranspose and the pools: kernel, strides, dilations, pads.

ONNX pads are ``[x1_begin, x2_begin, ..., x1_end, x2_end, ...]``; Relax's ``padding`` for 1-D, 2-D
and 3-D ops uses the same order, so explicit pads pass through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from targets.lowering.registry import Call


@dataclass(frozen=True, slots=True)
class Window:
    kernel: list[int]
    strides: list[int]
    dilations: list[int]
    pads: list[int]  # begins then ends


def window(c: Call, spatial: list[int], kernel: list[int]) -> Window:
    """The window of a Conv or pool over ``spatial`` input dims, with auto_pad made explicit."""
    n = len(spatial)
    strides = list(c.attr("strides", [1] * n))
    dilations = list(c.attr("dilations", [1] * n))
    auto_pad = c.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = _same_pads(spatial, kernel, strides, dilations, upper=auto_pad == "SAME_UPPER")
    elif auto_pad == "VALID":
        pads = [0] * (2 * n)
    elif auto_pad == "NOTSET":
        pads = list(c.attr("pads", [0] * (2 * n)))
    else:
        raise c.fail(f"auto_pad '{auto_pad}' is not one of NOTSET, SAME_UPPER, SAME_LOWER, VALID")
    return Window(kernel, strides, dilations, pads)


def _same_pads(spatial: list[int], kernel: list[int], strides: list[int], dilations: list[int],
               *, upper: bool) -> list[int]:
    # Output size ceil(in / stride); SAME_UPPER puts the odd extra pad at the end.
    begins, ends = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        begins.append(small if upper else big)
        ends.append(big if upper else small)
    return begins + ends


def transpose_pads(c: Call, spatial: list[int], kernel: list[int], w: Window,
                   output_padding: list[int]) -> list[int]:
    """ConvTranspose pads: explicit, or derived from ``output_shape`` / SAME auto_pad (ONNX spec).

    Grows ``output_padding`` in place where ``output_shape`` exceeds the unpadded output."""
    auto_pad = c.attr("auto_pad", "NOTSET")
    output_shape = c.attr("output_shape")
    if output_shape is None and auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        return w.pads
    n = len(spatial)
    if output_shape is None:
        output_shape = [size * s for size, s in zip(spatial, w.strides, strict=True)]
    output_shape = list(output_shape)[-n:]
    begins, ends = [], []
    for i in range(n):
        full = w.strides[i] * (spatial[i] - 1) + output_padding[i] + (kernel[i] - 1) * w.dilations[i] + 1
        total = full - output_shape[i]
        if total < 0:
            # A larger output than the full one: the extra rows come from output_padding.
            output_padding[i] -= total
            total = 0
        small, big = total // 2, total - total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else big)
        ends.append(big if auto_pad == "SAME_UPPER" else small)
    return begins + ends
