"""Converter of Attention (the opset-25 form): scaled dot-product attention over 3-D or 4-D Q, K, V.

The two contractions are plain ``relax.op.matmul`` calls on [batch, heads, rows, cols] operands, so
the contraction schedules take them; everything between them (scale, softcap, masks, softmax) runs
in float32 at least (float16/bfloat16 inputs are widened once). Grouped-query attention never
repeats K and V: the query heads sharing one K/V head are folded into that head's rows
([B, Hkv, G * Sq, D]), which is a free reshape because ONNX groups consecutive query heads.

Masks compose additively into one bias broadcast to [B, Hq, Sq, Skv]: ``attn_mask`` (boolean:
False -> -inf; float: added), and the structural constraints (causal, sliding window, padded K/V)
as one boolean "allowed" tensor. A query row whose bias is -inf everywhere attends to nothing and
gives zeros, not NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from tvm import relax
from tvm.relax import op as R

from targets.lowering.elementwise import scalar
from targets.lowering.registry import Call, converter, dims

_PRECISIONS = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16"}  # softmax_precision codes
# 16-bit floats compute in float32, rounded back where ONNX's definition rounds (after each op of
# the decomposition), so results match its reference to the last bit instead of one rounding step.
_NARROW = ("float16", "bfloat16")
NEG_INF = -np.inf


@dataclass
class _Heads:
    """The per-head operands in [batch, heads, seq, head_size] form, and the sizes around them."""

    q: relax.Expr
    k: relax.Expr  # present key: past + new
    v: relax.Expr
    q_heads: int
    kv_heads: int
    sq: int
    skv: int
    past: int  # past sequence length (0 without a cache)


@converter("Attention")
def _attention(c: Call) -> list[relax.Expr]:
    dt = c.dtype(0)
    if dt == "bfloat16":
        # Computed in float32 and rounded where the definition rounds, results still differ from
        # ONNX's reference by one bfloat16 step (its sums accumulate in bfloat16).
        raise c.fail("Attention on bfloat16 is not supported (results are off by a bfloat16 rounding step); "
                     "cast Q, K, V to float16 or float32")
    if c.rank(0) not in (3, 4) or c.rank(1) != c.rank(0) or c.rank(2) != c.rank(0):
        raise c.fail("Q, K and V must all be 3-D or all be 4-D")
    if c.has(4) != c.has(5):
        raise c.fail("past_key and past_value must be given together")
    if c.has(4) and c.has(6):
        raise c.fail("nonpad_kv_seqlen cannot be combined with past_key/past_value")
    h = _heads(c)
    ct = "float32" if dt in _NARROW else dt  # the arithmetic type between matmuls
    scores = _scores(c, h, ct)  # [B, Hq, Sq, Skv]
    softcap = float(c.attr("softcap", 0.0))
    capped = scores
    if softcap > 0:
        capped = _round(c, R.divide(scores, scalar(softcap, ct)), dt)
        capped = _round(c, R.multiply(_round(c, R.tanh(capped), dt), scalar(softcap, ct)), dt)
    bias = _bias(c, h, ct)
    biased = capped if bias is None else _round(c, R.add(capped, bias), dt)
    probs = _softmax(c, biased, bias, dt)
    y = _weighted_values(c, h, _round(c, probs, dt), _widen(c, h.v, ct))
    y = y if ct == dt else c.emit(R.astype(y, dt))
    if c.rank(0) == 3:  # [B, Hq, Sq, Dv] -> [B, Sq, Hq * Dv]
        b, hq, sq, dv = dims(y)
        y = c.emit(R.reshape(R.permute_dims(y, [0, 2, 1, 3]), [b, sq, hq * dv]))
    outs = [y, h.k, h.v]
    if len(c.node.outputs) > 3:
        mode = int(c.attr("qk_matmul_output_mode", 0))
        if mode not in (0, 1, 2, 3):
            raise c.fail(f"qk_matmul_output_mode {mode} is not one of 0, 1, 2, 3")
        qk = [scores, capped, biased, probs][mode]
        outs.append(qk if ct == dt else c.emit(R.astype(qk, dt)))
    return outs


def _heads(c: Call) -> _Heads:
    """Q, K, V as [B, heads, seq, size], with past_key/past_value prepended to K and V."""
    three_d = c.rank(0) == 3
    q_heads, kv_heads = c.attr("q_num_heads"), c.attr("kv_num_heads")
    if three_d and (q_heads is None or kv_heads is None):
        raise c.fail("3-D Q, K, V need the q_num_heads and kv_num_heads attributes")
    q, k, v = (_split_heads(c, i, q_heads if i == 0 else kv_heads) if three_d else c.arg(i) for i in range(3))
    past = 0
    if c.has(4):
        past = int(dims(c.arg(4))[2])
        k = c.emit(R.concat([c.arg(4), k], axis=2))
        v = c.emit(R.concat([c.arg(5), v], axis=2))
    qd, kd = dims(q), dims(k)
    if qd[1] % kd[1]:
        raise c.fail(f"{qd[1]} query heads cannot be grouped over {kd[1]} key/value heads")
    return _Heads(q, k, v, int(qd[1]), int(kd[1]), int(qd[2]), int(kd[2]), past)


def _split_heads(c: Call, i: int, heads: int) -> relax.Expr:
    """[B, S, H * D] -> [B, H, S, D]."""
    b, s, hidden = dims(c.arg(i))
    if hidden % heads:
        raise c.fail(f"input {i}'s hidden size {hidden} is not a multiple of {heads} heads")
    return c.emit(R.permute_dims(R.reshape(c.arg(i), [b, s, heads, hidden // heads]), [0, 2, 1, 3]))


def _widen(c: Call, x: relax.Expr, ct: str) -> relax.Expr:
    return x if str(x.ty.dtype) == ct else c.emit(R.astype(x, ct))


def _grouped(c: Call, h: _Heads, x: relax.Expr) -> relax.Expr:
    """[B, Hq, Sq, n] -> [B, Hkv, G * Sq, n]: the query heads that share a K/V head as its rows."""
    if h.q_heads == h.kv_heads:
        return x
    b, _, sq, n = dims(x)
    return c.emit(R.reshape(x, [b, h.kv_heads, (h.q_heads // h.kv_heads) * sq, n]))


def _per_query_head(c: Call, h: _Heads, x: relax.Expr) -> relax.Expr:
    """The inverse of ``_grouped``: [B, Hkv, G * Sq, n] -> [B, Hq, Sq, n]."""
    if h.q_heads == h.kv_heads:
        return x
    b, _, _, n = dims(x)
    return c.emit(R.reshape(x, [b, h.q_heads, h.sq, n]))


def _scores(c: Call, h: _Heads, ct: str) -> relax.Expr:
    """scale * Q K^T per query head, in ``ct``. 16-bit inputs scale Q and K by sqrt(scale) each,
    as the definition does; wider ones scale only Q (fewer multiplies, same value)."""
    dt = c.dtype(0)
    scale = c.attr("scale")
    scale = 1.0 / math.sqrt(dims(h.q)[-1]) if scale is None else float(scale)
    q, k = _widen(c, h.q, ct), _widen(c, h.k, ct)
    if dt in _NARROW:
        root = float(np.asarray(math.sqrt(scale), dtype=_numpy_type(dt)).astype(np.float32))
        q, k = _round(c, R.multiply(q, scalar(root, ct)), dt), _round(c, R.multiply(k, scalar(root, ct)), dt)
    else:
        q = c.emit(R.multiply(q, scalar(scale, ct)))
    kt = c.emit(R.permute_dims(k, [0, 1, 3, 2]))
    return _round(c, _per_query_head(c, h, c.emit(R.matmul(_grouped(c, h, q), kt))), dt)


def _numpy_type(dt: str) -> np.dtype:
    if dt == "bfloat16":
        import ml_dtypes  # only for bfloat16 models

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dt)


def _round(c: Call, x: relax.Expr, dt: str) -> relax.Expr:
    """``x`` rounded to the 16-bit ``dt`` and widened back to its type; ``x`` itself otherwise."""
    x = x if isinstance(x, relax.Var) else c.emit(x)
    if dt not in _NARROW:
        return x
    return c.emit(R.astype(R.astype(x, dt), str(x.ty.dtype)))


def _weighted_values(c: Call, h: _Heads, probs: relax.Expr, v: relax.Expr) -> relax.Expr:
    return _per_query_head(c, h, c.emit(R.matmul(_grouped(c, h, probs), v)))


def _softmax(c: Call, x: relax.Expr, bias: relax.Expr | None, dt: str) -> relax.Expr:
    """Softmax over the keys in ``softmax_precision`` (default: the input type), zero on rows the
    bias masks completely; the result is in ``x``'s type."""
    code = c.attr("softmax_precision")
    st = dt if code is None else _PRECISIONS.get(int(code), "")
    if not st:
        raise c.fail(f"softmax_precision {code} is not one of {sorted(_PRECISIONS)}")
    ct = str(x.ty.dtype)
    if st in _NARROW:  # by parts, rounding after each step; the sum accumulates in ``st``
        x = _round(c, x, st)
        shifted = _round(c, R.subtract(x, R.max(x, axis=-1, keepdims=True)), st)
        e = _round(c, R.exp(shifted), st)
        total = _round(c, R.sum(e, axis=-1, keepdims=True), st)
        probs = _round(c, R.divide(e, total), st)
    else:
        probs = _widen(c, c.emit(R.nn.softmax(_widen(c, x, st), axis=-1)), ct)
    if bias is None:
        return probs
    # A reduction's identity is the lowest finite value, not -inf: count the open keys instead.
    open_keys = c.emit(R.sum(R.astype(R.not_equal(bias, scalar(NEG_INF, ct)), "int32"), axis=-1, keepdims=True))
    dead = c.emit(R.equal(open_keys, relax.const(0, "int32")))
    return c.emit(R.where(dead, scalar(0.0, ct), probs))


