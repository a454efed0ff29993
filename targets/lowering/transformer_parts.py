"""Converters of RMSNormalization and RotaryEmbedding (opset 23), the small pieces of decoder blocks."""

from __future__ import annotations

from tvm import relax
from tvm.relax import op as R

from targets.lowering.elementwise import scalar
from targets.lowering.registry import Call, converter, dims, norm_axis


@converter("RMSNormalization")
def _rms_norm(c: Call) -> relax.Expr:
    # y = x / sqrt(mean(x^2 over axis..rank-1) + epsilon) * scale; stash_type=1 computes the
    # normalisation in float32 and casts back before the scale.
    rank, dt = c.rank(0), c.dtype(0)
    axes = list(range(norm_axis(int(c.attr("axis", -1)), rank), rank))
    ct = "float32" if int(c.attr("stash_type", 1)) == 1 and dt != "float64" else dt
    x = c.arg(0) if ct == dt else c.emit(R.astype(c.arg(0), ct))
    mean_square = c.emit(R.mean(R.multiply(x, x), axes, keepdims=True))
    y = c.emit(R.multiply(x, R.rsqrt(R.add(mean_square, scalar(float(c.attr("epsilon", 1e-5)), ct)))))
    if ct != dt:
        y = c.emit(R.astype(y, dt))
    return R.multiply(y, c.arg(1))


@converter("RotaryEmbedding")
def _rotary_embedding(c: Call) -> relax.Expr:
    # Works on [batch, seq, heads, head_size] (3-D input: [batch, seq, heads * head_size]) or on
    # [batch, heads, seq, head_size] (4-D): the caches broadcast over the heads axis either way.
    shape = c.shape(0)
    if len(shape) == 3:
        heads = int(c.attr("num_heads", 0))
        if heads <= 0:
            raise c.fail("a 3-D input needs the num_heads attribute")
        x = c.emit(R.reshape(c.arg(0), [shape[0], shape[1], heads, shape[2] // heads]))
        heads_axis = 2
    elif len(shape) == 4:
        x, heads_axis = c.arg(0), 1
    else:
        raise c.fail(f"the input must be 3-D or 4-D; got rank {len(shape)}")
    cos, sin = _caches(c, heads_axis)
    head_size = dims(x)[-1]
    rot = int(c.attr("rotary_embedding_dim", 0)) or head_size
    if rot % 2 or rot > head_size:
        raise c.fail(f"rotary_embedding_dim {rot} must be even and at most the head size {head_size}")
    rotated = _rotate(c, _last(c, x, 0, rot), cos, sin, bool(c.attr("interleaved", 0)))
    if rot < head_size:
        rotated = c.emit(R.concat([rotated, _last(c, x, rot, head_size)], axis=-1))
    return R.reshape(rotated, shape) if len(shape) == 3 else rotated


def _caches(c: Call, heads_axis: int) -> tuple[relax.Expr, relax.Expr]:
    """cos and sin per (batch, position), with a unit axis where the input has its heads."""
    out = []
    for i in (1, 2):
        cache = c.arg(i)
        if c.has(3):  # [max_position, rot/2] indexed by position_ids [batch, seq]
            cache = c.emit(R.take(cache, c.arg(3), axis=0))
        elif c.rank(i) != 3:
            raise c.fail(f"without position_ids, input {i} must be [batch, seq, rotary_dim/2]")
        out.append(c.emit(R.expand_dims(cache, [heads_axis])))
    return out[0], out[1]


def _rotate(c: Call, x: relax.Expr, cos: relax.Expr, sin: relax.Expr, interleaved: bool) -> relax.Expr:
    # (x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos); the pairs are the two halves, or neighbours.
    shape = dims(x)
    half = shape[-1] // 2
    if interleaved:
        pairs = c.emit(R.reshape(x, [*shape[:-1], half, 2]))
        x1 = c.emit(R.squeeze(_last(c, pairs, 0, 1), [-1]))
        x2 = c.emit(R.squeeze(_last(c, pairs, 1, 2), [-1]))
    else:
        x1, x2 = _last(c, x, 0, half), _last(c, x, half, 2 * half)
    real = c.emit(R.subtract(R.multiply(cos, x1), R.multiply(sin, x2)))
    imag = c.emit(R.add(R.multiply(sin, x1), R.multiply(cos, x2)))
    if interleaved:
        both = c.emit(R.concat([R.expand_dims(real, [-1]), R.expand_dims(imag, [-1])], axis=-1))
        return c.emit(R.reshape(both, shape))
    return c.emit(R.concat([real, imag], axis=-1))


def _last(c: Call, x: relax.Expr, begin: int, end: int) -> relax.Expr:
    """x[..., begin:end]."""
    return c.emit(R.strided_slice(x, axes=[len(dims(x)) - 1], begin=[begin], end=[end]))

