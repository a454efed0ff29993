"""Converters of reductions (Reduce* with axes as an input, opset 18+) and ArgMax/ArgMin."""

from __future__ import annotations

from collections.abc import Callable

from tvm import relax
from tvm.relax import op as R

from targets.lowering.registry import Call, converter, norm_axis

_REDUCE: dict[str, Callable[..., relax.Expr]] = {
    "ReduceMean": R.mean, "ReduceSum": R.sum, "ReduceMax": R.max, "ReduceMin": R.min,
    "ReduceProd": R.prod,
}


@converter(*_REDUCE)
def _reduce(c: Call) -> relax.Expr:
    rank = c.rank(0)
    axes = [norm_axis(a, rank) for a in c.ints(1, "axes")] if c.has(1) else []
    keepdims = bool(c.attr("keepdims", 1))
    if not axes:
        if c.attr("noop_with_empty_axes", 0):
            return c.arg(0)
        axes = list(range(rank))
    if rank == 0:
        return c.arg(0)
    if any(c.shape(0)[a] == 0 for a in axes):
        raise c.fail("reducing an empty axis is not supported; give the input at least one element")
    x = c.arg(0)
    if c.dtype(0) == "bool":
        # Relax reduces numbers only; on booleans max is any() and min is all(), through uint8.
        x = c.emit(R.astype(x, "uint8"))
        return R.astype(c.emit(_REDUCE[c.op](x, sorted(set(axes)), keepdims=keepdims)), "bool")
    return _REDUCE[c.op](x, sorted(set(axes)), keepdims=keepdims)


@converter("ArgMax", "ArgMin")
def _arg_reduce(c: Call) -> relax.Expr:
    fn = R.argmax if c.op == "ArgMax" else R.argmin
    rank = c.rank(0)
    axis = norm_axis(int(c.attr("axis", 0)), rank)
    keepdims = bool(c.attr("keepdims", 1))
    if not c.attr("select_last_index", 0):
        return fn(c.arg(0), axis, keepdims)
    # The last index of the extreme value: search the flipped axis, then map i -> n - 1 - i.
    flipped = c.emit(R.flip(c.arg(0), axis))
    index = c.emit(fn(flipped, axis, keepdims))
    last = relax.const(c.shape(0)[axis] - 1, "int64")
    return R.subtract(last, index)
