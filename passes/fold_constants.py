"""fold-constants: evaluate nodes whose inputs are all constants, and Shape/Size of static shapes.

Rules:
- ``fold``: op(c1, c2, ...) -> c            every input a constant with a payload
- ``shape-of-static``: Shape(x) -> c, Size(x) -> c   x's (sliced) shape is static
Exporters compute shapes as Shape -> Gather -> Concat -> Reshape chains; folding Shape first lets
the rest of the chain fold too, in the same run (nodes are visited in topological order).

Common ops are evaluated by ``compiler.ir.consteval``, the evaluator lowering uses too; the rest
with onnx's ReferenceEvaluator on a one-node model.
The size guard refuses a fold whose outputs are larger than max(input bytes, ``size_limit``):
ConstantOfShape, Expand or Tile of a small constant would otherwise bloat the artifact.
A node whose output is a graph output is not folded, so every graph output stays computed by a node.
DequantizeLinear is never folded: its constant input is a quantized weight that must stay small.
New constants take the name of the output they replace and are never written into.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from compiler.ir import Graph, Node, TensorType, Value
from compiler.ir.consteval import can_evaluate, evaluate_op, output_elements
from compiler.pass_manager import Note, Pass, PassContext, PassResult, register_pass

log = logging.getLogger(__name__)

Arrays = list[np.ndarray]

# Ops whose result is not a function of their inputs.
NONDETERMINISTIC = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                              "Multinomial", "Bernoulli"})


@register_pass
class FoldConstants(Pass):
    name = "fold-constants"
    description = "replace nodes with all-constant inputs, and Shape/Size of static shapes, by constants"
    option_defaults = {"size_limit": 1 << 20}

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        notes: list[Note] = []
        modified = False
        for node in graph.nodes_snapshot():
            folded = self.try_fold(node, notes)
            if folded is not None:
                replace_with_constants(graph, node, folded)
                modified = True
        return PassResult(graph, modified, notes)

    def try_fold(self, node: Node, notes: list[Note]) -> Arrays | None:
        """The node's output arrays, or None (with a Note saying why, for nodes that came close)."""
        if not any(v.uses for v in node.outputs) and graph_output_refusal(node) is None:
            return None  # dead: eliminate-dead-code removes it; folding it would be wasted work
        outcome: Arrays | str | None
        if node.op in ("Shape", "Size") and not node.domain:
            rule, outcome = "shape-of-static", graph_output_refusal(node) or static_shape_of(node)
        else:
            rule, outcome = "fold", self.evaluate(node)
        if outcome is None:
            return None
        if isinstance(outcome, str):
            notes.append(Note.at(node, rule, outcome))
            return None
        names = ", ".join(f"%{v.name}" for v in node.outputs if v.uses)
        notes.append(Note.at(node, rule, f"replaced {node.op} by constant {names}", fired=True))
        return outcome

    def evaluate(self, node: Node) -> Arrays | str | None:
        """Arrays, a reason string for a refused candidate, or None for a node that is no candidate."""
        if not _all_constant(node):
            return None
        reason = self.refusal(node)
        if reason:
            return reason
        try:
            arrays = evaluate_node(node)
        except Exception as exc:  # an evaluator failure only means "not folded"
            return f"could not evaluate: {type(exc).__name__}: {exc}"
        return self.size_guard(node, sum(a.nbytes for a in arrays)) or conform(node, arrays)

    def refusal(self, node: Node) -> str | None:
        if node.domain:
            return f"no evaluator for ops of domain '{node.domain}'"
        if node.op in NONDETERMINISTIC:
            return f"{node.op} is not deterministic"
        if node.op == "DequantizeLinear":
            return "it reads a quantized weight: folding it would store the weight in float again"
        used = [v for v in node.inputs if v is not None]
        if any(v.const is None for v in used):
            return "an input constant has only a digest, no payload"
        reason = graph_output_refusal(node) or self.predicted_size_guard(node)
        if reason:
            return reason
        declared = [v.type.nbytes() if v.type else None for v in node.outputs]
        if all(b is not None for b in declared):
            return self.size_guard(node, sum(b for b in declared if b is not None))
        return None

    def predicted_size_guard(self, node: Node) -> str | None:
        """The size guard before evaluating, for ops whose output size follows from their inputs
        (a ConstantOfShape whose shape inference could not see would otherwise allocate first)."""
        elements = output_elements(node, [None if v is None else v.const for v in node.inputs])
        if elements is None:
            return None
        out = node.outputs[0].type
        return self.size_guard(node, elements * (out.dtype.numpy.itemsize if out is not None else 1))

    def size_guard(self, node: Node, out_bytes: int) -> str | None:
        in_bytes = sum(v.const.nbytes for v in node.inputs if v is not None and v.const is not None)
        limit = max(in_bytes, int(self.options["size_limit"]))
        if out_bytes > limit:
            return f"size guard: output is {out_bytes} bytes, over max(input bytes, size_limit) = {limit}"
        return None


