"""Re-estimating per-channel statistics after pruning (BatchNorm recalibration for folded layers).

Removing input channels shifts the mean and spread of each consumer's output channels. With
BatchNorm folded into the layer, recalibrating BN means: on calibration data, make each consumer's
output channel have the mean and standard deviation it had before pruning, y' = a * (y - m) + m0
with a = s0 / s, folded into the layer's weight and bias. Layers are corrected in graph order, each
measured after the ones before it were corrected. The caller keeps the result only if it scores
better (``prune-channels`` measures both).
"""

from __future__ import annotations

import numpy as np

from compiler.compression import CompressionData
from compiler.ir import Graph, Node
from passes.prune_apply import PASS_NAME

# A channel whose spread is below this is left unscaled (a dead channel has nothing to match).
MIN_STD = 1e-6
MAX_SCALE = 4.0


def channel_stats(data: CompressionData, g: Graph, name: str, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of value ``name`` of ``g`` per channel (on ``axis``) over calibration."""
    total, square, count = 0.0, 0.0, 0
    for batch in data.activations(g, [name]):
        x = np.moveaxis(batch[name].astype(np.float64), axis, 0).reshape(batch[name].shape[axis], -1)
        total, square, count = total + x.sum(1), square + (x ** 2).sum(1), count + x.shape[1]
    mean = np.asarray(total) / count
    return mean, np.sqrt(np.maximum(np.asarray(square) / count - mean ** 2, 0.0))


def recalibrate(data: CompressionData, before: Graph, after: Graph, layers: list[tuple[str, np.ndarray]]) -> int:
    """Correct each layer (output value name, kept output channels) of ``after`` in place, matching the
    statistics that output had in ``before``; returns how many layers were corrected."""
    done = 0
    producers = {n.outputs[0].name: n for n in after.nodes if n.outputs}
    for name, kept in layers:
        node = producers.get(name)
        if node is None or not _correctable(node):
            continue
        axis = 1
        m0, s0 = (a[kept] for a in channel_stats(data, before, name, axis))
        m, s = channel_stats(data, after, name, axis)
        scale = np.where((s > MIN_STD) & (s0 > MIN_STD), np.clip(s0 / np.maximum(s, MIN_STD), 0, MAX_SCALE), 1.0)
        _fold(after, node, scale, m0 - scale * m)
        done += 1
    return done


def _correctable(node: Node) -> bool:
    """A Conv or Gemm with constant weight and bias, whose output channels are on axis 1."""
    if node.op not in ("Conv", "Gemm") or len(node.inputs) < 3:
        return False
    w, b = node.inputs[1], node.inputs[2]
    ok = w is not None and w.const is not None and b is not None and b.const is not None
    return ok and (node.op == "Conv" or (b.const.ndim == 1 and not node.attr("transA", 0)))  # type: ignore[union-attr]


def _fold(g: Graph, node: Node, scale: np.ndarray, shift: np.ndarray) -> None:
    """y' = scale * y + shift per output channel, folded into the weight and bias."""
    w, b = node.inputs[1].const, node.inputs[2].const  # type: ignore[union-attr]  # _correctable checked
    assert w is not None and b is not None
    if node.op == "Conv":
        new_w = w * scale.reshape(-1, *(1,) * (w.ndim - 1))
        new_b = scale * b + shift
    else:
        new_w = w * (scale.reshape(-1, 1) if node.attr("transB", 0) else scale.reshape(1, -1))
        beta = float(node.attr("beta", 1.0))
        new_b = (scale * beta * b + shift) / beta
    for index, array, hint in ((1, new_w, "w"), (2, new_b, "b")):
        fixed = np.ascontiguousarray(array.astype(w.dtype))
        fixed.flags.writeable = False
        old = node.inputs[index]
        node.set_input(index, g.add_constant(f"{old.name if old else hint}_recal", fixed))
    g.remove_unused_constants()
    node.provenance = node.provenance.rewritten(PASS_NAME, "recalibrate")
