"""Converters of RNN, GRU and LSTM, unrolled over the static sequence length.

Each direction projects the whole input sequence through W once (one matmul), then steps through
time with the recurrent matmul. ``sequence_lens`` masks the steps past each batch entry's length
(its state stops changing and its outputs are zero there); the reverse direction reads each entry's
own valid prefix backwards through a per-entry index, which is its own inverse, so the outputs go
back through the same gather.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tvm import relax
from tvm.relax import op as R

from targets.lowering.elementwise import scalar
from targets.lowering.registry import Call, converter, dims, is_static

Activation = Callable[[relax.Expr], relax.Expr]

# op -> (gates in W/R, default activations per direction)
_OPS: dict[str, tuple[int, tuple[str, ...]]] = {
    "RNN": (1, ("Tanh",)), "GRU": (3, ("Sigmoid", "Tanh")), "LSTM": (4, ("Sigmoid", "Tanh", "Tanh")),
}
# activation -> (default alpha, default beta); None where it takes no such parameter.
_PARAMS: dict[str, tuple[float | None, float | None]] = {
    "relu": (None, None), "tanh": (None, None), "sigmoid": (None, None), "softsign": (None, None),
    "softplus": (None, None), "affine": (1.0, 0.0), "leakyrelu": (0.01, None), "thresholdedrelu": (1.0, None),
    "scaledtanh": (1.0, 1.0), "hardsigmoid": (0.2, 0.5), "elu": (1.0, None),
}


def _text(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _activation(c: Call, name: str, alpha: float | None, beta: float | None) -> Activation:
    dt = c.dtype(0)
    a = scalar(alpha if alpha is not None else 0.0, dt)
    b = scalar(beta if beta is not None else 0.0, dt)
    zero, one = scalar(0, dt), scalar(1, dt)
    table: dict[str, Activation] = {
        "relu": R.nn.relu,
        "tanh": R.tanh,
        "sigmoid": R.sigmoid,
        "softsign": lambda x: R.divide(x, R.add(one, R.abs(x))),
        "softplus": lambda x: R.log(R.add(one, R.exp(x))),
        "affine": lambda x: R.add(R.multiply(a, x), b),
        "leakyrelu": lambda x: R.where(R.less(x, zero), R.multiply(a, x), x),
        "thresholdedrelu": lambda x: R.where(R.greater(x, a), x, zero),
        "scaledtanh": lambda x: R.multiply(a, R.tanh(R.multiply(b, x))),
        "hardsigmoid": lambda x: R.clip(R.add(R.multiply(a, x), b), 0.0, 1.0),
        "elu": lambda x: R.where(R.less(x, zero), R.multiply(a, R.subtract(R.exp(x), one)), x),
    }
    return table[name]


def _activations(c: Call, directions: int) -> list[list[Activation]]:
    """Each direction's activations; alphas and betas are consumed in order by those that take them."""
    defaults = _OPS[c.op][1]
    names = [_text(n) for n in c.attr("activations", [])] or list(defaults) * directions
    if len(names) != len(defaults) * directions:
        raise c.fail(f"activations lists {len(names)} functions; {c.op} needs {len(defaults)} per direction")
    alphas, betas = list(c.attr("activation_alpha", [])), list(c.attr("activation_beta", []))
    funcs = []
    for name in names:
        key = name.lower()
        if key not in _PARAMS:
            raise c.fail(f"activation '{name}' is not one ONNX defines for {c.op}")
        alpha, beta = _PARAMS[key]
        alpha = float(alphas.pop(0)) if alpha is not None and alphas else alpha
        beta = float(betas.pop(0)) if beta is not None and betas else beta
        funcs.append(_activation(c, key, alpha, beta))
    per = len(defaults)
    return [funcs[d * per:(d + 1) * per] for d in range(directions)]


@dataclass
class _Seq:
    """The static sizes and the per-step masking of one layer."""
    steps: int
    batch: int
    hidden: int
    valid: list[relax.Expr] | None  # per step: [B, 1] bool, None when every entry runs all steps
    order: relax.Expr | None  # [T, B] int64: each entry's valid prefix reversed; None when all full


def _sequence(c: Call, steps: int, batch: int, hidden: int) -> _Seq:
    if not c.has(4):
        return _Seq(steps, batch, hidden, None, None)
    known = c.consts[4] if len(c.consts) > 4 else None
    if known is not None and bool(np.all(np.asarray(known) == steps)):
        return _Seq(steps, batch, hidden, None, None)
    lens = c.emit(R.astype(c.arg(4), "int64"))
    row = c.emit(R.reshape(lens, [1, batch]))
    t = relax.const(np.arange(steps, dtype=np.int64).reshape(steps, 1), "int64")
    inside = c.emit(R.less(t, row))  # [T, B]
    valid = [c.emit(R.reshape(R.strided_slice(inside, [0], [s], [s + 1]), [batch, 1])) for s in range(steps)]
    flipped = c.emit(R.subtract(R.subtract(row, relax.const(1, "int64")), t))
    order = c.emit(R.where(inside, flipped, c.emit(R.broadcast_to(t, [steps, batch]))))
    return _Seq(steps, batch, hidden, valid, order)


