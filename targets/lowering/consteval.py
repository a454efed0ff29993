"""A small numpy evaluator for values known at compile time (shape arithmetic, mostly).

Exporters often leave ``Shape -> Gather -> Unsqueeze -> Concat -> Reshape`` chains unfolded. With
static input shapes those values are known while lowering; computing them here lets the shape-like
arguments of Reshape, Expand, Slice... be constants even before any folding pass ran. Only small
results are computed (larger ones are real tensors that Relax should compute), following ONNX
opset-21 semantics for the ops listed in ``_EVAL``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from compiler.ir.core import Node
from compiler.ir.types import DType

# Results with more elements than this are left to Relax; inputs larger than this are not read.
MAX_RESULT_ELEMENTS = 64
MAX_INPUT_ELEMENTS = 4096

Arrays = list[np.ndarray | None]
Shapes = list[tuple[int, ...] | None]
Evaluator = Callable[[Node, Arrays], np.ndarray]


def evaluate(node: Node, consts: Arrays, shapes: Shapes) -> list[np.ndarray] | None:
    """The outputs of ``node`` when they are computable now and small, else None."""
    if node.domain:
        return None
    if node.op == "Constant":
        return [constant_value(node)]  # its payload exists already, whatever its size
    if node.op in ("Shape", "Size") and shapes and shapes[0] is not None:
        return [_shape_op(node, shapes[0])]
    fn = _EVAL.get(node.op)
    if fn is None or len(node.outputs) != 1 or not _all_known_and_small(node, consts):
        return None
    result = np.asarray(fn(node, consts))
    if result.size > MAX_RESULT_ELEMENTS:
        return None
    out_type = node.outputs[0].type
    if out_type is not None and result.dtype != out_type.dtype.numpy:
        result = result.astype(out_type.dtype.numpy)
    return [result]


def _all_known_and_small(node: Node, consts: Arrays) -> bool:
    for v, c in zip(node.inputs, consts, strict=True):
        if v is not None and (c is None or c.size > MAX_INPUT_ELEMENTS):
            return False
    return True


def constant_value(node: Node) -> np.ndarray:
    """The payload of a Constant node from whichever of its value attributes is set."""
    a = node.attrs
    if "value" in a:
        return np.asarray(a["value"])
    if "value_float" in a:
        return np.asarray(a["value_float"], dtype=np.float32)
    if "value_floats" in a:
        return np.asarray(a["value_floats"], dtype=np.float32)
    if "value_int" in a:
        return np.asarray(a["value_int"], dtype=np.int64)
    if "value_ints" in a:
        return np.asarray(a["value_ints"], dtype=np.int64)
    raise ValueError(f"Constant node {node.name} has no value attribute effarch supports")


def _shape_op(node: Node, shape: tuple[int, ...]) -> np.ndarray:
    if node.op == "Size":
        return np.asarray(int(np.prod(shape, dtype=np.int64)), dtype=np.int64)
    rank = len(shape)
    start = _clamp(node.attrs.get("start", 0), rank)
    end = _clamp(node.attrs.get("end", rank), rank)
    return np.asarray(shape[start:end], dtype=np.int64)


def _clamp(i: int, n: int) -> int:
    return min(max(i + n if i < 0 else i, 0), n)


def slice_bounds(start: int, end: int, step: int, dim: int) -> tuple[int, int]:
    """ONNX Slice's clamping: normalised ``(start, end)`` with the same meaning as in a range."""
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        return min(max(start, 0), dim), min(max(end, 0), dim)
    return min(max(start, -1), dim - 1), min(max(end, -1), dim - 1)


def _slice(node: Node, c: Arrays) -> np.ndarray:
    data = c[0]
    assert data is not None
    starts, ends = c[1].reshape(-1), c[2].reshape(-1)  # type: ignore[union-attr]
    axes = c[3].reshape(-1) if len(c) > 3 and c[3] is not None else np.arange(len(starts))
    steps = c[4].reshape(-1) if len(c) > 4 and c[4] is not None else np.ones(len(starts), np.int64)
    index = [slice(None)] * data.ndim
    for s, e, ax, st in zip(starts, ends, axes, steps, strict=True):
        ax = int(ax) + data.ndim if ax < 0 else int(ax)
        lo, hi = slice_bounds(int(s), int(e), int(st), data.shape[ax])
        index[ax] = slice(lo, None if hi < 0 else hi, int(st))
    return data[tuple(index)]


