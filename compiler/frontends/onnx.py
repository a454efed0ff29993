"""ONNX importer: an ``onnx.ModelProto`` (opsets 7..28) becomes an effarch ``Graph`` in opset-21 form.

Opsets other than 13..21 are handled as ``onnx_opsets`` describes (older ones converted, newer ones
read where the op's form is unchanged).

Steps, in order: load (with external data), reject unsupported opsets and operators (all of them
in one error), infer types, then build: initializers and Constant nodes become graph constants,
every other node becomes an IR node whose attributes are plain Python values, with older-opset
forms rewritten to their opset-21 equivalents.

Model-local functions are inlined, except those in domain "effarch": effarch's exporter writes each
group node (a fusion) as one such function, and they come back as group nodes whose body is the
function (the op is the function name without its ``_<k>`` suffix).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.inliner
from onnx import numpy_helper

from compiler.errors import EffarchError, UnsupportedOpsError
from compiler.frontends.onnx_opsets import check_opset, newer_forms
from compiler.ir import DType, Graph, Node, Provenance, TensorType, Value
from compiler.ir.ops import SUPPORTED_OPS
from compiler.ir.types import MAX_TENSOR_BYTES, Dim
from compiler.ir.verifier import find_problems

logger = logging.getLogger(__name__)

DEFAULT_DOMAINS = ("", "ai.onnx")
# Protobuf cannot serialise messages over 2 GiB, so bigger models are shape-inferred from files.
PROTOBUF_LIMIT = 2**31 - 1
# Node metadata keys written by effarch's exporter and by torch.onnx's exporter.
PROVENANCE_KEY = "effarch.provenance"
REWRITES_KEY = "effarch.rewrites"
MERGED_KEY = "effarch.merged"
TORCH_NAMESPACE_KEY = "namespace"
# Reductions whose axes moved from an attribute to an input in opset 18.
AXES_TO_INPUT_AT_18 = frozenset({"ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd"})
MAX_NAMES_LISTED = 5
# Ops whose output has their input's type, which onnx's inference (no inference function, only a
# function body it does not run here) leaves without a shape.
SAME_TYPE_AS_INPUT = frozenset({"GroupNormalization", "MeanVarianceNormalization"})
MAX_PROPAGATED_RANGE = 1 << 16  # a longer constant Range is data, not a shape: see _data_prop_is_safe
GROUP_DOMAIN = "effarch"


def import_onnx(model: str | Path | onnx.ModelProto) -> Graph:
    """Import an ONNX model (a path or a loaded ModelProto) into an effarch graph."""
    proto, digest, path = _load(model)
    opsets = check_opset(proto)
    proto, opset = opsets.model, opsets.opset
    if opsets.source_opset != opset:
        path = None  # the converted model exists only in memory
    groups = [(f.domain, f.name) for f in proto.functions if f.domain == GROUP_DOMAIN]
    if len(groups) < len(proto.functions):
        # Model-local functions are macros; inlining them exposes their ops to the checks below.
        proto = onnx.inliner.inline_selected_functions(proto, groups, exclude=True)
    functions = {(f.domain, f.name): f for f in proto.functions if f.domain == GROUP_DOMAIN}
    _check_single_producers(proto.graph)
    try:  # ops outside the IR first: type inference fails on some (unknown domains)
        _check_supported(proto.graph, functions)
    except UnsupportedOpsError:  # the one error lists the newer op forms too, judged without types
        _check_supported(proto.graph, functions, newer_forms(proto.graph, opset, lambda _name: None))
        raise
    inferred = _infer_types(proto, path)
    elem_types = {i.name: i.data_type for i in proto.graph.initializer}
    elem_types.update({k: t.tensor_type.elem_type for k, t in inferred.items() if t.HasField("tensor_type")})
    newer = newer_forms(proto.graph, opset, lambda name: elem_types.get(name) or None)
    _check_supported(proto.graph, functions, newer)
    graph = _GraphBuilder(inferred, opset, functions).build(proto.graph)
    check_imported(graph)
    # effarch's own model properties (effarch.*, e.g. compression notes) come back as metadata.
    graph.metadata.update({p.key: p.value for p in proto.metadata_props if p.key.startswith("effarch.")})
    graph.metadata.update({
        "opset": str(opset),
        "source_opset": str(opsets.source_opset),
        "import_notes": "; ".join(opsets.notes),
        "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        "source_sha256": digest,
    })
    logger.debug("imported %s: %d nodes, %d constants", graph.name, len(graph.nodes), len(graph.constants))
    return graph


# ---- loading and checks ---------------------------------------------------------------------------

def _load(model: str | Path | onnx.ModelProto) -> tuple[onnx.ModelProto, str, Path | None]:
    if isinstance(model, onnx.ModelProto):
        return model, _proto_digest(model), None
    path = Path(model)
    if not path.is_file():
        raise EffarchError(f"ONNX model file '{path}' not found; check the path")
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    try:
        proto = onnx.load(str(path), load_external_data=True)
    except Exception as e:  # protobuf and the external-data loader raise unrelated types
        raise EffarchError(f"cannot read ONNX model '{path}': {_first_line(e)}; is it a valid .onnx file with "
                           f"its data?") from None
    if not proto.HasField("graph"):  # an empty file, or bytes protobuf happened to accept
        raise EffarchError(f"ONNX model '{path}' holds no graph (empty or not an ONNX file); give a .onnx model")
    return proto, digest.hexdigest(), path


def _proto_digest(proto: onnx.ModelProto) -> str:
    if proto.ByteSize() > PROTOBUF_LIMIT:
        digest = hashlib.sha256()
        for init in proto.graph.initializer:
            digest.update(init.raw_data)
        return digest.hexdigest()
    return hashlib.sha256(proto.SerializeToString(deterministic=True)).hexdigest()


def _check_single_producers(graph: onnx.GraphProto) -> None:
    """Every value has one producer (a graph input, an initializer or one node output): ONNX graphs
    are single-assignment, and a second writer would silently win or lose."""
    producer: dict[str, str] = {i.name: "graph input" for i in graph.input}
    producer.update({i.name: "initializer" for i in graph.initializer})
    for i, node in enumerate(graph.node):
        here = f"node '{node.name or f'#{i}'}'"
        for out in node.output:
            if out and out in producer:
                raise EffarchError(f"value '{out}' is written by {producer[out]} and by {here}; an ONNX graph "
                                   f"assigns each value once: rename one of the outputs")
            if out:
                producer[out] = here


def is_supported(domain: str, op_type: str) -> bool:
    return domain in DEFAULT_DOMAINS and op_type in SUPPORTED_OPS


def _check_supported(graph: onnx.GraphProto, functions: dict[tuple[str, str], onnx.FunctionProto],
                     newer_forms: dict[str, list[str]] | None = None) -> None:
    """Raise one UnsupportedOpsError naming every unsupported op type (and newer op forms the IR does
    not have), its count and some node names."""
    bad: dict[str, list[str]] = {k: list(v) for k, v in (newer_forms or {}).items()}
    nodes = [*graph.node, *(n for f in functions.values() for n in f.node)]
    for i, node in enumerate(nodes):
        if (node.domain, node.op_type) in functions:
            continue
        if not is_supported(node.domain, node.op_type) and node.op_type != "Constant":
            key = f"{node.domain}::{node.op_type}" if node.domain not in DEFAULT_DOMAINS else node.op_type
            bad.setdefault(key, []).append(node.name or f"#{i}")
    if not bad:
        return
    parts = []
    for op, names in sorted(bad.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        shown = ", ".join(names[:MAX_NAMES_LISTED]) + (", ..." if len(names) > MAX_NAMES_LISTED else "")
        parts.append(f"{op} x{len(names)} [{shown}]")
    total = sum(len(n) for n in bad.values())
    raise UnsupportedOpsError(
        f"unsupported operators ({len(bad)} types, {total} nodes): {', '.join(parts)}; "
        f"effarch supports: see 'effarch ops' or compiler/ir/ops.py")


# ---- types ----------------------------------------------------------------------------------------

def _infer_types(proto: onnx.ModelProto, path: Path | None) -> dict[str, onnx.TypeProto]:
    """Every value's inferred ONNX type by name (inputs, outputs, intermediates, initializers)."""
    data_prop = _data_prop_is_safe(proto.graph)
    if proto.ByteSize() <= PROTOBUF_LIMIT:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=data_prop)
    else:
        inferred = _infer_types_via_file(proto, path, data_prop)
    types = {v.name: v.type for v in inferred.graph.input}
    types.update({v.name: v.type for v in inferred.graph.value_info})
    types.update({v.name: v.type for v in inferred.graph.output})
    if data_prop and proto.ByteSize() <= PROTOBUF_LIMIT:
        _fill_shapes_from_shape_15(proto, types)
    return types