def _reorder(c: Call, seq: _Seq, x: relax.Expr) -> relax.Expr:
    """``x`` [T, B, K] with each batch entry's valid prefix reversed (and the rest kept)."""
    if seq.order is None:
        return c.emit(R.flip(x, 0))
    k = dims(x)[2]
    index = c.emit(R.broadcast_to(R.expand_dims(seq.order, [2]), [seq.steps, seq.batch, k]))
    return c.emit(R.gather_elements(x, index, 0))


def _step_slice(c: Call, x: relax.Expr, t: int) -> relax.Expr:
    return c.emit(R.squeeze(R.strided_slice(x, [0], [t], [t + 1]), [0]))


def _gates(c: Call, x: relax.Expr, gates: int) -> list[relax.Expr]:
    if gates == 1:
        return [x]
    parts = c.emit(R.split(x, gates, axis=1))
    return [c.emit(relax.TupleGetItem(parts, i)) for i in range(gates)]


def _clip(c: Call, x: relax.Expr) -> relax.Expr:
    limit = c.attr("clip")
    return x if limit is None else c.emit(R.clip(x, -float(limit), float(limit)))


def _keep(c: Call, seq: _Seq, t: int, new: relax.Expr, old: relax.Expr) -> relax.Expr:
    return new if seq.valid is None else c.emit(R.where(seq.valid[t], new, old))


def _direction_input(c: Call, i: int, d: int) -> relax.Expr:
    """Input ``i``'s slice for direction ``d`` (its leading axis dropped)."""
    return c.emit(R.squeeze(R.strided_slice(c.arg(i), [0], [d], [d + 1]), [0]))


@dataclass
class _Direction:
    d: int
    acts: list[Activation]
    xw: relax.Expr  # [T, B, G*H]: the input projection plus both biases (W's and R's)
    r_t: relax.Expr  # [H, G*H]
    rb: relax.Expr | None  # R's bias alone, for GRU's linear_before_reset


def _prepare(c: Call, x: relax.Expr, d: int, acts: list[Activation], gates: int, hidden: int) -> _Direction:
    w_t = c.emit(R.permute_dims(_direction_input(c, 1, d), [1, 0]))
    r_t = c.emit(R.permute_dims(_direction_input(c, 2, d), [1, 0]))
    xw = c.emit(R.matmul(x, w_t))
    rb = None
    if c.has(3):
        bias = _direction_input(c, 3, d)
        wb = c.emit(R.strided_slice(bias, [0], [0], [gates * hidden]))
        rb = c.emit(R.strided_slice(bias, [0], [gates * hidden], [2 * gates * hidden]))
        if c.op == "GRU" and c.attr("linear_before_reset", 0):
            # The hidden gate's R bias goes inside the reset product: keep it out of xw.
            zr = c.emit(R.strided_slice(rb, [0], [0], [2 * hidden]))
            rb_in = c.emit(R.concat([zr, R.zeros(relax.ShapeExpr([hidden]), c.dtype(0))], 0))
            xw = c.emit(R.add(xw, R.add(wb, rb_in)))
        else:
            xw = c.emit(R.add(xw, R.add(wb, rb)))
    return _Direction(d, acts, xw, r_t, rb)


def _initial(c: Call, i: int, d: int, seq: _Seq, layout: int) -> relax.Expr:
    if not c.has(i):
        return R.zeros(relax.ShapeExpr([seq.batch, seq.hidden]), c.dtype(0))
    if layout:  # [B, D, H]
        return c.emit(R.squeeze(R.strided_slice(c.arg(i), [1], [d], [d + 1]), [1]))
    return _direction_input(c, i, d)


def _rnn_cell(c: Call, dr: _Direction, xt: relax.Expr, h: relax.Expr, _: relax.Expr) -> tuple[relax.Expr, ...]:
    pre = _clip(c, c.emit(R.add(xt, R.matmul(h, dr.r_t))))
    return (c.emit(dr.acts[0](pre)),)


def _gru_cell(c: Call, dr: _Direction, xt: relax.Expr, h: relax.Expr, _: relax.Expr) -> tuple[relax.Expr, ...]:
    f, g = dr.acts
    hidden = int(dims(dr.r_t)[0])
    xz, xr, xh = _gates(c, xt, 3)
    rz, rr, rh = _gates(c, dr.r_t, 3)
    z = c.emit(f(_clip(c, c.emit(R.add(xz, R.matmul(h, rz))))))
    r = c.emit(f(_clip(c, c.emit(R.add(xr, R.matmul(h, rr))))))
    if c.attr("linear_before_reset", 0):
        hr = c.emit(R.matmul(h, rh))
        if dr.rb is not None:
            hr = c.emit(R.add(hr, R.strided_slice(dr.rb, [0], [2 * hidden], [3 * hidden])))
        pre = c.emit(R.add(xh, R.multiply(r, hr)))
    else:
        pre = c.emit(R.add(xh, R.matmul(R.multiply(r, h), rh)))
    cand = c.emit(g(_clip(c, pre)))
    one = scalar(1, c.dtype(0))
    return (c.emit(R.add(R.multiply(R.subtract(one, z), cand), R.multiply(z, h))),)


