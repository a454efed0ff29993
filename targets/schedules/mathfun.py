"""Vectorisable exp, erf, tanh and sigmoid for the LLVM targets (x86 and Arm).

LLVM turns ``exp`` and ``erf`` on a vector into one scalar libm call per lane (``expf``,
``erff``), which made GELU the slowest part of a transformer block. These lowerings replace the
float32 calls by polynomial arithmetic that LLVM vectorises; other dtypes keep libm.

Accuracy (float32, checked in tests/targets/test_schedules.py against numpy in float64):
exp within 2 ulp over [-87, 88]; erf within 3e-7 absolute; tanh and sigmoid within 3e-7 absolute.
Importing this module registers them (TVM keeps intrinsic lowerings in a global table).
"""

from __future__ import annotations

from collections.abc import Callable

from tvm import tirx
from tvm.ir import Expr

_LEVEL = 99  # above TVM's own LLVM rules (level 10), so ours are chosen
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4
_LOG2E = 1.44269504088896341
_EXP_MIN = -87.3365447504  # ln(2^-126): below it exp is a denormal or 0
# exp(r) on [-ln2/2, ln2/2], Cephes' expf minimax coefficients (r^2 .. r^7 terms).
_EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)
# erf(x) = x * P(x^2) / Q(x^2) on [-4, 4]: odd numerator, even denominator (a rational minimax fit).
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
          -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
          -1.42647390514189e-02)


def _f(v: float) -> Expr:
    return tirx.const(v, "float32")


def _horner(x: Expr, coeffs: tuple[float, ...]) -> Expr:
    acc = _f(coeffs[0])
    for c in coeffs[1:]:
        acc = acc * x + _f(c)
    return acc


def exp_f32(x: Expr) -> Expr:
    """2^n * exp(r), with n = round(x / ln2) and r = x - n ln2 (two-part ln2 keeps r exact).

    Below the smallest normal's logarithm the result is 0, not the clamped 1.2e-38: a masked
    softmax position (-1e9, -inf) must contribute nothing, and a tiny normal divided by the row's
    sum becomes a denormal, which costs each FMA that reads it a microcode assist (~100 cycles on
    Intel): GPT's causal attention ran 2.3x slower for it."""
    tiny = x < _f(_EXP_MIN)
    x = tirx.max(tirx.min(x, _f(88.3762626647949)), _f(_EXP_MIN))
    n = tirx.floor(x * _f(_LOG2E) + _f(0.5))
    r = x - n * _f(_LN2_HI) - n * _f(_LN2_LO)
    p = (_horner(r, _EXP_P) * r * r) + r + _f(1.0)
    suffix = _lanes_suffix(x)
    bits = (tirx.Cast(f"int32{suffix}", n) + tirx.const(127, "int32")) << tirx.const(23, "int32")
    lanes = int(x.ty.dtype.lanes)
    zero = tirx.Broadcast(_f(0.0), lanes) if lanes > 1 else _f(0.0)
    return tirx.Select(tiny, zero, p * tirx.reinterpret(f"float32{suffix}", bits))


def erf_f32(x: Expr) -> Expr:
    x = tirx.max(tirx.min(x, _f(4.0)), _f(-4.0))
    x2 = x * x
    return x * _horner(x2, _ERF_P) / _horner(x2, _ERF_Q)


def tanh_f32(x: Expr) -> Expr:
    """sign(x) (1 - e) / (1 + e), e = exp(-2|x|): no overflow, 1e-7 absolute near 0."""
    e = exp_f32(_f(-2.0) * tirx.abs(x))
    t = (_f(1.0) - e) / (_f(1.0) + e)
    return tirx.Select(x < _f(0.0), -t, t)


def sigmoid_f32(x: Expr) -> Expr:
    return _f(1.0) / (_f(1.0) + exp_f32(-x))


def _lanes_suffix(x: Expr) -> str:
    """"x8" for an 8-lane vector, "" for a scalar: the intrinsics are lowered after vectorising."""
    lanes = int(x.ty.dtype.lanes)
    return f"x{lanes}" if lanes > 1 else ""


def _lowering(op: str, f32: Callable[[Expr], Expr]) -> Callable[[Expr], Expr]:
    """float32 by polynomial; narrower floats through float32; float64 keeps libm's precision."""

    def lower(call: Expr) -> Expr:
        (x,) = call.args
        dtype, suffix = str(x.ty), _lanes_suffix(x)
        base = dtype.removesuffix(suffix)
        if base == "float32":
            return f32(x)
        if base != "float64":
            return tirx.Cast(dtype, f32(tirx.Cast(f"float32{suffix}", x)))
        if op == "sigmoid":
            one = tirx.const(1.0, dtype)
            return one / (one + tirx.call_pure_extern(dtype, "exp", -x))
        return tirx.call_pure_extern(dtype, op, x)

    return lower


for _name, _fn in (("exp", exp_f32), ("erf", erf_f32), ("tanh", tanh_f32), ("sigmoid", sigmoid_f32)):
    tirx.register_intrin_lowering(f"tirx.{_name}", "llvm", f=_lowering(_name, _fn), level=_LEVEL)
