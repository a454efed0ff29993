"""Converters of elementwise ops (unary, binary with numpy broadcasting, Where, Clip, Cast...)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tvm import relax
from tvm.relax import op as R

from compiler.ir.types import DType
from targets.lowering.registry import Call, converter


def scalar(value: float, dtype: str) -> relax.Expr:
    """A rank-0 constant of ``dtype``, for arithmetic with a tensor of that dtype."""
    return relax.const(np.asarray(value, dtype=dtype), dtype)


# ---- unary: a plain Relax op each -------------------------------------------------------------
_UNARY: dict[str, Callable[[relax.Expr], relax.Expr]] = {
    "Abs": R.abs, "Neg": R.negative, "Exp": R.exp, "Log": R.log, "Sqrt": R.sqrt,
    "Floor": R.floor, "Ceil": R.ceil, "Erf": R.erf, "Sin": R.sin, "Cos": R.cos,
    "Relu": R.nn.relu, "Sigmoid": R.sigmoid, "Tanh": R.tanh, "Not": R.logical_not,
    "Sign": R.sign, "Round": R.round, "IsNaN": R.isnan,
}


@converter(*_UNARY)
def _unary(c: Call) -> relax.Expr:
    return _UNARY[c.op](c.arg(0))


@converter("Identity")
def _identity(c: Call) -> relax.Expr:
    return c.arg(0)


@converter("Dropout")
def _dropout(c: Call) -> list[relax.Expr]:
    # Dropout at inference is the identity; its optional mask output is all true.
    training = c.has(2) and bool(c.const(2, "training_mode").reshape(-1)[0])
    ratio = float(c.const(1, "ratio").reshape(-1)[0]) if c.has(1) else 0.5
    if training and ratio != 0.0:
        raise c.fail("training_mode=True drops at random; export the model in eval mode")
    if len(c.node.outputs) == 1:
        return [c.arg(0)]
    return [c.arg(0), R.ones(relax.ShapeExpr(c.shape(0)), "bool")]


@converter("Reciprocal")
def _reciprocal(c: Call) -> relax.Expr:
    return R.divide(scalar(1.0, c.dtype(0)), c.arg(0))


@converter("LeakyRelu")
def _leaky_relu(c: Call) -> relax.Expr:
    return R.nn.leakyrelu(c.arg(0), float(c.attr("alpha", 0.01)))


@converter("Elu")
def _elu(c: Call) -> relax.Expr:
    # Elu(x) = x for x > 0, alpha * (exp(x) - 1) otherwise
    x, dt = c.arg(0), c.dtype(0)
    neg = R.multiply(scalar(c.attr("alpha", 1.0), dt), R.subtract(R.exp(x), scalar(1.0, dt)))
    return R.where(R.greater(x, scalar(0.0, dt)), x, neg)


@converter("HardSigmoid")
def _hard_sigmoid(c: Call) -> relax.Expr:
    # max(0, min(1, alpha * x + beta))
    x, dt = c.arg(0), c.dtype(0)
    lin = R.add(R.multiply(x, scalar(c.attr("alpha", 0.2), dt)), scalar(c.attr("beta", 0.5), dt))
    return R.clip(lin, 0.0, 1.0)


@converter("HardSwish")
def _hard_swish(c: Call) -> relax.Expr:
    # x * max(0, min(1, x / 6 + 1 / 2))
    x, dt = c.arg(0), c.dtype(0)
    lin = R.add(R.multiply(x, scalar(1.0 / 6.0, dt)), scalar(0.5, dt))
    return R.multiply(x, R.clip(lin, 0.0, 1.0))


@converter("Gelu")
def _gelu(c: Call) -> relax.Expr:
    approximate = c.attr("approximate", "none")
    return R.nn.gelu_tanh(c.arg(0)) if approximate == "tanh" else R.nn.gelu(c.arg(0))


@converter("Softplus")
def _softplus(c: Call) -> relax.Expr:
    return R.nn.softplus(c.arg(0))


# ---- binary: numpy broadcasting, as in ONNX -----------------------------------------------------
_BINARY: dict[str, Callable[[relax.Expr, relax.Expr], relax.Expr]] = {
    "Add": R.add, "Sub": R.subtract, "Mul": R.multiply,
    "Equal": R.equal, "Less": R.less, "LessOrEqual": R.less_equal, "Greater": R.greater,
    "GreaterOrEqual": R.greater_equal, "And": R.logical_and, "Or": R.logical_or,
    "Xor": R.logical_xor,
}


@converter(*_BINARY)
def _binary(c: Call) -> relax.Expr:
    return _BINARY[c.op](c.arg(0), c.arg(1))


def is_float(dtype: str) -> bool:
    return DType.from_numpy(np.dtype(dtype)).is_float


@converter("Pow")
def _pow(c: Call) -> relax.Expr:
    # ONNX lets the exponent's type differ; the result has the base's type. Relax's power is
    # float-only and same-typed, so integers go through float64 (exact for the usual magnitudes).
    base, exponent, dt = c.arg(0), c.arg(1), c.dtype(0)
    work = dt if is_float(dt) else "float64"
    if dt != work:
        base = c.emit(R.astype(base, work))
    if c.dtype(1) != work:
        exponent = c.emit(R.astype(exponent, work))
    y = R.power(base, exponent)
    return y if work == dt else R.astype(c.emit(y), dt)


@converter("Div")
def _div(c: Call) -> relax.Expr:
    a, b, dt = c.arg(0), c.arg(1), c.dtype(0)
    if is_float(dt):
        return R.divide(a, b)
    if dt.startswith("uint"):
        return R.floor_divide(a, b)
    # ONNX integer division truncates toward zero: |a| // |b| with the sign of a * b.
    q = R.floor_divide(R.abs(a), R.abs(b))
    return R.multiply(q, R.multiply(R.sign(a), R.sign(b)))


@converter("Mod")
def _mod(c: Call) -> relax.Expr:
    a, b = c.arg(0), c.arg(1)
    if is_float(c.dtype(0)) and not c.attr("fmod", 0):
        raise c.fail("float Mod needs fmod=1 in opset 21; set fmod=1 (C fmod) or use integers")
    if c.attr("fmod", 0):
        # fmod: the result takes the sign of the dividend (C fmod); a - trunc(a / b) * b
        return R.subtract(a, R.multiply(R.trunc(R.divide(a, b)), b))
    return R.floor_mod(a, b)  # Python-style: the sign of the divisor


_VARIADIC = {"Max": R.maximum, "Min": R.minimum, "Sum": R.add, "Mean": R.add}


@converter("Max", "Min", "Sum", "Mean")
def _variadic(c: Call) -> relax.Expr:
    # Folded pairwise with numpy broadcasting; Mean divides the sum by the operand count.
    fn = _VARIADIC[c.op]
    args = [a for a in c.args if a is not None]
    acc = args[0]
    for a in args[1:]:
        acc = c.emit(fn(acc, a))
    if c.op == "Mean" and len(args) > 1:
        acc = R.divide(acc, scalar(len(args), c.dtype(0)))
    return acc


@converter("PRelu")
def _prelu(c: Call) -> relax.Expr:
    # PRelu broadcasts slope against x (numpy style), unlike Relax's per-axis prelu.
    x, slope = c.arg(0), c.arg(1)
    return R.where(R.less(x, scalar(0, c.dtype(0))), R.multiply(x, slope), x)


# ---- others ------------------------------------------------------------------------------------
@converter("Where")
def _where(c: Call) -> relax.Expr:
    return R.where(c.arg(0), c.arg(1), c.arg(2))


@converter("Clip")
def _clip(c: Call) -> relax.Expr:
    x = c.arg(0)
    if c.has(1):
        x = c.emit(R.maximum(x, c.arg(1)))
    if c.has(2):
        x = c.emit(R.minimum(x, c.arg(2)))
    return x


@converter("Cast")
def _cast(c: Call) -> relax.Expr:
    return R.astype(c.arg(0), DType.from_onnx(int(c.attr("to"))).numpy_name)


@converter("CastLike")
def _cast_like(c: Call) -> relax.Expr:
    return R.astype(c.arg(0), c.dtype(1))