def _bias(c: Call, h: _Heads, ct: str) -> relax.Expr | None:
    """The additive bias: attn_mask plus -inf where causality, the window or padding forbid."""
    mask = _mask_bias(c, h, ct) if c.has(3) else None
    allowed = _allowed(c, h)
    if allowed is None:
        return mask
    structural = c.emit(R.where(allowed, scalar(0.0, ct), scalar(NEG_INF, ct)))
    return structural if mask is None else c.emit(R.add(mask, structural))


def _mask_bias(c: Call, h: _Heads, ct: str) -> relax.Expr:
    """attn_mask as a float bias, its key axis padded to Skv (padding is masked out)."""
    mask = c.arg(3)
    shape = dims(mask)
    boolean = c.dtype(3) == "bool"
    mask = c.emit(R.where(mask, scalar(0.0, ct), scalar(NEG_INF, ct))) if boolean else _widen(c, mask, ct)
    short = h.skv - int(shape[-1])
    if short < 0:
        raise c.fail(f"attn_mask covers {shape[-1]} keys; there are only {h.skv}")
    if short:
        pad = R.broadcast_to(scalar(NEG_INF, ct), relax.ShapeExpr([*shape[:-1], short]))
        mask = c.emit(R.concat([mask, pad], axis=-1))
    return mask


