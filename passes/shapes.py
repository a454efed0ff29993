"""propagate-shapes: make the type of every node output as static as the graph inputs allow.

The graph is exported to ONNX without the types passes wrote (so nothing stale is trusted) and run
through ONNX shape inference with data propagation: shape arithmetic (Shape -> Gather -> Concat ->
Reshape) is evaluated symbolically, so a Reshape fed by such a chain on a static input gets a
static output type. Afterwards fold-constants can fold ``Shape`` of those values.

Float weights travel as typed inputs, without their data. A dimension is refined (``?`` or a
symbol -> a number; ``?`` -> a symbol of the graph) and never loosened. Disagreements (dtype, or
two different numbers) keep effarch's type and become a Note: the verifier and the lowering trust
effarch's types, and a conflict means an importer bug to fix.
Values inside group bodies are left alone: their types come from the nodes they were fused from.
"""

from __future__ import annotations

import logging

import onnx

from compiler.frontends.onnx_export import to_onnx
from compiler.ir import DType, Graph, Node, TensorType, Value
from compiler.ir.types import Dim
from compiler.pass_manager import Note, Pass, PassContext, PassResult, register_pass

log = logging.getLogger(__name__)

# ONNX invents names like "unk__3" for dimensions it cannot name; those say nothing.
INVENTED_DIM = "unk__"


@register_pass
class PropagateShapes(Pass):
    name = "propagate-shapes"
    description = "infer static types of node outputs from static graph inputs (ONNX shape inference)"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        inferred = infer_types(graph)
        if isinstance(inferred, str):
            return PassResult(graph, False, [Note("infer", inferred)])
        notes: list[Note] = []
        for node in graph.nodes:
            changed = [refine_value(v, inferred.get(v.name), node, notes) for v in node.outputs]
            if any(changed):
                typed = ", ".join(f"%{v.name}: {v.type}" for v, c in zip(node.outputs, changed, strict=True) if c)
                notes.append(Note.at(node, "infer", f"typed {typed}", fired=True))
        return PassResult(graph, any(n.fired for n in notes), notes)


def infer_types(graph: Graph) -> dict[str, TensorType | None] | str:
    """Inferred types by value name, or why inference failed."""
    model = to_onnx(without_weights(graph))
    del model.graph.value_info[:]
    for out in model.graph.output:
        out.type.Clear()
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, ValueError) as e:
        return f"ONNX shape inference failed: {str(e).splitlines()[0]}"
    infos = (*model.graph.value_info, *model.graph.output)
    return {vi.name: from_type_proto(vi.type) for vi in infos}


def without_weights(graph: Graph) -> Graph:
    """A copy whose float constants are graph inputs of the same type.

    Inference needs their types only (data propagation reads integer shape tensors), and leaving
    the weights out keeps the export cheap and under protobuf's 2 GB limit.
    """
    light = graph.clone()
    for name in [k for k, v in light.constants.items() if v.const is not None and v.const.dtype.kind == "f"]:
        v = light.constants.pop(name)
        v.const = None
        light.inputs.append(v)
    return light


def from_type_proto(t: onnx.TypeProto) -> TensorType | None:
    if t.WhichOneof("value") != "tensor_type" or not t.tensor_type.elem_type:
        return None
    try:
        dtype = DType.from_onnx(t.tensor_type.elem_type)
    except ValueError:
        return None
    if not t.tensor_type.HasField("shape"):
        return TensorType(dtype, None)
    return TensorType(dtype, tuple(_dim(d) for d in t.tensor_type.shape.dim))


def _dim(d: onnx.TensorShapeProto.Dimension) -> Dim:
    if d.HasField("dim_value"):
        return int(d.dim_value)
    if d.HasField("dim_param") and not d.dim_param.startswith(INVENTED_DIM):
        return d.dim_param
    return None


def refine_value(v: Value, inferred: TensorType | None, node: Node, notes: list[Note]) -> bool:
    """Refine ``v.type`` with ``inferred``; True when it changed."""
    if inferred is None:
        return False
    new = refine(v.type, inferred)
    if isinstance(new, str):
        notes.append(Note.at(node, "infer", f"%{v.name}: {new}; kept {v.type}"))
        return False
    if new == v.type:
        return False
    v.type = new
    return True


def refine(ours: TensorType | None, theirs: TensorType) -> TensorType | str:
    """The more precise of two types of one value, or why they disagree."""
    if ours is None:
        return theirs
    if ours.dtype != theirs.dtype:
        return f"ONNX infers {theirs.dtype.short}, effarch says {ours.dtype.short}"
    if ours.shape is None or theirs.shape is None:
        return ours if theirs.shape is None else theirs
    if len(ours.shape) != len(theirs.shape):
        return f"ONNX infers rank {len(theirs.shape)}, effarch says {ours}"
    dims = [_refine_dim(a, b) for a, b in zip(ours.shape, theirs.shape, strict=True)]
    bad = [i for i, d in enumerate(dims) if d is _CONFLICT]
    if bad:
        return f"ONNX infers {theirs}, effarch says {ours} (dim {bad[0]})"
    return TensorType(ours.dtype, tuple(dims))  # type: ignore[arg-type]  # _CONFLICT excluded above


_CONFLICT = object()


def _refine_dim(ours: Dim, theirs: Dim) -> object:
    if isinstance(ours, int):
        return _CONFLICT if isinstance(theirs, int) and theirs != ours else ours
    if isinstance(theirs, int):
        return theirs
    return ours if ours is not None else theirs
