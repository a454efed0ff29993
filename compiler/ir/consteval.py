"""The one numpy evaluator of IR ops on known inputs, with ONNX opset-21 semantics.

fold-constants (passes/fold_constants.py) folds nodes with it, and lowering
(targets/lowering/consteval.py) computes shape arithmetic with it while it builds Relax, so the two
can never disagree about what a node computes. Where numpy's default differs from ONNX the ONNX
meaning is taken:
- Gather: a negative index counts from the end once; an index outside ``[-dim, dim-1]`` is an
  error (numpy's ``mode="wrap"`` would silently wrap it around).
- Div of integers truncates toward zero (numpy's ``//`` floors: -7 // 2 is -4, ONNX says -3).
- Slice clamps starts and ends as ONNX specifies, for both step signs.

``evaluate_op`` raises ``NotEvaluable`` for ops it has no evaluator for and ``ValueError`` for
inputs ONNX declares invalid; callers treat both as "not known now". Ops whose output can dwarf
their inputs (ConstantOfShape, Expand, Range, Tile, Pad) have their size computed first
(``output_elements``), so a caller's ``max_elements`` refuses a 64 GiB fill before numpy allocates it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np

from compiler.errors import EffarchError
from compiler.ir.core import Node
from compiler.ir.graph import Graph
from compiler.ir.types import MAX_TENSOR_BYTES, DType

Inputs = Sequence[np.ndarray | None]
Evaluator = Callable[[Node, Inputs], np.ndarray]


class NotEvaluable(LookupError):
    """The op has no numpy evaluator here (callers may fall back to another one)."""


def can_evaluate(node: Node) -> bool:
    return not node.domain and node.op in _EVAL


class TooLarge(ValueError):
    """The output would have more elements than the caller allows; nothing was allocated."""


def evaluate_op(node: Node, inputs: Inputs, *, max_elements: int | None = None) -> list[np.ndarray]:
    """The outputs of ``node`` given its input arrays (None for omitted optional inputs)."""
    if not can_evaluate(node):
        raise NotEvaluable(f"no numpy evaluator for {node.qualified_op}")
    if max_elements is not None:
        size = output_elements(node, inputs)
        if size is not None and size > max_elements:
            raise TooLarge(f"{node.op} would make {size} elements, over the {max_elements} allowed")
    return [np.asarray(_EVAL[node.op](node, inputs))]


def output_elements(node: Node, inputs: Inputs) -> int | None:
    """The output's element count for ops that can grow far beyond their inputs, computed from the
    inputs without evaluating; None for other ops, unknown or invalid inputs."""
    grow = _GROWING.get(node.op)
    if node.domain or grow is None:
        return None
    try:
        return max(int(grow(node, inputs)), 0)
    except (IndexError, TypeError, ValueError):  # missing or malformed inputs: evaluating reports them
        return None


def check_tensor_size(node: Node, elements: int | None) -> None:
    """Refuse a node whose output would exceed ``MAX_TENSOR_BYTES``: no machine effarch targets could
    hold it, and TVM would fail late and obscurely (or the run would exhaust memory)."""
    out = node.outputs[0].type if node.outputs else None
    nbytes = (elements or 0) * (out.dtype.numpy.itemsize if out is not None else 1)
    if nbytes > MAX_TENSOR_BYTES:
        raise EffarchError(f"node '{node.name or node.op}' ({node.op}) would make a tensor of {elements} "
                           f"elements ({nbytes / 2**30:.0f} GiB), over effarch's {MAX_TENSOR_BYTES >> 30} GiB "
                           f"per tensor; check the shape the model gives it")


def check_sizes(graph: Graph) -> None:
    """``check_tensor_size`` for every node of ``graph`` before it is lowered: declared output types,
    and the outputs of growing ops whose inputs are constants (types inference could not know)."""
    for node in graph.nodes:
        declared = [v.type.numel() for v in node.outputs if v.type is not None]
        computed = output_elements(node, [None if v is None else v.const for v in node.inputs])
        check_tensor_size(node, max([d for d in declared if d is not None] + [computed or 0]))


def _expand_size(_: Node, ins: Inputs) -> int:
    return math.prod(np.broadcast_shapes(_v(ins, 0).shape, tuple(_ints(_v(ins, 1)))))


def _range_size(_: Node, ins: Inputs) -> int:
    start, limit, delta = (float(_v(ins, i).item()) for i in range(3))
    return math.ceil((limit - start) / delta) if delta else 0


def _tile_size(_: Node, ins: Inputs) -> int:
    return math.prod(d * r for d, r in zip(_v(ins, 0).shape, _ints(_v(ins, 1)), strict=True))


def _pad_size(_: Node, ins: Inputs) -> int:
    data, pads, axes_in = _v(ins, 0), _ints(_v(ins, 1)), _opt(ins, 3)
    axes = _ints(axes_in) if axes_in is not None else list(range(data.ndim))
    shape = list(data.shape)
    for k, axis in enumerate(axes):
        shape[axis] += pads[k] + pads[k + len(axes)]
    return math.prod(shape)


_GROWING: dict[str, Callable[[Node, Inputs], int]] = {
    "ConstantOfShape": lambda _, ins: math.prod(_ints(_v(ins, 0))),
    "Expand": _expand_size, "Range": _range_size, "Tile": _tile_size, "Pad": _pad_size,
}


def constant_value(node: Node) -> np.ndarray:
    """The payload of a Constant node from whichever of its value attributes is set."""
    a = node.attrs
    if "value" in a:
        return np.asarray(a["value"])
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                       ("value_ints", np.int64)):
        if key in a:
            return np.asarray(a[key], dtype=dtype)
    raise ValueError(f"Constant node {node.name} has no value attribute effarch supports")


def shape_op(node: Node, shape: Sequence[int]) -> np.ndarray:
    """Shape (with ONNX's clamped start/end) or Size of a static shape."""
    if node.op == "Size":
        return np.asarray(math.prod(shape), dtype=np.int64)
    rank = len(shape)
    start = _clamp(int(node.attrs.get("start", 0)), rank)
    end = _clamp(int(node.attrs.get("end", rank)), rank)
    return np.asarray(list(shape[start:end]), dtype=np.int64)


def _clamp(i: int, n: int) -> int:
    return min(max(i + n if i < 0 else i, 0), n)


def slice_bounds(start: int, end: int, step: int, dim: int) -> tuple[int, int]:
    """ONNX Slice's clamping: normalised ``(start, end)`` with the same meaning as in a range."""
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        return min(max(start, 0), dim), min(max(end, 0), dim)
    # Stepping backwards, a start before the first element is the first element (ONNX clamps
    # starts to [0, dim - 1]); only an end may be -1, "past the first element".
    return min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)