def _allowed(c: Call, h: _Heads) -> relax.Expr | None:
    """Where query i may attend key j under causality, the window and padding: [.., Sq, Skv]."""
    causal = bool(c.attr("is_causal", 0))
    left, right = int(c.attr("left_window_size", -1)), int(c.attr("right_window_size", -1))
    padded = c.has(6)
    if not (causal or left >= 0 or right >= 0 or padded):
        return None
    i = R.reshape(R.arange(0, h.sq, 1, "int64"), [h.sq, 1])
    j = R.reshape(R.arange(0, h.skv, 1, "int64"), [1, h.skv])
    # Queries sit after the keys that precede them: the past cache, or (external cache) the
    # nonpad_kv_seqlen - Sq valid keys before the block, per batch.
    lens = c.emit(R.reshape(c.emit(R.astype(c.arg(6), "int64")), [-1, 1, 1, 1])) if padded else None
    diff = c.emit(R.subtract(R.add(i, relax.const(h.past, "int64")), j))  # query position - key
    if lens is not None:
        diff = c.emit(R.add(diff, R.subtract(lens, relax.const(h.sq, "int64"))))
    conds = []
    if causal:
        conds.append(R.greater_equal(diff, relax.const(0, "int64")))
    if left >= 0:
        conds.append(R.less_equal(diff, relax.const(left, "int64")))
    if right >= 0:
        conds.append(R.greater_equal(diff, relax.const(-right, "int64")))
    if lens is not None:
        conds.append(R.less(j, lens))
    allowed = c.emit(conds[0])
    for cond in conds[1:]:
        allowed = c.emit(R.logical_and(allowed, cond))
    return allowed
