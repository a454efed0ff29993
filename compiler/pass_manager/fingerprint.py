"""Structural fingerprints: two graphs get equal fingerprints exactly when no pass could tell them apart.

Covered: node order, ops, domains, attributes, group bodies, edges, value names and types, graph inputs and
outputs, and constants (name, type, payload identity, or the digest of a constant without payload).
Provenance, node names and cached digests are bookkeeping and left out, so a pass cannot claim a change
by touching only them.

Constant payloads are compared by identity (``id``), not by content: hashing every weight on
every pass would cost more than the pass. The fingerprint keeps references to the arrays so their
ids cannot be reused by new arrays while the fingerprint is alive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compiler.ir import Graph, Value


@dataclass(frozen=True)
class Fingerprint:
    structure: tuple[Any, ...]
    # Holds the constant arrays alive so ``id`` values in ``structure`` stay unique.
    keep_alive: tuple[Any, ...] = field(compare=False, repr=False, default=())


def fingerprint(graph: Graph) -> Fingerprint:
    index: dict[int, int] = {}
    arrays: list[np.ndarray] = []

    def ref(v: Value | None) -> int:
        return -1 if v is None else index.setdefault(id(v), len(index))

    def describe(v: Value) -> tuple[Any, ...]:
        ref(v)
        if v.const is None:
            return (v.name, str(v.type), None, v.const_digest)  # a digest-only constant: the digest is its content
        arrays.append(v.const)
        # With a payload, const_digest is only a cache of its hash (printing and CSE fill it in).
        return (v.name, str(v.type), id(v.const), None)

    inputs = tuple(describe(v) for v in graph.inputs)
    constants = tuple(describe(graph.constants[k]) for k in sorted(graph.constants))
    nodes = []
    for n in graph.nodes:
        outs = tuple(describe(v) for v in n.outputs)
        ins = tuple(ref(v) for v in n.inputs)
        # A group node's body is part of what it computes: a pass that only edits a body changed the graph.
        body = None if n.body is None else fingerprint(n.body)
        if body is not None:
            arrays.extend(body.keep_alive)
        nodes.append((n.domain, n.op, attrs_key(n.attrs), ins, outs, None if body is None else body.structure))
    outputs = tuple(ref(v) for v in graph.outputs)
    structure = (inputs, constants, tuple(nodes), outputs)
    return Fingerprint(structure, tuple(arrays))


def attrs_key(attrs: dict[str, Any]) -> tuple[Any, ...]:
    """Attributes as a hashable key: equal exactly when the attributes are (CSE merges nodes by it too)."""
    return tuple((k, _attr_key(attrs[k])) for k in sorted(attrs))


def _attr_key(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, list | tuple):
        return tuple(_attr_key(v) for v in value)
    # Type is part of the key: 1 and 1.0 are different ONNX attributes.
    return (type(value).__name__, value)
