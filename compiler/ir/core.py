"""Values, nodes and provenance: the linked structure every graph is made of.

Invariants (checked by the verifier):
- a ``Value`` has at most one producer: a ``Node`` (``producer``/``index``) or nothing (a graph
  input or a constant);
- ``value.uses`` lists exactly the ``(node, input_index)`` pairs whose input is that value;
- values are linked by identity; ``name`` is only for printing and files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compiler.ir.types import TensorType

AttrValue = Any  # int | float | str | list[int] | list[float] | list[str] | np.ndarray


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where a node came from: its source (PyTorch module path or ONNX node name) and the
    passes/rules that rewrote it, oldest first, each as ``"pass:rule"``."""

    source: str = ""
    rewrites: tuple[str, ...] = ()
    # The source nodes merged into this one (for fusions): their own provenance sources.
    merged: tuple[str, ...] = field(default=())

    def rewritten(self, pass_name: str, rule: str, merged: tuple[str, ...] = ()) -> Provenance:
        return Provenance(self.source, (*self.rewrites, f"{pass_name}:{rule}"), self.merged + merged)

    def __str__(self) -> str:
        parts = [self.source] if self.source else []
        parts += [f"<{r}>" for r in self.rewrites]
        if self.merged:
            parts.append("{" + ",".join(self.merged) + "}")
        return " ".join(parts)


class Value:
    """A tensor flowing through the graph: a node output, a graph input or a constant."""

    __slots__ = ("name", "type", "producer", "index", "uses", "_const", "const_digest")

    def __init__(self, name: str, type: TensorType | None = None) -> None:
        self.name = name
        self.type = type
        self.producer: Node | None = None
        self.index = 0
        self.uses: list[tuple[Node, int]] = []
        # For constants: the numpy payload, or None when only its digest is known (parsed text).
        self._const: np.ndarray | None = None
        # A cache of the payload's digest (see compiler.ir.printer.constant_digest).
        self.const_digest: str | None = None

    @property
    def const(self) -> np.ndarray | None:
        return self._const

    @const.setter
    def const(self, array: np.ndarray | None) -> None:
        # A new payload invalidates the cached digest, so a printed digest is never stale.
        if array is not self._const:
            self.const_digest = None
        self._const = array

    @property
    def is_constant(self) -> bool:
        return self.const is not None or self.const_digest is not None

    def replace_all_uses_with(self, other: Value) -> None:
        """Point every user of ``self`` at ``other``; graph outputs are the graph's business."""
        for node, i in list(self.uses):
            node.set_input(i, other)

    def __repr__(self) -> str:
        return f"Value(%{self.name}: {self.type})"


class Node:
    """One operation: ONNX op semantics (opset 21) for domain "", attributes as Python values."""

    __slots__ = ("op", "domain", "name", "_inputs", "attrs", "outputs", "provenance", "graph", "body")

    def __init__(
        self,
        op: str,
        inputs: list[Value | None],
        attrs: dict[str, AttrValue] | None = None,
        outputs: list[Value] | None = None,
        *,
        domain: str = "",
        name: str = "",
        provenance: Provenance | None = None,
        body: Any = None,
    ) -> None:
        self.op = op
        self.domain = domain
        self.name = name
        self.attrs: dict[str, AttrValue] = dict(attrs or {})
        self.provenance = provenance or Provenance(name)
        self.graph: Any = None  # set by Graph when inserted
        # A group node (a fusion) owns a body: a Graph whose inputs stand for this node's inputs
        # and whose outputs are this node's outputs, position by position. None for plain ops.
        self.body: Any = body
        self._inputs: list[Value | None] = []
        for v in inputs:
            self._append_input(v)
        self.outputs: list[Value] = []
        for out in outputs or []:
            self.add_output(out)

    @property
    def inputs(self) -> tuple[Value | None, ...]:
        """Inputs in order; ``None`` marks an omitted optional input."""
        return tuple(self._inputs)

    @property
    def qualified_op(self) -> str:
        return f"{self.domain}::{self.op}" if self.domain else self.op

    def _append_input(self, v: Value | None) -> None:
        self._inputs.append(v)
        if v is not None:
            v.uses.append((self, len(self._inputs) - 1))

    def append_input(self, v: Value | None) -> None:
        """Give the node one more input (an optional one it was built without, e.g. a bias)."""
        self._append_input(v)

    def set_input(self, i: int, v: Value | None) -> None:
        old = self._inputs[i]
        if old is not None:
            old.uses.remove((self, i))
        self._inputs[i] = v
        if v is not None:
            v.uses.append((self, i))

    def add_output(self, v: Value) -> Value:
        if v.producer is not None:
            raise ValueError(f"value %{v.name} already has a producer")
        v.producer, v.index = self, len(self.outputs)
        self.outputs.append(v)
        return v

    def detach_inputs(self) -> None:
        """Drop this node's uses of its inputs (before removing it from a graph)."""
        for i in range(len(self._inputs)):
            self.set_input(i, None)

    def attr(self, key: str, default: AttrValue = None) -> AttrValue:
        return self.attrs.get(key, default)

    def __repr__(self) -> str:
        ins = ", ".join("_" if v is None else f"%{v.name}" for v in self._inputs)
        outs = ", ".join(f"%{v.name}" for v in self.outputs)
        return f"Node({outs} = {self.qualified_op}({ins}))"