# ---- evaluators --------------------------------------------------------------------------------
def _v(ins: Inputs, i: int) -> np.ndarray:
    a = ins[i] if i < len(ins) else None
    if a is None:
        raise ValueError(f"input {i} is missing")
    return a


def _opt(ins: Inputs, i: int) -> np.ndarray | None:
    return ins[i] if i < len(ins) else None


def _ints(a: np.ndarray) -> list[int]:
    return [int(x) for x in np.asarray(a).reshape(-1)]


def _unary(fn: Callable[[np.ndarray], np.ndarray]) -> Evaluator:
    return lambda _, ins: fn(_v(ins, 0))


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Evaluator:
    return lambda _, ins: fn(_v(ins, 0), _v(ins, 1))


def _variadic(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Evaluator:
    return lambda _, ins: functools.reduce(fn, [a for a in ins if a is not None])


def _div(_: Node, ins: Inputs) -> np.ndarray:
    a, b = _v(ins, 0), _v(ins, 1)
    if a.dtype.kind in "iu":
        # ONNX (and onnxruntime) truncate toward zero; numpy's // floors.
        quotient = np.abs(a) // np.abs(b) * np.sign(a) * np.sign(b)
        return np.asarray(quotient).astype(a.dtype)
    return np.divide(a, b)


def _gather(node: Node, ins: Inputs) -> np.ndarray:
    data, indices = _v(ins, 0), _v(ins, 1)
    axis = int(node.attrs.get("axis", 0))
    dim = data.shape[axis]
    if indices.size and (indices.min() < -dim or indices.max() >= dim):
        raise ValueError(f"Gather index outside [-{dim}, {dim - 1}] on axis {axis}")
    return np.take(data, indices, axis=axis)


def _slice(_: Node, ins: Inputs) -> np.ndarray:
    data, starts, ends = _v(ins, 0), _ints(_v(ins, 1)), _ints(_v(ins, 2))
    axes_in, steps_in = _opt(ins, 3), _opt(ins, 4)
    axes = _ints(axes_in) if axes_in is not None else list(range(len(starts)))
    steps = _ints(steps_in) if steps_in is not None else [1] * len(starts)
    index = [slice(None)] * data.ndim
    for s, e, ax, st in zip(starts, ends, axes, steps, strict=True):
        ax = ax + data.ndim if ax < 0 else ax
        lo, hi = slice_bounds(s, e, st, data.shape[ax])
        index[ax] = slice(lo, None if hi < 0 else hi, st)  # hi == -1 with a negative step: through index 0
    return data[tuple(index)]


def _axes(node: Node, ins: Inputs) -> list[int]:
    """Axes from the second input (opset 13+), else from the attribute older exporters wrote."""
    given = _opt(ins, 1)
    return _ints(given) if given is not None else list(node.attrs.get("axes", []))


def _unsqueeze(node: Node, ins: Inputs) -> np.ndarray:
    return np.expand_dims(_v(ins, 0), tuple(_axes(node, ins)))


def _squeeze(node: Node, ins: Inputs) -> np.ndarray:
    axes = _axes(node, ins)
    return np.squeeze(_v(ins, 0), tuple(axes) if axes else None)


def _reshape(node: Node, ins: Inputs) -> np.ndarray:
    data, dims = _v(ins, 0), _ints(_v(ins, 1))
    if not node.attrs.get("allowzero", 0):
        dims = [data.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return data.reshape(dims)


def _transpose(node: Node, ins: Inputs) -> np.ndarray:
    data = _v(ins, 0)
    return np.transpose(data, node.attrs.get("perm") or list(reversed(range(data.ndim))))


def _flatten(node: Node, ins: Inputs) -> np.ndarray:
    data = _v(ins, 0)
    axis = int(node.attrs.get("axis", 1))
    axis = axis + data.ndim if axis < 0 else axis
    return data.reshape(math.prod(data.shape[:axis]), math.prod(data.shape[axis:]))


def _constant_of_shape(node: Node, ins: Inputs) -> np.ndarray:
    value = node.attrs.get("value")
    fill = np.zeros(1, np.float32) if value is None else np.asarray(value)
    return np.full(_ints(_v(ins, 0)), fill.reshape(-1)[0], dtype=fill.dtype)


def _expand(_: Node, ins: Inputs) -> np.ndarray:
    data = _v(ins, 0)
    return np.array(np.broadcast_to(data, np.broadcast_shapes(data.shape, tuple(_ints(_v(ins, 1))))))


def _range(_: Node, ins: Inputs) -> np.ndarray:
    start, limit, delta = (_v(ins, i) for i in range(3))
    return np.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)


def _cast(node: Node, ins: Inputs) -> np.ndarray:
    return _v(ins, 0).astype(DType.from_onnx(int(node.attrs["to"])).numpy)


def _reduce_prod(node: Node, ins: Inputs) -> np.ndarray:
    axes = _opt(ins, 1)
    if axes is None or axes.size == 0:  # no axes: every axis, unless noop_with_empty_axes
        if node.attrs.get("noop_with_empty_axes", 0):
            return _v(ins, 0)
        return np.prod(_v(ins, 0), keepdims=bool(node.attrs.get("keepdims", 1)))
    return np.prod(_v(ins, 0), axis=tuple(_ints(axes)), keepdims=bool(node.attrs.get("keepdims", 1)))


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, x.dtype.type(0))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1 / (1 + np.exp(-x))).astype(x.dtype)


