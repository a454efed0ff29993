"""Converters of contractions: MatMul, Gemm, Conv and ConvTranspose (1-D and 2-D)."""

from __future__ import annotations

from tvm import relax
from tvm.relax import op as R

from targets.lowering.elementwise import scalar
from targets.lowering.registry import Call, converter


@converter("MatMul")
def _matmul(c: Call) -> relax.Expr:
    return R.matmul(c.arg(0), c.arg(1))


@converter("Gemm")
def _gemm(c: Call) -> relax.Expr:
    # Y = alpha * A' @ B' + beta * C, with A' = A^T when transA (likewise B), C broadcast to Y.
    a, b, dt = c.arg(0), c.arg(1), c.dtype(0)
    if c.attr("transA", 0):
        a = c.emit(R.permute_dims(a, [1, 0]))
    if c.attr("transB", 0):
        b = c.emit(R.permute_dims(b, [1, 0]))
    y = c.emit(R.matmul(a, b))
    alpha, beta = float(c.attr("alpha", 1.0)), float(c.attr("beta", 1.0))
    if alpha != 1.0:
        y = c.emit(R.multiply(y, scalar(alpha, dt)))
    if not c.has(2) or beta == 0.0:
        return y
    bias = c.arg(2) if beta == 1.0 else c.emit(R.multiply(c.arg(2), scalar(beta, dt)))
    return R.add(y, bias)