def _axes(node: Node, c: Arrays, i: int) -> list[int]:
    if len(c) > i and c[i] is not None:
        return [int(a) for a in c[i].reshape(-1)]  # type: ignore[union-attr]
    return list(node.attrs.get("axes", []))


def _unsqueeze(node: Node, c: Arrays) -> np.ndarray:
    x = c[0]
    assert x is not None
    axes = _axes(node, c, 1)
    rank = x.ndim + len(axes)
    for ax in sorted(a + rank if a < 0 else a for a in axes):
        x = np.expand_dims(x, ax)
    return x


def _squeeze(node: Node, c: Arrays) -> np.ndarray:
    x = c[0]
    assert x is not None
    axes = _axes(node, c, 1)
    return np.squeeze(x, tuple(axes)) if axes else np.squeeze(x)


def _reshape(node: Node, c: Arrays) -> np.ndarray:
    x, shape = c[0], c[1]
    assert x is not None and shape is not None
    dims = [int(d) for d in shape.reshape(-1)]
    if not node.attrs.get("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _div(_: Node, c: Arrays) -> np.ndarray:
    a, b = c[0], c[1]
    assert a is not None and b is not None
    if np.issubdtype(a.dtype, np.integer):
        # ONNX integer division truncates toward zero, numpy's // floors.
        return (np.abs(a) // np.abs(b) * np.sign(a) * np.sign(b)).astype(a.dtype)
    return a / b


def _range(_: Node, c: Arrays) -> np.ndarray:
    start, limit, delta = (x.reshape(()).item() for x in c if x is not None)
    return np.arange(start, limit, delta).astype(_v(c, 0).dtype)


def _cast(node: Node, c: Arrays) -> np.ndarray:
    x = c[0]
    assert x is not None
    return x.astype(DType.from_onnx(int(node.attrs["to"])).numpy)


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Evaluator:
    return lambda _, c: fn(c[0], c[1])  # type: ignore[arg-type]


def _unary(fn: Callable[[np.ndarray], np.ndarray]) -> Evaluator:
    return lambda _, c: fn(c[0])  # type: ignore[arg-type]


def _v(c: Arrays, i: int) -> np.ndarray:
    """Input ``i``, known (the evaluator runs only when every present input is)."""
    x = c[i]
    assert x is not None
    return x


def _reduce_prod(n: Node, c: Arrays) -> np.ndarray:
    axes = None if len(c) < 2 or c[1] is None else tuple(int(a) for a in c[1].reshape(-1))
    return np.prod(_v(c, 0), axis=axes, keepdims=bool(n.attrs.get("keepdims", 1)))


def _constant_of_shape(n: Node, c: Arrays) -> np.ndarray:
    value = np.asarray(n.attrs.get("value", np.zeros(1, np.float32))).reshape(-1)[0]
    return np.full([int(d) for d in _v(c, 0).reshape(-1)], value)


_EVAL: dict[str, Evaluator] = {
    "Identity": _unary(lambda x: x),
    "Neg": _unary(np.negative),
    "Abs": _unary(np.abs),
    "Not": _unary(np.logical_not),
    "Add": _binary(np.add),
    "Sub": _binary(np.subtract),
    "Mul": _binary(np.multiply),
    "Div": _div,
    "Max": lambda _, c: np.maximum.reduce([x for x in c if x is not None]),
    "Min": lambda _, c: np.minimum.reduce([x for x in c if x is not None]),
    "Equal": _binary(np.equal),
    "Less": _binary(np.less),
    "Greater": _binary(np.greater),
    "And": _binary(np.logical_and),
    "Or": _binary(np.logical_or),
    "Where": lambda _, c: np.asarray(np.where(_v(c, 0), _v(c, 1), _v(c, 2))),
    "Cast": _cast,
    "Gather": lambda n, c: np.take(_v(c, 0), _v(c, 1), axis=n.attrs.get("axis", 0), mode="wrap"),
    "Concat": lambda n, c: np.concatenate([x for x in c if x is not None], axis=n.attrs["axis"]),
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Slice": _slice,
    "Reshape": _reshape,
    "Range": _range,
    "ConstantOfShape": _constant_of_shape,
    "Expand": lambda _, c: _v(c, 0) * np.ones([int(d) for d in _v(c, 1).reshape(-1)], _v(c, 0).dtype),
    "ReduceProd": _reduce_prod,
}