_EVAL: dict[str, Evaluator] = {
    "Identity": _unary(lambda x: x), "Abs": _unary(np.abs), "Neg": _unary(np.negative),
    "Exp": _unary(np.exp), "Log": _unary(np.log), "Sqrt": _unary(np.sqrt), "Floor": _unary(np.floor),
    "Ceil": _unary(np.ceil), "Not": _unary(np.logical_not), "Sign": _unary(np.sign), "Tanh": _unary(np.tanh),
    "Reciprocal": _unary(lambda x: (1 / x).astype(x.dtype)), "Relu": _unary(_relu),
    "Sigmoid": _unary(_sigmoid), "Add": _binary(np.add), "Sub": _binary(np.subtract),
    "Mul": _binary(np.multiply), "Div": _div,
    "Equal": _binary(np.equal), "Less": _binary(np.less), "LessOrEqual": _binary(np.less_equal),
    "Greater": _binary(np.greater), "GreaterOrEqual": _binary(np.greater_equal),
    "And": _binary(np.logical_and), "Or": _binary(np.logical_or), "Xor": _binary(np.logical_xor),
    "Max": _variadic(np.maximum), "Min": _variadic(np.minimum), "Sum": _variadic(np.add),
    "Mean": lambda node, ins: (_variadic(np.add)(node, ins) / sum(a is not None for a in ins)).astype(_v(ins, 0).dtype),
    "Where": lambda _, ins: np.where(_v(ins, 0), _v(ins, 1), _v(ins, 2)),
    "Concat": lambda node, ins: np.concatenate([a for a in ins if a is not None], axis=node.attrs["axis"]),
    "Gather": _gather, "Cast": _cast, "Reshape": _reshape, "Transpose": _transpose, "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze, "Slice": _slice, "Flatten": _flatten, "ConstantOfShape": _constant_of_shape,
    "Expand": _expand, "Range": _range, "ReduceProd": _reduce_prod,
}
