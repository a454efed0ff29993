"""Converters of BatchNormalization (inference), LayerNormalization, Softmax, LogSoftmax and LRN."""

from __future__ import annotations

from tvm import relax
from tvm.relax import op as R

from targets.lowering.elementwise import scalar
from targets.lowering.registry import Call, converter, norm_axis


@converter("BatchNormalization")
def _batch_norm(c: Call) -> relax.Expr:
    # Inference mode: y = (x - mean) * scale / sqrt(var + eps) + bias, per channel (axis 1).
    if c.attr("training_mode", 0):
        raise c.fail("training_mode=1 is not supported; export the model in eval mode")
    rank, dt = c.rank(0), c.dtype(0)
    per_channel = [1, -1] + [1] * (rank - 2)

    def channel(i: int) -> relax.Expr:
        return c.emit(R.reshape(c.arg(i), per_channel))

    inv_std = c.emit(R.rsqrt(R.add(c.arg(4), scalar(c.attr("epsilon", 1e-5), c.dtype(4)))))
    factor = c.emit(R.reshape(c.emit(R.multiply(c.arg(1), inv_std)), per_channel))
    shift = c.emit(R.subtract(channel(2), R.multiply(channel(3), factor)))
    if c.dtype(1) != dt:
        factor, shift = c.emit(R.astype(factor, dt)), c.emit(R.astype(shift, dt))
    return R.add(c.emit(R.multiply(c.arg(0), factor)), shift)


@converter("LRN")
def _lrn(c: Call) -> relax.Expr:
    # y = x / (bias + alpha / size * sum of x^2 over the channels c-floor((size-1)/2) .. c+ceil((size-1)/2))^beta.
    # The windowed sum is an average pool over the channel axis (zero padding counted) times size.
    if c.rank(0) < 3:
        raise c.fail(f"LRN needs an input of rank 3 or more (N, C, ...); got rank {c.rank(0)}")
    size, dt = int(c.attr("size")), c.dtype(0)
    alpha, beta, bias = float(c.attr("alpha", 1e-4)), float(c.attr("beta", 0.75)), float(c.attr("bias", 1.0))
    shape = c.shape(0)
    rest = 1
    for d in shape[2:]:
        rest *= int(d)
    squares = c.emit(R.reshape(c.emit(R.multiply(c.arg(0), c.arg(0))), [shape[0], 1, shape[1], rest]))
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    mean = c.emit(R.nn.avg_pool2d(squares, pool_size=(size, 1), strides=(1, 1), padding=(before, 0, after, 0),
                                  count_include_pad=True))
    scale = c.emit(R.add(scalar(bias, dt), R.multiply(scalar(alpha, dt), R.reshape(mean, shape))))
    return R.divide(c.arg(0), R.power(scale, scalar(beta, dt)))


@converter("LayerNormalization")
def _layer_norm(c: Call) -> relax.Expr | list[relax.Expr]:
    rank = c.rank(0)
    axes = list(range(norm_axis(int(c.attr("axis", -1)), rank), rank))
    eps = float(c.attr("epsilon", 1e-5))
    norm_shape = c.shape(0)[axes[0]:]
    fits = c.shape(1) == norm_shape and (not c.has(2) or c.shape(2) == norm_shape)
    if len(c.node.outputs) == 1 and fits and c.dtype(0) == "float32":
        beta = c.arg(2) if c.has(2) else R.zeros(relax.ShapeExpr(norm_shape), "float32")
        return R.nn.layer_norm(c.arg(0), c.arg(1), beta, axes, eps)
    return _layer_norm_by_parts(c, axes, eps)


def _layer_norm_by_parts(c: Call, axes: list[int], eps: float) -> list[relax.Expr]:
    """Mean and inverse std-dev are outputs too here; statistics in float32 (stash_type=1)."""
    dt = c.dtype(0)
    x = c.arg(0) if dt == "float32" else c.emit(R.astype(c.arg(0), "float32"))
    mean = c.emit(R.mean(x, axes, keepdims=True))
    centred = c.emit(R.subtract(x, mean))
    var = c.emit(R.mean(R.multiply(centred, centred), axes, keepdims=True))
    inv_std = c.emit(R.rsqrt(R.add(var, scalar(eps, "float32"))))
    y = c.emit(R.multiply(centred, inv_std))
    if dt != "float32":
        y = c.emit(R.astype(y, dt))
    y = c.emit(R.multiply(y, c.arg(1)))
    if c.has(2):
        y = c.emit(R.add(y, c.arg(2)))
    return [y, mean, inv_std]


@converter("Softmax")
def _softmax(c: Call) -> relax.Expr:
    return R.nn.softmax(c.arg(0), norm_axis(int(c.attr("axis", -1)), c.rank(0)))


@converter("LogSoftmax")
def _log_softmax(c: Call) -> relax.Expr:
    return R.nn.log_softmax(c.arg(0), norm_axis(int(c.attr("axis", -1)), c.rank(0)))