def graph_output_refusal(node: Node) -> str | None:
    outputs = node.graph.outputs if node.graph is not None else []
    names = [v.name for v in node.outputs if v in outputs]
    return f"output %{names[0]} is a graph output and must stay computed by a node" if names else None


def _all_constant(node: Node) -> bool:
    return all(v is None or v.is_constant for v in node.inputs)


def static_shape_of(node: Node) -> Arrays | str:
    x = node.inputs[0]
    assert x is not None  # Shape and Size have one required input
    shape = x.type.shape if x.type is not None else None
    if shape is None:
        return f"rank of %{x.name} is unknown"
    if node.op == "Shape":
        # ONNX clamps start/end like Python slicing does; only the kept dims need to be static.
        shape = shape[node.attr("start", 0): node.attr("end", len(shape))]
    dims = [d for d in shape if isinstance(d, int)]
    if len(dims) != len(shape):
        return f"shape of %{x.name} is not static: {x.type}"
    return [np.array(dims if node.op == "Shape" else math.prod(dims), dtype=np.int64)]


def conform(node: Node, arrays: Arrays) -> Arrays | str:
    """Arrays in the declared dtypes, or why they do not match the declared types."""
    out: Arrays = []
    for v, a in zip(node.outputs, arrays, strict=True):
        a = np.asarray(a)
        if v.type is not None:
            if v.type.is_static and a.shape != v.type.static_shape():
                return f"evaluated shape {a.shape} differs from the declared {v.type}"
            a = a.astype(v.type.dtype.numpy, copy=False)
        # A fresh, read-only array: never an alias of an input payload that someone could write.
        a = np.array(a, copy=True)
        a.flags.writeable = False
        out.append(a)
    return out


def replace_with_constants(graph: Graph, node: Node, arrays: Arrays) -> None:
    for out, array in zip(node.outputs, arrays, strict=True):
        if out.uses:
            graph.replace_value(out, _named_constant(graph, out.name, array))
    graph.remove_node(node)


def _named_constant(graph: Graph, name: str, array: np.ndarray) -> Value:
    # The name is already claimed by the replaced output, which is about to disappear.
    v = Value(name, TensorType.of(array))
    v.const = array
    graph.constants[name] = v
    return v


# ---- evaluation -------------------------------------------------------------------------------
def evaluate_node(node: Node) -> Arrays:
    """Common ops through effarch's one evaluator (lowering computes with it too), the rest with
    onnx's reference implementation."""
    ins = [None if v is None else v.const for v in node.inputs]
    if can_evaluate(node):
        return evaluate_op(node, ins)
    return evaluate_with_reference(node, ins)


def evaluate_with_reference(node: Node, ins: Sequence[np.ndarray | None]) -> Arrays:
    """Run one node through onnx.reference on a model built by the ONNX exporter."""
    from onnx.reference import ReferenceEvaluator

    from compiler.frontends.onnx_export import to_onnx

    g = Graph("fold")
    args = [None if a is None else g.add_input(f"in{i}", TensorType.of(a)) for i, a in enumerate(ins)]
    types = [v.type for v in node.outputs]
    one = g.make_node(node.op, args, dict(node.attrs), num_outputs=len(types), types=types,
                      output_names=[f"out{i}" for i in range(len(types))])
    g.outputs = list(one.outputs)
    feeds = {v.name: a for v, a in zip(args, ins, strict=True) if v is not None and a is not None}
    return [np.asarray(a) for a in ReferenceEvaluator(to_onnx(g)).run(None, feeds)]