def _fill_shapes_from_shape_15(proto: onnx.ModelProto, types: dict[str, onnx.TypeProto]) -> None:
    """ONNX propagates Shape's values into Reshape only from Shape-15 on, so in opset 13/14 models a
    Reshape to Shape(x) stays shapeless (and gains its shape on re-import after export at opset 21).
    Shape-15 only added start/end, so the same model read as opset 15 gives those shapes."""
    opset = next((o for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    shapeless = [n for n, t in types.items() if t.HasField("tensor_type") and not t.tensor_type.HasField("shape")]
    if opset is None or opset.version not in (13, 14) or not shapeless:
        return
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    next(o for o in copy.opset_import if o.domain in ("", "ai.onnx")).version = 15
    try:
        inferred = onnx.shape_inference.infer_shapes(copy, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001  (onnx raises assorted errors; the shapes then stay unknown)
        return
    found = {v.name: v.type for v in inferred.graph.value_info}
    for name in shapeless:
        t = found.get(name)
        if t is not None and t.tensor_type.elem_type == types[name].tensor_type.elem_type:
            types[name] = t


def _data_prop_is_safe(graph: onnx.GraphProto) -> bool:
    """ONNX's data propagation holds a Range's values as one shape dimension proto each (~200 bytes):
    a constant Range of 2**24 took 3.6 GB and one of 2**40 is killed for memory. Such a Range is no
    shape computation, so the model is inferred without propagation (lowering reports its size)."""
    scalars = {i.name: i for i in graph.initializer if not i.dims}
    scalars.update({n.output[0]: n.attribute[0].t for n in graph.node if n.op_type == "Constant" and n.attribute
                    and n.attribute[0].name == "value" and not n.attribute[0].t.dims})
    for node in graph.node:
        if node.op_type != "Range" or not all(name in scalars for name in node.input[:3]):
            continue
        try:
            start, limit, delta = (float(numpy_helper.to_array(scalars[name])) for name in node.input[:3])
        except (ValueError, TypeError):  # not numbers: inference reports the node
            continue
        if delta and (limit - start) / delta > MAX_PROPAGATED_RANGE:
            logger.debug("Range '%s' has %g values: shape inference without data propagation", node.name,
                         (limit - start) / delta)
            return False
    return True


def _infer_types_via_file(proto: onnx.ModelProto, path: Path | None, data_prop: bool) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory(prefix="effarch-infer-") as tmp:
        if path is None or proto.functions:
            path = Path(tmp) / "model.onnx"
            onnx.save_model(proto, str(path), save_as_external_data=True, location="model.onnx.data")
        out = Path(tmp) / "inferred.onnx"
        onnx.shape_inference.infer_shapes_path(str(path), str(out), strict_mode=False, data_prop=data_prop)
        return onnx.load(str(out), load_external_data=False)


def dtype_of(elem_type: int, what: str) -> DType:
    try:
        return DType.from_onnx(elem_type)
    except ValueError:
        known = elem_type in onnx.TensorProto.DataType.values()
        name = onnx.TensorProto.DataType.Name(elem_type).lower() if known else f"code {elem_type} (not an ONNX type)"
        raise EffarchError(
            f"{what} has element type {name}, which effarch does not support; supported: "
            f"{', '.join(d.short for d in DType)}") from None


def tensor_type_of(tp: onnx.TypeProto, what: str) -> TensorType | None:
    """The TensorType for an ONNX TypeProto; None when inference left it unknown."""
    kind = tp.WhichOneof("value")
    if kind is None:
        return None
    if kind != "tensor_type":
        kind_name = kind.replace("_type", "")
        raise EffarchError(f"{what} has {kind_name} type, not a tensor; effarch handles tensors only")
    tt = tp.tensor_type
    if tt.elem_type == 0:
        return None
    dtype = dtype_of(tt.elem_type, what)
    if dtype in (DType.I4, DType.U4):
        raise EffarchError(f"{what} has element type {dtype.numpy_name}, which effarch does not support except "
                           f"in constant weights (read by DequantizeLinear); keep 4-bit values inside the model")
    if not tt.HasField("shape"):
        return TensorType(dtype, None)
    dims = tuple(_dim(d) for d in tt.shape.dim)
    if any(isinstance(d, int) and d < 0 for d in dims):
        shown = ", ".join("?" if d is None else str(d) for d in dims)
        raise EffarchError(f"{what} has shape ({shown}) with a negative dimension; give sizes >= 0 (or a "
                           f"name for a dimension that varies)")
    return TensorType(dtype, dims)


def _dim(d: onnx.TensorShapeProto.Dimension) -> Dim:
    kind = d.WhichOneof("value")
    if kind == "dim_value":
        return int(d.dim_value)
    if kind == "dim_param":
        return str(d.dim_param)
    return None


# ---- constants and attributes ---------------------------------------------------------------------

def tensor_to_array(t: onnx.TensorProto, what: str) -> np.ndarray:
    dtype_of(t.data_type, what)
    if any(d < 0 for d in t.dims):
        raise EffarchError(f"{what} has dims {list(t.dims)} with a negative size; the model is damaged")
    try:
        return numpy_helper.to_array(t)
    except ValueError as e:  # the payload does not fill the declared dims
        raise EffarchError(f"{what}: its data does not match its dims {list(t.dims)} ({_first_line(e)}); "
                           f"the model is damaged or was cut short, export it again") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def sparse_to_array(sp: onnx.SparseTensorProto, what: str) -> np.ndarray:
    values = tensor_to_array(sp.values, what)
    indices = numpy_helper.to_array(sp.indices).astype(np.int64)
    dense = np.zeros(tuple(sp.dims), dtype=values.dtype)
    # Indices are either linear positions [NNZ] or coordinates [NNZ, rank].
    flat = indices if indices.ndim == 1 else np.ravel_multi_index(tuple(indices.T), dense.shape)
    dense.reshape(-1)[flat] = values
    return dense


def constant_node_value(node: onnx.NodeProto) -> np.ndarray:
    """The array a Constant node produces, for each of its value_* forms."""
    what = f"Constant node '{node.name or node.output[0]}'"
    attr = node.attribute[0]
    name = attr.name
    if name == "value":
        return tensor_to_array(attr.t, what)
    if name == "sparse_value":
        return sparse_to_array(attr.sparse_tensor, what)
    scalars = {"value_float": np.float32(attr.f), "value_int": np.int64(attr.i)}
    if name in scalars:
        return np.array(scalars[name])
    if name == "value_floats":
        return np.array(list(attr.floats), dtype=np.float32)
    if name == "value_ints":
        return np.array(list(attr.ints), dtype=np.int64)
    raise EffarchError(f"{what} holds a {name} (strings are not supported); effarch supports numeric "
                       f"tensors only")


def attribute_value(attr: onnx.AttributeProto, what: str) -> Any:
    """An attribute as a Python int/float/str, a list of them, or a numpy array."""
    kind = attr.type
    A = onnx.AttributeProto
    if kind == A.TENSOR:
        return tensor_to_array(attr.t, f"attribute '{attr.name}' of {what}")
    if kind == A.SPARSE_TENSOR:
        return sparse_to_array(attr.sparse_tensor, f"attribute '{attr.name}' of {what}")
    if kind in (A.GRAPH, A.GRAPHS, A.TENSORS, A.SPARSE_TENSORS, A.TYPE_PROTO, A.TYPE_PROTOS):
        raise EffarchError(f"attribute '{attr.name}' of {what} has kind {A.AttributeType.Name(kind)}, which "
                           f"effarch does not support")
    value = onnx.helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, list):
        return [v.decode("utf-8") if isinstance(v, bytes) else v for v in value]
    return value


# ---- provenance -----------------------------------------------------------------------------------

def module_path_from_namespace(namespace: str) -> str:
    """torch.onnx's scope string -> the PyTorch module path, e.g. ``layer1.0.conv1``.

    The scope reads ``": __main__.M/layer1: ...Sequential/layer1.0: ...BasicBlock/layer1.0.conv1: ...Conv2d/
    conv2d: aten.conv2d.default"``: segments ``name: type``; the first is the root module (empty
    name), the last the aten op. torch 2.13 writes full paths per segment; a segment holding only a
    relative name (older exporters) is appended to the path so far.
    """
    segments = namespace.split("/")
    path = ""
    for segment in segments[1:-1]:
        name = segment.split(":", 1)[0].strip()
        if name and path and not name.startswith(path + "."):
            name = f"{path}.{name}"
        path = name or path
    return path


def provenance_of(node: onnx.NodeProto) -> Provenance:
    meta = {p.key: p.value for p in node.metadata_props}
    if PROVENANCE_KEY in meta:
        rewrites = tuple(json.loads(meta.get(REWRITES_KEY, "[]")))
        merged = tuple(json.loads(meta.get(MERGED_KEY, "[]")))
        return Provenance(meta[PROVENANCE_KEY], rewrites, merged)
    if TORCH_NAMESPACE_KEY in meta:
        path = module_path_from_namespace(meta[TORCH_NAMESPACE_KEY])
        if path:
            return Provenance(path)
    return Provenance(node.name)


# ---- building the graph ---------------------------------------------------------------------------

class _GraphBuilder:
    """Builds one Graph from a checked GraphProto; ``types`` holds every inferred value type."""

    def __init__(self, types: dict[str, onnx.TypeProto], opset: int,
                 functions: dict[tuple[str, str], onnx.FunctionProto] | None = None) -> None:
        self.types = types
        self.opset = opset
        self.functions = functions or {}
        self.graph = Graph()
        self.env: dict[str, Value] = {}
        self.onnx_names: set[str] = set()

    def build(self, gp: onnx.GraphProto) -> Graph:
        self.graph.name = gp.name or "main"
        self.onnx_names = {n for node in gp.node for n in node.output} | {v.name for v in gp.input}
        self._add_constants(gp)
        for vi in gp.input:
            if vi.name not in self.env:  # old exporters list initializers as inputs too
                self.env[vi.name] = self.graph.add_input(vi.name, self._input_type(vi))
        for node in gp.node:
            self._add_node(node)
        self.graph.outputs = [self._lookup(vi.name, "graph output") for vi in gp.output]
        return self.graph

    def _type(self, name: str, declared: onnx.TypeProto | None = None) -> TensorType | None:
        tp = self.types.get(name, declared)
        return None if tp is None else tensor_type_of(tp, f"value '{name}'")

    def _input_type(self, vi: onnx.ValueInfoProto) -> TensorType:
        t = self._type(vi.name, vi.type)
        if t is None:
            raise EffarchError(f"graph input '{vi.name}' has no tensor type; give it an element type")
        return t

    def _add_constants(self, gp: onnx.GraphProto) -> None:
        for init in gp.initializer:
            array = tensor_to_array(init, f"initializer '{init.name}'")
            _warn_nan(init.name, array)
            self._constant(init.name, array)
        for sp in gp.sparse_initializer:
            self._constant(sp.values.name, sparse_to_array(sp, f"initializer '{sp.values.name}'"))

    def _constant(self, name: str, array: np.ndarray) -> Value:
        v = self.graph.add_constant(name, array)
        self.env[name] = v
        return v

    def _lookup(self, name: str, what: str) -> Value:
        if name in self.env:
            return self.env[name]
        if name in self.onnx_names:  # some node writes it, but not before this use
            raise EffarchError(f"{what} '{name}' is used before the node writing it: the nodes form a cycle or "
                               f"are out of order; ONNX needs them in topological order")
        raise EffarchError(f"{what} '{name}' is not written by any node, graph input or initializer; "
                           f"add what computes it or remove the reference")

    def _add_node(self, node: onnx.NodeProto) -> None:
        if node.op_type == "Constant":
            self._constant(node.output[0], constant_node_value(node))
            return
        what = f"node '{node.name}' ({node.op_type})"
        inputs = [None if n == "" else self._lookup(n, f"input of {what}") for n in node.input]
        while inputs and inputs[-1] is None:
            inputs.pop()
        attrs = {a.name: attribute_value(a, what) for a in node.attribute}
        inputs, attrs = self._normalise(node, inputs, attrs)
        outs = self._outputs(node)
        function = self.functions.get((node.domain, node.op_type))
        if function is not None:
            self.graph.insert(self._group(node, function, inputs, attrs, outs))
            return
        ir_node = Node(node.op_type, inputs, attrs, outs, name=node.name, provenance=provenance_of(node))
        self.graph.insert(ir_node)

    def _group(self, node: onnx.NodeProto, function: onnx.FunctionProto, inputs: list[Value | None],
               attrs: dict[str, Any], outs: list[Value]) -> Node:
        """A group node whose body is ``function``, typed by this call site's input types."""
        types = [v.type if v is not None else None for v in inputs]
        body_proto = _function_graph(function, types)
        body_types = _infer_types(onnx.helper.make_model(
            body_proto, opset_imports=list(function.opset_import), functions=list(self.functions.values()),
            ir_version=onnx.IR_VERSION), None)
        body = _GraphBuilder(body_types, self.opset, self.functions).build(body_proto)
        body.name = function.doc_string or function.name
        op = function.name.rsplit("_", 1)[0]
        return Node(op, inputs, attrs, outs, domain=node.domain, name=node.name,
                    provenance=provenance_of(node), body=body)

    def _outputs(self, node: onnx.NodeProto) -> list[Value]:
        names = list(node.output)
        while names and names[-1] == "":
            names.pop()
        outs: list[Value] = []
        for name in names:
            # An omitted optional output in the middle still needs a value; give it a fresh name.
            v = Value(name, self._type(name)) if name else self.graph.value(
                self._fresh(node, "unused"), self._omitted_output_type(node, len(outs)))
            if not outs and (v.type is None or v.type.shape is None) and node.op_type in SAME_TYPE_AS_INPUT:
                source = self.env.get(node.input[0]) if node.input else None
                v.type = source.type if source is not None else v.type
            if name:
                self.env[name] = v
            outs.append(v)
        return outs

    def _omitted_output_type(self, node: onnx.NodeProto, index: int) -> TensorType | None:
        """The type output ``index`` would have (model-wide inference skips unnamed outputs)."""
        named = onnx.NodeProto()
        named.CopyFrom(node)
        for i, out in enumerate(named.output):  # all at once: Attention infers present_key/value in pairs
            named.output[i] = out or f"{node.op_type}_omitted_output_{i}"
        inputs = {name: onnx.helper.make_tensor_type_proto(v.type.dtype.onnx_code, v.type.shape)
                  for name in node.input if name and (v := self.env.get(name)) is not None and v.type is not None}
        try:
            schema = onnx.defs.get_schema(node.op_type, self.opset, node.domain)
            inferred = onnx.shape_inference.infer_node_outputs(schema, named, inputs)
        except Exception:  # noqa: BLE001  (onnx raises assorted errors; the value then stays untyped)
            return None
        tp = inferred.get(named.output[index])
        return None if tp is None else tensor_type_of(tp, f"output {index} of node '{node.name}'")

    def _fresh(self, node: onnx.NodeProto, suffix: str) -> str:
        """A name for a value the importer adds, clashing with no ONNX name (those come later)."""
        name = f"{node.name or node.op_type}_{suffix}"
        while name in self.onnx_names:
            name += "_"
        return name

    def _normalise(self, node: onnx.NodeProto, inputs: list[Value | None],
                   attrs: dict[str, Any]) -> tuple[list[Value | None], dict[str, Any]]:
        """Rewrite opset-13..20 forms to opset 21 (the IR's semantics)."""
        if self.opset < 18 and node.op_type in AXES_TO_INPUT_AT_18 and "axes" in attrs:
            axes = np.array(attrs.pop("axes"), dtype=np.int64)
            inputs = [inputs[0], self.graph.add_constant(self._fresh(node, "axes"), axes)]
        if self.opset < 18 and node.op_type == "Split" and len(inputs) < 2:
            # Opset 13 splits equally into as many parts as there are outputs; 18 says so explicitly.
            attrs["num_outputs"] = len(node.output)
        return inputs, attrs


def _warn_nan(name: str, array: np.ndarray) -> None:
    """NaN weights compile (the user may want them) but make every output they reach NaN."""
    if array.dtype.kind == "f" and array.size and np.isnan(array).any():
        count = int(np.isnan(array).sum())
        logger.warning("initializer '%s' holds %d NaN value(s) of %d; outputs computed from it will be NaN",
                       name, count, array.size)


# ---- checks of the imported graph -----------------------------------------------------------------

def check_imported(graph: Graph) -> None:
    """Refuse an invalid model here, naming its node, rather than letting TVM fail on it later:
    the verifier's structure and per-op type rules, and no tensor over ``MAX_TENSOR_BYTES``."""
    for v in graph.values():
        nbytes = v.type.nbytes() if v.type is not None else None
        if nbytes is not None and nbytes > MAX_TENSOR_BYTES:
            made_by = f" (output of node '{v.producer.name}')" if v.producer is not None and v.producer.name else ""
            raise EffarchError(f"value '{v.name}'{made_by} is {v.type}, {nbytes / 2**30:.0f} GiB, over effarch's "
                               f"{MAX_TENSOR_BYTES >> 30} GiB per tensor; check the model's dimensions")
    # Types inference could not find are left for lowering; every other problem is the model's.
    problems = [p for p in find_problems(graph) if not p.endswith(" has no type")]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise EffarchError(f"invalid model: {problems[0]}{more}; fix the model or export it again")


def _function_graph(function: onnx.FunctionProto, types: list[TensorType | None]) -> onnx.GraphProto:
    """A function as a graph whose inputs have the call site's types (for inference and building)."""
    def info(name: str, t: TensorType | None) -> onnx.ValueInfoProto:
        if t is None:
            return onnx.helper.make_empty_tensor_value_info(name)
        return onnx.helper.make_tensor_value_info(name, t.dtype.onnx_code, None if t.shape is None else list(t.shape))

    declared = {vi.name: vi for vi in function.value_info}
    outputs = [declared.get(o) or onnx.helper.make_empty_tensor_value_info(o) for o in function.output]
    return onnx.helper.make_graph(list(function.node), function.name,
                                  [info(n, t) for n, t in zip(function.input, types, strict=True)],
                                  outputs, value_info=list(function.value_info))
