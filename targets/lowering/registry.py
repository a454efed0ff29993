"""The converter table: one small function per op, turning an IR node into Relax expressions.

Every converter has the same shape: it receives a ``Call`` (the node, its inputs already converted
to Relax, the compile-time values of those inputs where known, and the block builder) and returns
one Relax expression, or a sequence of them for a multi-output op. Converters emit intermediate
expressions through ``call.emit`` and leave the final one to the driver.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
from tvm import relax, tirx

from compiler.errors import EffarchError
from compiler.ir.core import Node

Result: TypeAlias = relax.Expr | Sequence[relax.Expr]
Converter = Callable[["Call"], Result]

CONVERTERS: dict[str, Converter] = {}


def converter(*ops: str) -> Callable[[Converter], Converter]:
    """Register the decorated function as the converter of each op in ``ops``."""

    def register(fn: Converter) -> Converter:
        for op in ops:
            if op in CONVERTERS:
                raise RuntimeError(f"two converters for op {op}")
            CONVERTERS[op] = fn
        return fn

    return register


class LoweringError(EffarchError):
    """A node cannot be lowered to Relax; the message names the node, the op and the fix."""


def _no_weights(arr: np.ndarray, name: str) -> relax.Expr:
    raise EffarchError("this lowering cannot add weights")


@dataclass(slots=True)
class Call:
    node: Node
    args: list[relax.Expr | None]  # None marks an omitted optional input
    consts: list[np.ndarray | None]  # compile-time values of the inputs, where known
    bb: relax.BlockBuilder
    # Weights (large constants) among the inputs, so a converter can lay them out at compile
    # time, and the way to hand the re-laid-out array back as a new weight of the model.
    weights: list[np.ndarray | None] = field(default_factory=list)
    add_weight: Callable[[np.ndarray, str], relax.Expr] = _no_weights
    pack: int = 0  # output columns per packed weight panel (lowering.packed); 0: weights unpacked
    int8: str = ""  # the CPU's integer dot-product family (schedules.dot.int8_isa); "": none used
    bf16: str = ""  # the CPU's bf16 dot-product kernel (--precision bf16; lowering.packed_bf16); "": fp32

    def weight(self, i: int) -> np.ndarray | None:
        """Input ``i``'s value if it is a weight known at compile time, else None."""
        return self.weights[i] if i < len(self.weights) else None

    def relaid_weight(self, i: int, arr: np.ndarray, layout: str) -> relax.Expr:
        """``arr`` (input ``i``'s weight in another ``layout``) as a weight of the model, named
        after the original (``w.T``, ``w.HWIO``); the original goes if nothing else reads it."""
        v = self.node.inputs[i]
        return self.add_weight(np.ascontiguousarray(arr), f"{v.name if v is not None else self.node.name}.{layout}")

    @property
    def op(self) -> str:
        return self.node.op

    def attr(self, key: str, default: Any = None) -> Any:
        return self.node.attrs.get(key, default)

    def fail(self, problem: str) -> LoweringError:
        return LoweringError(f"{describe(self.node)}: {problem}")

    def arg(self, i: int) -> relax.Expr:
        """Input ``i``, which the op requires."""
        a = self.args[i] if i < len(self.args) else None
        if a is None:
            raise self.fail(f"required input {i} is missing; the model is malformed")
        return a

    def has(self, i: int) -> bool:
        return i < len(self.args) and self.args[i] is not None

    def const(self, i: int, what: str) -> np.ndarray:
        """The compile-time value of input ``i`` (a shape-like argument such as ``what``)."""
        c = self.consts[i] if i < len(self.consts) else None
        if c is None:
            raise self.fail(
                f"{what} (input {i}) is not a compile-time constant; fix the input shapes "
                "(--shape name=...) or fold it so that it becomes one"
            )
        return c

    def ints(self, i: int, what: str) -> list[int]:
        return [int(v) for v in np.asarray(self.const(i, what)).reshape(-1)]

    def shape(self, i: int) -> list[Any]:
        """Input ``i``'s dims: ints, and ``tirx`` expressions where the model has a symbolic dim."""
        return dims(self.arg(i))

    def static(self, i: int) -> list[int]:
        """Input ``i``'s shape where the converter needs every dim as a number."""
        return static_shape(self.arg(i))

    def rank(self, i: int) -> int:
        return len(self.shape(i))

    def dtype(self, i: int) -> str:
        return dtype_of(self.arg(i))

    def emit(self, expr: relax.Expr) -> relax.Var:
        return self.bb.emit(expr)


def describe(node: Node) -> str:
    label = node.name or (node.outputs[0].name if node.outputs else "?")
    return f"node '{label}' ({node.qualified_op})"


def dims(expr: relax.Expr) -> list[Any]:
    """The dims of a tensor expression: ints where static, ``tirx`` expressions where they depend
    on a symbolic dim of the inputs (``batch``, ``seq``); the rank must be known."""
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or not isinstance(ty.shape, relax.ShapeExpr):
        raise EffarchError(f"expected a tensor of known rank, got {ty}; pass --shape name=... for inputs")
    return [int(d.value) if isinstance(d, tirx.IntImm) else d for d in ty.shape.values]


def is_static(shape: Sequence[Any]) -> bool:
    return all(isinstance(d, int) for d in shape)


def product(shape: Sequence[Any]) -> Any:
    """The number of elements of ``shape``: an int, or a ``tirx`` expression for symbolic dims."""
    total: Any = 1
    for d in shape:
        total = total * d
    return total


def static_shape(expr: relax.Expr) -> list[int]:
    """The shape of a tensor expression where every dim must be a number."""
    shape = dims(expr)
    for d in shape:
        if not isinstance(d, int):
            raise EffarchError(f"dimension {d} is symbolic here; pass --shape name=... to fix the input sizes")
    return shape


def dtype_of(expr: relax.Expr) -> str:
    return str(expr.ty.dtype)


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis
