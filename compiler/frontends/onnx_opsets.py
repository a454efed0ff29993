"""Which ONNX opsets the importer reads, and how a model at another opset reaches the IR's (21).

- Opsets 7-12: converted on import with onnx's own version converter (the report notes it).
- Opsets 13-21: read directly; the importer rewrites the few older forms (reduction axes, Split).
- Opsets 22-28: read directly where the node means what the op's opset-21 form meant (for an op
  ONNX added after 21, ``compiler.ir.ops.NEWER_OPS`` names the form the IR follows instead). Most newer
  forms only admit new element types (bfloat16, float8, int4); a few add attributes (Cast's
  ``round_mode``, Range's ``stash_type``); two changed meaning without changing their signature
  (``SEMANTIC_CHANGES``). A node is read as its opset-21 form when it sets no attribute that form
  lacks, has the same inputs and outputs, uses element types that form accepts, and is not one of
  the changed meanings; otherwise the op is listed in the importer's one error naming unsupported
  operators, as ``Op (opset-N form)``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import onnx
import onnx.defs
from onnx import version_converter

from compiler.errors import EffarchError
from compiler.ir.ops import IR_OPSET, op_opset

logger = logging.getLogger(__name__)

MIN_OPSET = 7
CONVERT_BELOW = 13  # opsets before this are converted to IR_OPSET on import
MAX_OPSET = onnx.defs.onnx_opset_version()  # 28 with the pinned onnx 1.23
DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass
class OpsetCheck:
    """What reading a model at its opset involves: the model to read, its opset as read, notes for
    the report, and nodes whose newer form the IR does not have (op -> opset of that form)."""

    model: onnx.ModelProto
    opset: int
    source_opset: int
    notes: list[str] = field(default_factory=list)


def default_opset(proto: onnx.ModelProto) -> int:
    versions = [o.version for o in proto.opset_import if o.domain in DEFAULT_DOMAINS]
    if not versions:
        raise EffarchError(f"the model imports no default-domain ONNX opset; re-export it with opset {IR_OPSET}")
    opset = versions[0]
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise EffarchError(
            f"ONNX opset {opset} is not supported (effarch reads opsets {MIN_OPSET}..{MAX_OPSET}); re-export the "
            f"model with opset {IR_OPSET}")
    return opset


def check_opset(proto: onnx.ModelProto) -> OpsetCheck:
    """The model as the importer should read it (converted where old), with what that involved."""
    source = default_opset(proto)
    if source < CONVERT_BELOW:
        converted = _convert(proto, source)
        note = f"converted from ONNX opset {source} to {IR_OPSET} with onnx's version converter"
        logger.info("%s", note)
        return OpsetCheck(converted, IR_OPSET, source, [note])
    return OpsetCheck(proto, source, source)


def _convert(proto: onnx.ModelProto, source: int) -> onnx.ModelProto:
    try:
        return version_converter.convert_version(proto, IR_OPSET)
    except Exception as e:  # the converter raises RuntimeError/ValueError/C++ errors alike
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EffarchError(f"cannot convert this opset-{source} model to opset {IR_OPSET} ({first}); re-export it "
                           f"with opset {IR_OPSET} or newer") from None


ElemType = Callable[[str], "int | None"]  # a value's ONNX element type by name, None if unknown


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


_FLOATS = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                     onnx.TensorProto.BFLOAT16})


def _is_float(elem: int | None) -> bool:
    return elem is None or elem in _FLOATS  # unknown: assume the changed meaning applies


# Meanings that changed after opset 21 while the signature stayed: op -> (opset, does the node use it)
SEMANTIC_CHANGES: dict[str, tuple[int, Callable[[onnx.NodeProto, ElemType], bool]]] = {
    # ceil_mode: a last window that would start in the padding is dropped (PyTorch's rule) from 22
    "MaxPool": (22, lambda n, t: _attr(n, "ceil_mode", 0) == 1),
    "AveragePool": (22, lambda n, t: _attr(n, "ceil_mode", 0) == 1),
    # fmod=0 on floats: invalid until 21, floor modulo from 28
    "Mod": (28, lambda n, t: _attr(n, "fmod", 0) == 0 and _is_float(t(n.input[0]))),
}


def newer_forms(graph: onnx.GraphProto, opset: int, elem_type: ElemType) -> dict[str, list[str]]:
    """Nodes (subgraphs included) whose form at ``opset`` is not readable as opset 21's:
    ``"Op (opset-N form)"`` -> node names. Empty at opset 21 and below."""
    out: dict[str, list[str]] = {}
    if opset <= IR_OPSET:
        return out
    for i, node in enumerate(_all_nodes(graph)):
        if node.domain not in DEFAULT_DOMAINS:
            continue
        since = _changed_since(node, opset, elem_type)
        if since is not None:
            out.setdefault(f"{node.op_type} (opset-{since} form)", []).append(node.name or f"#{i}")
    return out


def _changed_since(node: onnx.NodeProto, opset: int, elem_type: ElemType) -> int | None:
    """The opset of the node's form if that form is not readable as opset 21's, else None."""
    try:
        new = onnx.defs.get_schema(node.op_type, opset)
    except onnx.defs.SchemaError:
        return None  # an op unknown to onnx: the unsupported-operator check names it
    base = op_opset(node.op_type)  # 21, or the form of an op added later (compiler.ir.ops.NEWER_OPS)
    if new.since_version <= base:
        return None
    try:
        old = onnx.defs.get_schema(node.op_type, base)
    except onnx.defs.SchemaError:
        return None  # an op new after opset 21: not in the IR, so the unsupported-operator check names it
    extra_attrs = {a.name for a in node.attribute} - set(old.attributes)
    same_io = ([i.name for i in new.inputs] == [i.name for i in old.inputs]
               and [o.name for o in new.outputs] == [o.name for o in old.outputs])
    change = SEMANTIC_CHANGES.get(node.op_type)
    changed = change is not None and opset >= change[0] and change[1](node, elem_type)
    if extra_attrs or not same_io or changed or not _types_accepted(node, old, elem_type):
        return new.since_version
    return None


def _types_accepted(node: onnx.NodeProto, old: onnx.defs.OpSchema, elem_type: ElemType) -> bool:
    """Every input of known element type has a type the opset-21 form accepts."""
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in old.type_constraints}
    for i, name in enumerate(node.input):
        elem = elem_type(name) if name else None
        if elem is None or not old.inputs:
            continue
        formal = old.inputs[min(i, len(old.inputs) - 1)]  # the last formal input may be variadic
        accepted = allowed.get(formal.type_str, {formal.type_str})
        if f"tensor({onnx.TensorProto.DataType.Name(elem).lower()})" not in accepted:
            return False
    return True


def _all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                nodes.extend(_all_nodes(sub))
    return nodes
