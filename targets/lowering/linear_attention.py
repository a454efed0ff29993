"""Converters of LinearAttention and CausalConvWithState (opset 27), the recurrent pieces of
Gated DeltaNet / Mamba style decoders.

LinearAttention is unrolled over its static sequence length (as the recurrent layers are): per token
a few [B, H, dk, dv] elementwise ops and two small batched matmuls, all in float32. Grouped query
heads read their K/V head's state as rows ([B, Hkv, G, dk] @ [B, Hkv, dk, dv]), never a copy.
"""

from __future__ import annotations

import math

from tvm import relax
from tvm.relax import op as R

from targets.lowering.elementwise import scalar
from targets.lowering.registry import Call, converter, dims

_RULES = ("linear", "gated", "delta", "gated_delta")
_F32 = "float32"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _f32(c: Call, x: relax.Expr) -> relax.Expr:
    return x if str(x.ty.dtype) == _F32 else c.emit(R.astype(x, _F32))


@converter("LinearAttention")
def _linear_attention(c: Call) -> list[relax.Expr]:
    rule = _text(c.attr("update_rule", "gated_delta"))
    if rule not in _RULES:
        raise c.fail(f"update_rule '{rule}' is not one of {', '.join(_RULES)}")
    gated, delta = rule in ("gated", "gated_delta"), rule in ("delta", "gated_delta")
    if gated != c.has(4) or delta != c.has(5):
        raise c.fail(f"update_rule '{rule}' {'needs' if gated else 'takes no'} decay (input 4) and "
                     f"{'needs' if delta else 'takes no'} beta (input 5)")
    hq, hkv = int(c.attr("q_num_heads", 0)), int(c.attr("kv_num_heads", 0))
    if hq <= 0 or hkv <= 0 or hq % hkv:
        raise c.fail(f"q_num_heads ({hq}) must be a positive multiple of kv_num_heads ({hkv})")
    if any(c.rank(i) != 3 for i in range(3)):
        raise c.fail("query, key and value must be 3-D [batch, seq, heads * size]")
    b, t, qw = dims(c.arg(0))
    dk, dv = qw // hq, dims(c.arg(2))[2] // hkv
    q = _per_head(c, 0, hq)  # [B, T, H, d]
    k, v = _per_head(c, 1, hkv), _per_head(c, 2, hkv)
    decay = _per_head(c, 4, hkv, allow_one=True) if gated else None
    beta = _per_head(c, 5, hkv, allow_one=True) if delta else None
    state = _f32(c, c.arg(3)) if c.has(3) else c.emit(R.zeros(relax.ShapeExpr([b, hkv, dk, dv]), _F32))
    scale = float(c.attr("scale", 0.0)) or 1.0 / math.sqrt(dk)
    outs = []
    for i in range(t):
        k_t = _step(c, k, i)  # [B, Hkv, dk]
        v_t = c.emit(R.expand_dims(_step(c, v, i), [2]))  # [B, Hkv, 1, dv]
        if decay is not None:  # S *= exp(g_t), g_t per key dim or per head
            state = c.emit(R.multiply(state, R.expand_dims(R.exp(_step(c, decay, i)), [3])))
        if beta is not None:  # v_t <- beta_t (v_t - S^T k_t)
            retrieved = c.emit(R.matmul(R.expand_dims(k_t, [2]), state))  # [B, Hkv, 1, dv]
            v_t = c.emit(R.multiply(R.expand_dims(_step(c, beta, i), [3]), R.subtract(v_t, retrieved)))
        state = c.emit(R.add(state, R.multiply(R.expand_dims(k_t, [3]), v_t)))  # S += k_t v_t^T
        q_t = c.emit(R.reshape(_step(c, q, i), [b, hkv, hq // hkv, dk]))
        o_t = c.emit(R.matmul(q_t, state))  # [B, Hkv, G, dv]
        outs.append(c.emit(R.reshape(R.multiply(o_t, scalar(scale, _F32)), [b, 1, hq * dv])))
    out = outs[0] if len(outs) == 1 else c.emit(R.concat(outs, axis=1))
    dt = c.dtype(0)
    state_dt = c.dtype(3) if c.has(3) else dt
    return [out if dt == _F32 else R.astype(out, dt), state if state_dt == _F32 else R.astype(state, state_dt)]


def _per_head(c: Call, i: int, heads: int, allow_one: bool = False) -> relax.Expr:
    """Input ``i`` [B, T, H * d] as float32 [B, T, H, d]; with ``allow_one``, [B, T, H or 1] gives
    [B, T, H or 1, 1] (one value per head)."""
    b, t, width = dims(c.arg(i))
    if allow_one and (width == heads or width == 1):
        return c.emit(R.reshape(_f32(c, c.arg(i)), [b, t, width, 1]))
    if width % heads:
        raise c.fail(f"input {i}'s last dim {width} is not a multiple of {heads} heads")
    return c.emit(R.reshape(_f32(c, c.arg(i)), [b, t, heads, width // heads]))


def _step(c: Call, x: relax.Expr, i: int) -> relax.Expr:
    """Token ``i`` of [B, T, H, d]: [B, H, d]."""
    b, _, h, d = dims(x)
    return c.emit(R.reshape(R.strided_slice(x, axes=[1], begin=[i], end=[i + 1]), [b, h, d]))


@converter("CausalConvWithState")
def _causal_conv_with_state(c: Call) -> list[relax.Expr]:
    # y[b, ch, t] = sum_j w[ch, 0, j] * padded[b, ch, t + j], padded = past (or zeros) ++ x: one
    # multiply-add of shifted slices per tap, elementwise work that fuses into one loop nest.
    activation = _text(c.attr("activation", "none"))
    if activation not in ("none", "silu", "swish"):
        raise c.fail(f"activation '{activation}' is not one of none, silu, swish")
    if c.rank(0) != 3 or c.rank(1) != 3:
        raise c.fail("input must be [batch, channels, length] and weight [channels, 1, k]")
    b, ch, length = dims(c.arg(0))
    taps = int(dims(c.arg(1))[2])
    dt = c.dtype(0)
    x = _f32(c, c.arg(0))
    past = _f32(c, c.arg(3)) if c.has(3) else c.emit(R.zeros(relax.ShapeExpr([b, ch, taps - 1]), _F32))
    padded = c.emit(R.concat([past, x], axis=2)) if taps > 1 else x
    w = c.emit(R.reshape(_f32(c, c.arg(1)), [ch, taps]))
    y = None
    for j in range(taps):
        tap = c.emit(R.strided_slice(w, axes=[1], begin=[j], end=[j + 1]))  # [C, 1]
        term = R.multiply(R.strided_slice(padded, axes=[2], begin=[j], end=[j + length]), tap)
        y = c.emit(term if y is None else R.add(y, term))
    if c.has(2):
        y = c.emit(R.add(y, R.reshape(_f32(c, c.arg(2)), [ch, 1])))
    if dt != _F32:  # the definition rounds the convolution before the activation
        y = c.emit(R.astype(R.astype(y, dt), _F32))
    if activation != "none":
        y = c.emit(R.multiply(y, R.sigmoid(y)))
    total = length + taps - 1
    present = c.emit(R.strided_slice(padded, axes=[2], begin=[total - (taps - 1)], end=[total]))
    return [y if dt == _F32 else R.astype(y, dt), present if dt == _F32 else R.astype(present, dt)]
