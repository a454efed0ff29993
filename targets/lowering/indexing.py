"""Converters of index-driven data movement and index-built tensors (opset-21 semantics):
GatherElements, GatherND, ScatterElements, ScatterND, OneHot, EyeLike, ReverseSequence and the
window functions (BlackmanWindow, HammingWindow, HannWindow).

ONNX allows negative indices (counting from the end of the indexed axis); they are made
non-negative here, because TVM's gathers and scatters read them as plain offsets. EyeLike and the
windows depend only on static shapes and constant sizes, so they become constants.
"""

from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.relax import op as R

from targets.lowering.registry import Call, converter, norm_axis

_REDUCTIONS = {"none": "update", "add": "add", "mul": "mul", "max": "max", "min": "min"}


def _out_dtype(c: Call) -> str:
    t = c.node.outputs[0].type
    if t is None:
        raise c.fail("the output's element type is unknown; run shape inference on the model")
    return t.dtype.numpy_name


def _non_negative(c: Call, i: int, dims: relax.Expr) -> relax.Expr:
    """Index input ``i`` with ``dims`` (broadcasting against it) added where it is negative."""
    idx = c.arg(i)
    zero = relax.const(0, c.dtype(i))
    return c.emit(R.where(R.less(idx, zero), R.add(idx, R.astype(dims, c.dtype(i))), idx))


def _dim(c: Call, size: int, dtype: str) -> relax.Expr:
    return relax.const(np.asarray(size, dtype), dtype)


def _reduction(c: Call) -> str:
    reduction = c.attr("reduction", "none")
    if reduction not in _REDUCTIONS:
        raise c.fail(f"reduction '{reduction}' is not one of {', '.join(_REDUCTIONS)}")
    return _REDUCTIONS[reduction]


@converter("GatherElements")
def _gather_elements(c: Call) -> relax.Expr:
    axis = norm_axis(int(c.attr("axis", 0)), c.rank(0))
    idx = _non_negative(c, 1, _dim(c, c.static(0)[axis], c.dtype(1)))
    return R.gather_elements(c.arg(0), idx, axis)


@converter("ScatterElements")
def _scatter_elements(c: Call) -> relax.Expr:
    axis = norm_axis(int(c.attr("axis", 0)), c.rank(0))
    idx = _non_negative(c, 1, _dim(c, c.static(0)[axis], c.dtype(1)))
    return R.scatter_elements(c.arg(0), idx, c.arg(2), axis, _reduction(c))


def _nd_dims(c: Call, batch_dims: int) -> relax.Expr:
    """The sizes of the dims an index tuple of input 1 addresses (its last axis), for wrapping."""
    depth = c.static(1)[-1]
    return relax.const(np.asarray(c.static(0)[batch_dims:batch_dims + depth], c.dtype(1)), c.dtype(1))


@converter("GatherND")
def _gather_nd(c: Call) -> relax.Expr:
    batch_dims = int(c.attr("batch_dims", 0))
    return R.gather_nd(c.arg(0), _non_negative(c, 1, _nd_dims(c, batch_dims)), batch_dims)


@converter("ScatterND")
def _scatter_nd(c: Call) -> relax.Expr:
    return R.scatter_nd(c.arg(0), _non_negative(c, 1, _nd_dims(c, 0)), c.arg(2), _reduction(c))


@converter("OneHot")
def _one_hot(c: Call) -> relax.Expr:
    depth = int(np.asarray(c.const(1, "depth")).reshape(-1)[0])
    rank = c.rank(0) + 1
    axis = norm_axis(int(c.attr("axis", -1)), rank)
    idx = c.arg(0) if c.dtype(0) == "int64" else c.emit(R.astype(c.arg(0), "int64"))
    idx = c.emit(R.where(R.less(idx, relax.const(0, "int64")), R.add(idx, relax.const(depth, "int64")), idx))
    positions = relax.const(np.arange(depth, dtype=np.int64).reshape([depth if d == axis else 1 for d in range(rank)]))
    hot = c.emit(R.equal(R.expand_dims(idx, [axis]), positions))
    values = c.arg(2)
    off = c.emit(R.take(values, relax.const(0, "int64"), 0))
    on = c.emit(R.take(values, relax.const(1, "int64"), 0))
    return R.where(hot, on, off)


@converter("EyeLike")
def _eye_like(c: Call) -> relax.Expr:
    rows, cols = c.static(0)
    eye = np.eye(rows, cols, int(c.attr("k", 0)), dtype=_out_dtype(c))
    return relax.const(eye, str(eye.dtype))


@converter("ReverseSequence")
def _reverse_sequence(c: Call) -> relax.Expr:
    lens = c.arg(1) if c.dtype(1) == "int64" else c.emit(R.astype(c.arg(1), "int64"))
    return R.reverse_sequence(c.arg(0), lens, int(c.attr("time_axis", 0)), int(c.attr("batch_axis", 1)))


# ---- window functions ------------------------------------------------------------------------------
_WINDOWS = {
    # Terms a_k of sum_k (-1)^k a_k cos(2 pi k n / N).
    "HannWindow": (0.5, 0.5),
    "HammingWindow": (25 / 46, 1 - 25 / 46),
    "BlackmanWindow": (0.42, 0.5, 0.08),
}


@converter(*_WINDOWS)
def _window(c: Call) -> relax.Expr:
    size = int(np.asarray(c.const(0, "size")).reshape(-1)[0])
    if size < 1:
        raise c.fail(f"window size {size} must be at least 1")
    span = size if c.attr("periodic", 1) else size - 1
    n = np.arange(size, dtype=np.float64)
    phase = 2 * np.pi * n / span if span else np.zeros_like(n)
    window = sum((-1) ** k * a * np.cos(k * phase) for k, a in enumerate(_WINDOWS[c.op]))
    dtype = _out_dtype(c)
    return relax.const(np.asarray(window).astype(dtype), dtype)