def _lstm_cell(c: Call, dr: _Direction, xt: relax.Expr, h: relax.Expr, cell: relax.Expr) -> tuple[relax.Expr, ...]:
    f, g, hf = dr.acts
    pre = c.emit(R.add(xt, R.matmul(h, dr.r_t)))
    pi, po, pf, pc = _gates(c, pre, 4)
    peep = _peepholes(c, dr.d)
    if peep is not None:
        pi = c.emit(R.add(pi, R.multiply(peep[0], cell)))
        pf = c.emit(R.add(pf, R.multiply(peep[2], cell)))
    i = c.emit(f(_clip(c, pi)))
    forget = c.emit(R.subtract(scalar(1, c.dtype(0)), i)) if c.attr("input_forget", 0) else c.emit(f(_clip(c, pf)))
    new_cell = c.emit(R.add(R.multiply(forget, cell), R.multiply(i, c.emit(g(_clip(c, pc))))))
    if peep is not None:
        po = c.emit(R.add(po, R.multiply(peep[1], new_cell)))
    o = c.emit(f(_clip(c, po)))
    return c.emit(R.multiply(o, c.emit(hf(new_cell)))), new_cell


def _peepholes(c: Call, d: int) -> list[relax.Expr] | None:
    if not c.has(7):
        return None
    p = _direction_input(c, 7, d)
    split = c.emit(R.split(p, 3, axis=0))
    return [c.emit(relax.TupleGetItem(split, i)) for i in range(3)]


_CELLS = {"RNN": _rnn_cell, "GRU": _gru_cell, "LSTM": _lstm_cell}


def _run_direction(c: Call, seq: _Seq, dr: _Direction, reverse: bool, layout: int) -> tuple[relax.Expr, ...]:
    """Y [T, B, H], the last hidden state [B, H] and (LSTM) the last cell state."""
    xw = _reorder(c, seq, dr.xw) if reverse else dr.xw
    h, cell = _initial(c, 5, dr.d, seq, layout), _initial(c, 6, dr.d, seq, layout) if c.op == "LSTM" else None
    zeros = R.zeros(relax.ShapeExpr([seq.batch, seq.hidden]), c.dtype(0))
    ys = []
    for t in range(seq.steps):
        out = _CELLS[c.op](c, dr, _step_slice(c, xw, t), h, cell)
        ys.append(out[0] if seq.valid is None else c.emit(R.where(seq.valid[t], out[0], zeros)))
        h = _keep(c, seq, t, out[0], h)
        if cell is not None:
            cell = _keep(c, seq, t, out[1], cell)
    y = c.emit(R.stack(ys, 0))
    if reverse:
        y = _reorder(c, seq, y)
    return (y, h) if cell is None else (y, h, cell)


@converter(*_OPS)
def _recurrent(c: Call) -> list[relax.Expr]:
    direction = _text(c.attr("direction", "forward"))
    if direction not in ("forward", "reverse", "bidirectional"):
        raise c.fail(f"direction '{direction}' is not forward, reverse or bidirectional")
    layout, gates = int(c.attr("layout", 0)), _OPS[c.op][0]
    x = c.arg(0) if not layout else c.emit(R.permute_dims(c.arg(0), [1, 0, 2]))
    shape = dims(x)
    if not is_static(shape):
        raise c.fail("the sequence length and batch must be numbers to unroll the layer; pass --shape for the input")
    steps, batch = int(shape[0]), int(shape[1])
    hidden = int(c.attr("hidden_size", c.static(2)[2]))
    dirs = 2 if direction == "bidirectional" else 1
    seq = _sequence(c, steps, batch, hidden)
    acts = _activations(c, dirs)
    results = []
    for d in range(dirs):
        dr = _prepare(c, x, d, acts[d], gates, hidden)
        results.append(_run_direction(c, seq, dr, direction == "reverse" or d == 1, layout))
    return _outputs(c, results, layout)


def _outputs(c: Call, results: list[tuple[relax.Expr, ...]], layout: int) -> list[relax.Expr]:
    y = c.emit(R.stack([r[0] for r in results], 1))  # [T, D, B, H]
    states = [c.emit(R.stack([r[k] for r in results], 0)) for k in range(1, len(results[0]))]  # [D, B, H]
    if layout:
        y = c.emit(R.permute_dims(y, [2, 0, 1, 3]))
        states = [c.emit(R.permute_dims(s, [1, 0, 2])) for s in states]
    return [y, *states][:len(c.node.outputs)]
