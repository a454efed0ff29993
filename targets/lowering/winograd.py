"""Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions, NHWC, opt-in (``effarch compile --winograd``).

A 3x3 convolution computes each 2x2 block of outputs from a 4x4 patch of the input with 16
multiplications per input channel instead of 36 (Lavin and Gray's minimal filtering):

    Y = A^T [ (G g G^T) * (B^T d B) ] A

The weight transform ``U = G g G^T`` is done once, in numpy, at compile time. At run time three
stages follow, each a block of one kernel:

- ``winograd_input``: ``V[ab, p, c] = (B^T d_p B)[a, b]`` for every 2x2 output tile ``p``;
- ``winograd_gemm``: 16 independent GEMMs ``M[ab] = V[ab] @ U[ab]`` (tiles x channels), with ``U``
  packed in the panels the contraction register tile reads (``[16, K/NR, C, NR]``);
- ``winograd_output``: ``Y = A^T M A`` per tile, the epilogue (bias, activation) fused after it.

Each output takes fewer multiplications but more memory traffic (V and M are 4x the input and
output), and the transforms add and subtract values of different sizes, so the error against
direct convolution is larger (measured in tests/targets/test_winograd.py).
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx, topi

from targets.schedules.contraction import PACK_ATTR
from targets.schedules.winograd import WINOGRAD_ATTR  # the rule finds the three stages by it

# F(2x2, 3x3): B^T (4x4), G (4x3), A^T (2x4).
BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)
M_OUT, ALPHA = 2, 4  # outputs per tile side, input patch side


def applies(weight_shape: tuple[int, ...], strides: list[int], dilations: list[int], groups: int,
            nr: int) -> bool:
    """A dense (one group) 3x3 convolution with stride and dilation 1, whose output channels fill
    whole panels of ``nr``."""
    oc, _, kh, kw = weight_shape
    return (kh, kw) == (3, 3) and groups == 1 and list(strides) == [1, 1] and list(dilations) == [1, 1] \
        and nr > 0 and oc % nr == 0


def transform_weights(w_oihw: np.ndarray, nr: int) -> np.ndarray:
    """[OC, IC, 3, 3] -> U packed as [16, OC/NR, IC, NR] (U = G g G^T, computed in float64)."""
    oc, ic = w_oihw.shape[:2]
    u = np.einsum("ai,ocij,bj->abco", G, w_oihw.astype(np.float64), G)  # [4, 4, IC, OC]
    u = u.reshape(ALPHA * ALPHA, ic, oc // nr, nr).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(u.astype(w_oihw.dtype))


def _combine(coeffs: np.ndarray, term: object) -> tirx.PrimExpr:
    """sum over (i, j) of coeffs[i, j] * term(i, j), skipping zeros and writing +-1 as add/sub."""
    out = None
    for (i, j), c in np.ndenumerate(coeffs):
        if c == 0:
            continue
        t = term(i, j)  # type: ignore[operator]
        if c == -1:
            out = -t if out is None else out - t
        else:
            t = t if c == 1 else t * tirx.const(float(c), t.dtype)
            out = t if out is None else out + t
    assert out is not None
    return out


def _select(index: tirx.PrimExpr, cases: list[tirx.PrimExpr]) -> tirx.PrimExpr:
    """cases[index]: a chain of Selects that folds away once ``index`` is a constant (unrolled)."""
    out = cases[-1]
    for k in range(len(cases) - 2, -1, -1):
        out = tirx.Select(index == k, cases[k], out)
    return out


def conv2d_nhwc_winograd(x: te.Tensor, up: te.Tensor, pads: list[int]) -> te.Tensor:
    """NHWC 3x3 stride-1 convolution of x with U packed by ``transform_weights``;
    ``pads`` is [top, left, bottom, right] (ONNX order)."""
    n, h, w = (int(d) for d in x.shape[:3])
    channels = int(x.shape[3])
    _, panels, _, nr = (int(d) for d in up.shape)
    k_out = panels * nr
    oh, ow = h + pads[0] + pads[2] - 2, w + pads[1] + pads[3] - 2
    th, tw = -(-oh // M_OUT), -(-ow // M_OUT)
    # Pad so that every tile's 4x4 patch lies inside (the extra rows only feed cropped outputs).
    extra_h = M_OUT * th + 2 - (h + pads[0])
    extra_w = M_OUT * tw + 2 - (w + pads[1])
    xp = topi.nn.pad(x, [0, pads[0], pads[1], 0], [0, max(extra_h, 0), max(extra_w, 0), 0], name="pad_temp")
    tiles = n * th * tw

    def patch(p: tirx.PrimExpr, c: tirx.PrimExpr, i: int, j: int) -> tirx.PrimExpr:
        b, t = p // (th * tw), p % (th * tw)
        return xp[b, (t // tw) * M_OUT + i, (t % tw) * M_OUT + j, c]

    def input_transform(ab: tirx.PrimExpr, p: tirx.PrimExpr, c: tirx.PrimExpr) -> tirx.PrimExpr:
        cases = [_combine(np.outer(BT[a], BT[b]), lambda i, j: patch(p, c, i, j))
                 for a in range(ALPHA) for b in range(ALPHA)]
        return _select(ab, cases)

    v = te.compute((ALPHA * ALPHA, tiles, channels), input_transform, name="winograd_input",
                   attrs={WINOGRAD_ATTR: "input"})
    rc = te.reduce_axis((0, channels), "rc")
    m = te.compute((ALPHA * ALPHA, tiles, k_out),
                   lambda ab, p, k: te.sum(v[ab, p, rc] * up[ab, k // nr, rc, k % nr], axis=rc),
                   name="winograd_gemm", attrs={WINOGRAD_ATTR: "gemm", PACK_ATTR: nr})

    def output_transform(b: tirx.PrimExpr, y: tirx.PrimExpr, xx: tirx.PrimExpr, k: tirx.PrimExpr) -> tirx.PrimExpr:
        p = b * (th * tw) + (y // M_OUT) * tw + xx // M_OUT
        cases = [_combine(np.outer(AT[r], AT[s]), lambda a, bb: m[a * ALPHA + bb, p, k])
                 for r in range(M_OUT) for s in range(M_OUT)]
        return _select((y % M_OUT) * M_OUT + xx % M_OUT, cases)

    return te.compute((n, oh, ow, k_out), output_transform, name="winograd_output",
                      attrs={WINOGRAD_ATTR: "output"})
