"""Converters of small ops ONNX added after opset 21 (``compiler.ir.ops.NEWER_OPS``): Swish (24),
TensorScatter (24, the in-place KV-cache write), BitCast (26) and CumProd (26)."""

from __future__ import annotations

import tvm
from tvm import relax, te, tirx
from tvm.relax import op as R

from compiler.ir.types import DType
from targets.lowering.elementwise_more import cumulative
from targets.lowering.registry import Call, converter, norm_axis


@converter("Swish")
def _swish(c: Call) -> relax.Expr:
    x, dt = c.arg(0), c.dtype(0)
    return R.multiply(x, R.sigmoid(R.multiply(x, relax.const(float(c.attr("alpha", 1.0)), dt))))


@converter("BitCast")
def _bitcast(c: Call) -> relax.Expr:
    to = DType.from_onnx(int(c.attr("to"))).numpy_name
    src = c.dtype(0)
    if _bits(src) != _bits(to):
        raise c.fail(f"BitCast from {src} to {to} changes the bit width; both types need the same width")
    if "bool" in (src, to):  # a byte: 0 and 1 keep their value; any nonzero byte reads as true
        return R.astype(c.arg(0), to) if to != "bool" else R.not_equal(c.arg(0), relax.const(0, src))
    return c.bb.emit_te(lambda x: te.compute(x.shape, lambda *i: tirx.reinterpret(to, x(*i)), name="bitcast"),
                        c.arg(0), primfunc_name_hint="bitcast")


def _bits(dtype: str) -> int:
    return 8 if dtype == "bool" else int(tvm.DataType(dtype).bits)  # ONNX stores a bool in a byte


@converter("CumProd")
def _cumprod(c: Call) -> relax.Expr:
    return cumulative(c, R.cumprod)


@converter("TensorScatter")
def _tensor_scatter(c: Call) -> relax.Expr:
    """present[..., write_indices[b] + s (mod max_len if circular), ...] = update[..., s, ...] along
    ``axis``; everything else copies past_cache. Computed as a gather: each cache slot finds the
    update position that writes it, if any."""
    shape = c.static(0)
    rank = len(shape)
    axis = norm_axis(int(c.attr("axis", -2)), rank)
    if axis == 0:
        raise c.fail("axis 0 is the batch axis that write_indices index; use another axis")
    circular = c.attr("mode", "linear") == "circular"
    max_len, seq = shape[axis], c.static(1)[axis]

    def body(past: te.Tensor, upd: te.Tensor, start: te.Tensor | None) -> te.Tensor:
        def slot(*i: tirx.Var) -> tirx.PrimExpr:
            first = tirx.Cast("int64", start[i[0]]) if start is not None else tirx.const(0, "int64")
            pos = tirx.Cast("int64", i[axis]) - first
            if circular:
                pos = tirx.floormod(pos + max_len, max_len)
            inside = tirx.all(pos >= 0, pos < seq)
            src = [*i[:axis], tirx.Cast("int32", tirx.max(tirx.min(pos, seq - 1), 0)), *i[axis + 1:]]
            return tirx.Select(inside, upd(*src), past(*i))

        return te.compute(past.shape, slot, name="tensor_scatter")

    start = c.arg(2) if c.has(2) else None
    return c.bb.emit_te(body, c.arg(0), c.arg(1), start, primfunc_name_hint="tensor_scatter")
