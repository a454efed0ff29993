"""Converters of the less common elementwise ops and of a few small ops built from them.

Bitwise ops and shifts, inverse and hyperbolic trigonometry, the activation functions defined by a
formula (Selu, Celu, ThresholdedRelu, Shrink, Softsign, Mish), IsInf, Hardmax, Einsum, CumSum and
TopK, each per its ONNX opset-21 definition.

Tan and the inverse functions stay a Relax op each: on the LLVM targets they become one scalar
libm call per element (``sincosf``, ``asinf``, ``acosf``, ``atanf``, ``asinhf``, ``acoshf``; Atanh
and Mish ``logf``), unlike exp/erf/tanh, which ``schedules.mathfun`` vectorises. These ops are rare
in models; correctness comes first. Sinh and Cosh are built from exp (see below).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tvm import relax, tirx
from tvm.relax import op as R

from targets.lowering.elementwise import is_float, scalar
from targets.lowering.registry import Call, converter, norm_axis

# ---- one Relax op each -------------------------------------------------------------------------
_UNARY: dict[str, Callable[[relax.Expr], relax.Expr]] = {
    "Tan": R.tan, "Asin": R.asin, "Acos": R.acos, "Atan": R.atan,
    "Asinh": R.asinh, "Acosh": R.acosh, "Atanh": R.atanh, "BitwiseNot": R.bitwise_not,
}
_BINARY: dict[str, Callable[[relax.Expr, relax.Expr], relax.Expr]] = {
    "BitwiseAnd": R.bitwise_and, "BitwiseOr": R.bitwise_or, "BitwiseXor": R.bitwise_xor,
}


@converter(*_UNARY)
def _unary(c: Call) -> relax.Expr:
    return _UNARY[c.op](c.arg(0))


@converter(*_BINARY)
def _binary(c: Call) -> relax.Expr:
    return _BINARY[c.op](c.arg(0), c.arg(1))


# sinh and cosh through exp: TVM's LLVM code generator has no lowering of tirx.sinh/cosh once a
# kernel is vectorised (x86 builds failed with "unknown intrinsic"), and exp is vectorised by
# schedules.mathfun. Near 0, sinh's difference of exponentials cancels: there a series is exact.
_SINH_SERIES_BELOW = 0.5  # |x|^15 / 15! < 1e-16 relative there; above, the difference loses < 2 ulp


@converter("Cosh")
def _cosh(c: Call) -> relax.Expr:
    x, dt = c.arg(0), c.dtype(0)
    half = scalar(0.5, dt)
    return R.add(R.multiply(half, R.exp(x)), R.multiply(half, R.exp(R.negative(x))))


@converter("Sinh")
def _sinh(c: Call) -> relax.Expr:
    x, dt = c.arg(0), c.dtype(0)
    half = scalar(0.5, dt)
    far = c.emit(R.subtract(R.multiply(half, R.exp(x)), R.multiply(half, R.exp(R.negative(x)))))
    # x (1 + x^2/(2*3) (1 + x^2/(4*5) (... (1 + x^2/(14*15))))): the odd Taylor terms up to x^15
    x2 = c.emit(R.multiply(x, x))
    acc: relax.Expr = scalar(1.0, dt)
    for k in range(14, 0, -2):
        acc = c.emit(R.add(scalar(1.0, dt), R.multiply(R.divide(x2, scalar(k * (k + 1), dt)), acc)))
    near = c.emit(R.multiply(x, acc))
    return R.where(R.less(R.abs(x), scalar(_SINH_SERIES_BELOW, dt)), near, far)


@converter("BitShift")
def _bit_shift(c: Call) -> relax.Expr:
    # A shift by a negative amount or by the width or more gives what the sign fill alone gives:
    # -1 for a right shift of a negative number, else 0 (ONNX opset 28; opset 21 leaves it open).
    # The right shift of a signed type is arithmetic, of an unsigned one logical.
    direction = c.attr("direction")
    if direction not in ("LEFT", "RIGHT"):
        raise c.fail(f"direction must be 'LEFT' or 'RIGHT', got {direction!r}")
    x, y, dt = c.arg(0), c.arg(1), c.dtype(0)
    bits = np.dtype(dt).itemsize * 8
    valid = c.emit(R.less(y, scalar(bits, c.dtype(1))))
    if not c.dtype(1).startswith("uint"):
        valid = c.emit(R.logical_and(valid, R.greater_equal(y, scalar(0, c.dtype(1)))))
    safe_y = c.emit(R.where(valid, y, scalar(0, c.dtype(1))))
    shift = R.left_shift if direction == "LEFT" else R.right_shift
    shifted = c.emit(shift(x, safe_y))
    fill: relax.Expr = scalar(0, dt)
    if direction == "RIGHT" and not dt.startswith("uint"):
        fill = c.emit(R.where(R.less(x, scalar(0, dt)), scalar(-1, dt), scalar(0, dt)))
    return R.where(valid, shifted, fill)


# ---- activations defined by a formula ----------------------------------------------------------
@converter("Selu")
def _selu(c: Call) -> relax.Expr:
    # gamma * (x if x > 0 else alpha * (exp(x) - 1))
    x, dt = c.arg(0), c.dtype(0)
    alpha, gamma = c.attr("alpha", 1.67326319217681884765625), c.attr("gamma", 1.05070102214813232421875)
    neg = c.emit(R.multiply(scalar(alpha, dt), R.subtract(R.exp(x), scalar(1.0, dt))))
    return R.multiply(scalar(gamma, dt), R.where(R.greater(x, scalar(0.0, dt)), x, neg))


@converter("Celu")
def _celu(c: Call) -> relax.Expr:
    # max(0, x) + min(0, alpha * (exp(x / alpha) - 1))
    x, dt = c.arg(0), c.dtype(0)
    alpha = scalar(c.attr("alpha", 1.0), dt)
    neg = c.emit(R.multiply(alpha, R.subtract(R.exp(R.divide(x, alpha)), scalar(1.0, dt))))
    return R.add(R.maximum(x, scalar(0.0, dt)), R.minimum(neg, scalar(0.0, dt)))


@converter("ThresholdedRelu")
def _thresholded_relu(c: Call) -> relax.Expr:
    x, dt = c.arg(0), c.dtype(0)
    return R.where(R.greater(x, scalar(c.attr("alpha", 1.0), dt)), x, scalar(0.0, dt))


@converter("Shrink")
def _shrink(c: Call) -> relax.Expr:
    # x + bias if x < -lambd; x - bias if x > lambd; else 0. Integer inputs compare in float64, so
    # that a fractional lambd is not truncated.
    x, dt = c.arg(0), c.dtype(0)
    lambd, bias = float(c.attr("lambd", 0.5)), float(c.attr("bias", 0.0))
    cmp_dt = dt if is_float(dt) else "float64"
    xc = x if cmp_dt == dt else c.emit(R.astype(x, cmp_dt))
    low = R.add(xc, scalar(bias, cmp_dt))
    high = R.subtract(xc, scalar(bias, cmp_dt))
    y = R.where(R.less(xc, scalar(-lambd, cmp_dt)), low,
                R.where(R.greater(xc, scalar(lambd, cmp_dt)), high, scalar(0.0, cmp_dt)))
    return y if cmp_dt == dt else R.astype(c.emit(y), dt)


@converter("Softsign")
def _softsign(c: Call) -> relax.Expr:
    x, dt = c.arg(0), c.dtype(0)
    return R.divide(x, R.add(scalar(1.0, dt), R.abs(x)))


@converter("Mish")
def _mish(c: Call) -> relax.Expr:
    # x * tanh(softplus(x)), softplus(x) = log(1 + exp(x))
    x = c.arg(0)
    return R.multiply(x, R.tanh(c.emit(R.nn.softplus(x))))


@converter("IsInf")
def _is_inf(c: Call) -> relax.Expr:
    x, dt = c.arg(0), c.dtype(0)
    positive, negative = bool(c.attr("detect_positive", 1)), bool(c.attr("detect_negative", 1))
    if not is_float(dt) or not (positive or negative):
        return R.zeros(relax.ShapeExpr(c.shape(0)), "bool")  # no integer is infinite
    inf = c.emit(R.isinf(x))
    if positive and negative:
        return inf
    sign = R.greater(x, scalar(0.0, dt)) if positive else R.less(x, scalar(0.0, dt))
    return R.logical_and(inf, sign)


# ---- ops along an axis ---------------------------------------------------------------------------
@converter("Hardmax")
def _hardmax(c: Call) -> relax.Expr:
    # 1 at the first maximum along axis, 0 elsewhere: a one-hot of argmax (which picks the first).
    rank, dt = c.rank(0), c.dtype(0)
    axis = norm_axis(int(c.attr("axis", -1)), rank)
    depth = c.shape(0)[axis]
    if not isinstance(depth, int):
        raise c.fail(f"the size of axis {axis} is symbolic; pass --shape name=... to fix it")
    index = c.emit(R.argmax(c.arg(0), axis=axis, keepdims=False))
    return R.one_hot(index, tirx.const(1, dt), tirx.const(0, dt), depth, axis)


def cumulative(c: Call, scan: Callable[..., relax.Expr]) -> relax.Expr:
    """CumSum and CumProd: ``scan`` (``R.cumsum``, ``R.cumprod``) along the axis that constant input 1
    holds; ``reverse`` is a flip before and after the scan, ``exclusive`` the scan's own."""
    axis_value = c.ints(1, "axis")
    if len(axis_value) != 1:
        raise c.fail(f"axis must hold one value, got {axis_value}")
    axis = norm_axis(axis_value[0], c.rank(0))
    reverse = bool(c.attr("reverse", 0))
    x = c.emit(R.flip(c.arg(0), axis)) if reverse else c.arg(0)
    y = scan(x, axis=axis, dtype=c.dtype(0), exclusive=bool(c.attr("exclusive", 0)))
    return R.flip(c.emit(y), axis) if reverse else y


