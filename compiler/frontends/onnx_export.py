"""Export an effarch graph back to ONNX (opset 21): the reference for numeric checks and an interchange.

Constants become initializers, every typed value gets a value_info (symbolic dims as dim_param), node
names are unique and derived from provenance, and the provenance itself rides in node metadata_props
so that importing the export gives back the same provenance.

Group nodes (fusions, ``node.body``) become calls to model-local functions in domain "effarch", one
function per group named ``<op>_<k>`` (``FusedConv_0``), so onnxruntime runs the fused graph and
Netron shows each group as one box that opens to its body. The importer reads them back as groups.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compiler.errors import EffarchError
from compiler.frontends.onnx import MERGED_KEY, PROVENANCE_KEY, REWRITES_KEY
from compiler.frontends.onnx_opsets import SEMANTIC_CHANGES
from compiler.ir import Graph, Node, TensorType, Value
from compiler.ir.ops import IR_OPSET, op_opset

logger = logging.getLogger(__name__)

# Opset 21 needs IR version 10; onnxruntime 1.32 reads it. Newer IR versions buy us nothing.
IR_VERSION = 10
PRODUCER = "effarch"
# Constants above this many bytes go to an external data file: protobuf stops at 2 GiB.
EXTERNAL_DATA_THRESHOLD = int(1.8 * 2**30)
# Ops whose trailing outputs are optional: an unused one is written as "" (not computed).
SPLIT_LIKE = frozenset({"Split"})
# Defaults written out although they are defaults: onnx's checker cannot infer shapes through the
# function body of these ops when the attribute it references is absent.
SPELLED_OUT_DEFAULTS: dict[str, dict[str, Any]] = {"MeanVarianceNormalization": {"axes": [0, 2, 3]}}
_A = onnx.AttributeProto


def to_onnx(g: Graph) -> onnx.ModelProto:
    """The graph as an opset-21 ModelProto (or newer, for ops ONNX added later), constants inline."""
    functions = _Functions()
    names = _unique_node_names(g.nodes)
    nodes = [_node_proto(n, name, functions) for n, name in zip(g.nodes, names, strict=True)]
    graph = helper.make_graph(
        nodes,
        g.name or "main",
        [_value_info(v) for v in g.inputs],
        [_value_info(v) for v in g.outputs],
        initializer=[_initializer(v) for v in g.constants.values()],
        value_info=[_value_info(v) for n in g.nodes for v, name in zip(n.outputs, _output_names(n), strict=False)
                    if name and v.type is not None and v not in g.outputs],
    )
    model = helper.make_model(graph, opset_imports=_opsets(nodes), producer_name=PRODUCER,
                              ir_version=IR_VERSION, functions=functions.protos)
    helper.set_model_props(model, {k: str(v) for k, v in sorted(g.metadata.items())})
    if any(v.type is None for v in g.outputs):
        _infer_output_types(model)
    return model


def _opsets(nodes: list[onnx.NodeProto]) -> list[onnx.OperatorSetIdProto]:
    domains = sorted({n.domain for n in nodes if n.domain not in ("", "ai.onnx")})
    return [helper.make_opsetid("", default_opset(nodes))] + [helper.make_opsetid(d, 1) for d in domains]


def default_opset(nodes: list[onnx.NodeProto]) -> int:
    """21, or the newest form among ops ONNX added later; refused where that opset would change what
    a node of the graph means (``onnx_opsets.SEMANTIC_CHANGES``: ceil-mode pools from 22)."""
    opset = max([IR_OPSET] + [op_opset(n.op_type) for n in nodes if n.domain in ("", "ai.onnx")])
    for n in nodes:
        change = SEMANTIC_CHANGES.get(n.op_type)
        if change is not None and opset >= change[0] and change[1](n, lambda _: None):
            newer = sorted({m.op_type for m in nodes if op_opset(m.op_type) > IR_OPSET})
            raise EffarchError(
                f"cannot export node '{n.name}' ({n.op_type}): the graph needs ONNX opset {opset} for "
                f"{', '.join(newer)}, where {n.op_type} means something else than at opset {IR_OPSET}; "
                f"export the two parts separately")
    return opset


class _Functions:
    """The model-local functions of the group nodes met so far, each named ``<op>_<k>``."""

    def __init__(self) -> None:
        self.protos: list[onnx.FunctionProto] = []

    def add(self, n: Node) -> str:
        body = n.body
        name = f"{n.op}_{len(self.protos)}"
        self.protos.append(onnx.FunctionProto())  # reserve the slot: nested groups number after it
        slot = len(self.protos) - 1
        names = _unique_node_names(body.nodes)
        nodes = [_constant_node(v) for v in body.constants.values()]
        nodes += [_node_proto(b, nm, self) for b, nm in zip(body.nodes, names, strict=True)]
        self.protos[slot] = helper.make_function(
            n.domain, name, [v.name for v in body.inputs], [v.name for v in body.outputs], nodes,
            _opsets(nodes), attributes=sorted(n.attrs), doc_string=body.name,
            value_info=[_value_info(v) for b in body.nodes for v in b.outputs if v.type is not None])
        return name


def _constant_node(v: Value) -> onnx.NodeProto:
    """A body constant as a Constant node: functions have no initializers."""
    return helper.make_node("Constant", [], [v.name], value=_initializer(v))


def _infer_output_types(model: onnx.ModelProto) -> None:
    """Fill graph outputs a pass left untyped (ONNX requires their types) by ONNX shape inference."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except onnx.shape_inference.InferenceError as e:
        raise EffarchError(f"cannot infer the types of untyped graph outputs for ONNX export: {e}") from None
    types = {vi.name: vi.type for vi in (*inferred.graph.value_info, *inferred.graph.output)}
    for out in model.graph.output:
        if out.type.WhichOneof("value") is None and out.name in types:
            out.type.CopyFrom(types[out.name])