@converter("CumSum")
def _cumsum(c: Call) -> relax.Expr:
    return cumulative(c, R.cumsum)


@converter("TopK")
def _topk(c: Call) -> list[relax.Expr]:
    k = c.ints(1, "K")
    if len(k) != 1 or k[0] < 0:
        raise c.fail(f"K must be one non-negative number, got {k}")
    axis = norm_axis(int(c.attr("axis", -1)), c.rank(0))
    largest = bool(c.attr("largest", 1))
    x, dt = c.arg(0), c.dtype(0)
    # TVM's topk sorts signed and float types only: unsigned ones go through int64 in the same
    # order (uint64 with its top bit flipped, which maps 0..2^64-1 monotonically onto int64).
    work = "int64" if dt.startswith("uint") else dt
    if dt == "uint64":
        x = c.emit(R.bitwise_xor(R.astype(x, "int64"), scalar(np.iinfo(np.int64).min, "int64")))
    elif work != dt:
        x = c.emit(R.astype(x, work))
    # sorted=0 leaves the order unspecified; returning it sorted is one valid order.
    both = c.emit(R.topk(x, k[0], axis, "both", largest, "int64"))
    values = c.emit(relax.TupleGetItem(both, 0))
    if dt == "uint64":
        values = c.emit(R.bitwise_xor(values, scalar(np.iinfo(np.int64).min, "int64")))
    if work != dt:
        values = c.emit(R.astype(values, dt))
    return [values, c.emit(relax.TupleGetItem(both, 1))]


# ---- Einsum ------------------------------------------------------------------------------------
@converter("Einsum")
def _einsum(c: Call) -> relax.Expr:
    equation = str(c.attr("equation")).replace(" ", "")
    operands = [a for a in c.args if a is not None]
    return R.einsum(operands, equation)