def save_onnx(g: Graph, path: str | Path) -> Path:
    """Write ``g`` to ``path`` atomically; constants go to ``<name>.data`` when they exceed ~1.8 GB."""
    path = Path(path)
    model = to_onnx(g)
    const_bytes = sum(v.const.nbytes for v in g.constants.values() if v.const is not None)
    external = const_bytes > EXTERNAL_DATA_THRESHOLD
    data_name = f"{path.name}.data"
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write into a scratch folder beside the target, then rename: a failure leaves no partial file.
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        tmp_model = Path(tmp) / path.name
        if external:
            onnx.save_model(model, str(tmp_model), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=0)
            os.replace(Path(tmp) / data_name, path.parent / data_name)
        else:
            onnx.save_model(model, str(tmp_model))
        os.replace(tmp_model, path)
    logger.debug("saved %s (%d constant bytes%s)", path, const_bytes, ", external data" if external else "")
    return path


# ---- values ---------------------------------------------------------------------------------------

def _type_proto(t: TensorType | None) -> onnx.TypeProto:
    if t is None:
        return onnx.TypeProto()
    return helper.make_tensor_type_proto(t.dtype.onnx_code, None if t.shape is None else list(t.shape))


def _value_info(v: Value) -> onnx.ValueInfoProto:
    return helper.make_value_info(v.name, _type_proto(v.type))


def _initializer(v: Value) -> onnx.TensorProto:
    if v.const is None:
        raise EffarchError(f"constant '{v.name}' has no data (only a digest, from parsed text); load the "
                           f"model from ONNX or PyTorch to export it")
    return numpy_helper.from_array(np.asarray(v.const), v.name)


# ---- nodes ----------------------------------------------------------------------------------------

def _unique_node_names(nodes: list[Node]) -> list[str]:
    """One name per node, from its provenance source (else its op), suffixed to be unique."""
    seen: dict[str, int] = {}
    names = []
    for n in nodes:
        base = n.provenance.source or n.name or n.op
        base = re.sub(r"\s+", "_", base)
        count = seen.get(base, 0)
        seen[base] = count + 1
        names.append(base if count == 0 else f"{base}_{count}")
    # A suffixed name may collide with a base name used later; resolve those rare clashes here.
    taken: set[str] = set()
    for i, name in enumerate(names):
        while name in taken:
            name += "_"
        names[i] = name
        taken.add(name)
    return names


def _output_names(n: Node) -> list[str]:
    outs = [v.name for v in n.outputs]
    graph_outputs = {id(v) for v in (n.graph.outputs if n.graph is not None else [])}
    # An unused optional output is omitted (""), so onnxruntime does not compute it.
    for i, v in enumerate(n.outputs):
        # A group's outputs are positional results of its function: never omitted.
        if i > 0 and n.op not in SPLIT_LIKE and n.body is None and not v.uses and id(v) not in graph_outputs:
            outs[i] = ""
    while outs and outs[-1] == "":
        outs.pop()
    return outs


def _node_proto(n: Node, name: str, functions: _Functions) -> onnx.NodeProto:
    inputs = ["" if v is None else v.name for v in n.inputs]
    op = n.op if n.body is None else functions.add(n)
    node = helper.make_node(op, inputs, _output_names(n), name=name, domain=n.domain or None)
    attrs = {**SPELLED_OUT_DEFAULTS.get(n.op, {}), **n.attrs} if not n.domain else n.attrs
    node.attribute.extend(_attribute(n, k, v) for k, v in sorted(attrs.items()))
    _set_provenance(node, n)
    return node


def _set_provenance(proto: onnx.NodeProto, n: Node) -> None:
    props = {PROVENANCE_KEY: n.provenance.source}
    if n.provenance.rewrites:
        props[REWRITES_KEY] = json.dumps(list(n.provenance.rewrites))
    if n.provenance.merged:
        props[MERGED_KEY] = json.dumps(list(n.provenance.merged))
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def _schema_attr_type(n: Node, key: str) -> int | None:
    try:
        schema = onnx.defs.get_schema(n.op, op_opset(n.op), n.domain)
    except onnx.defs.SchemaError:
        return None
    attr = schema.attributes.get(key)
    return None if attr is None else int(attr.type)  # type: ignore[call-overload]  # pybind enum, stub lacks __int__


def _attribute(n: Node, key: str, value: Any) -> onnx.AttributeProto:
    """An IR attribute as ONNX; the op schema decides int vs float (``alpha=1`` is a float)."""
    kind = _schema_attr_type(n, key)
    if isinstance(value, np.ndarray):
        return helper.make_attribute(key, numpy_helper.from_array(value))
    if kind == _A.FLOAT:
        return helper.make_attribute(key, float(value))
    if kind == _A.INT:
        return helper.make_attribute(key, int(value))
    if kind == _A.FLOATS:
        return helper.make_attribute(key, [float(x) for x in value], attr_type=_A.FLOATS)
    if kind == _A.INTS:
        return helper.make_attribute(key, [int(x) for x in value], attr_type=_A.INTS)
    if isinstance(value, list) and not value:
        raise EffarchError(f"attribute '{key}' of {n!r} is an empty list of unknown kind; give it a value")
    return helper.make_attribute(key, value)
