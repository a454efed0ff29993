"""The IR's text form: a stable, line-per-definition rendering that ``parse_graph`` reads back.

```
# producer: effarch
graph main(%x: f32[1,3,8,8], %ids: i64[batch,128]) -> (%y, %a) {
  %w = const f32[64,3,7,7] @a1b2c3d4e5f60718
  %b = const f32[2] [0.5, -1.25]
  %y = Conv(%x, %w, %b) {group=1, pads=[3,3,3,3]} : f32[1,64,2,2]  # layer1.0.conv1 <fuse:conv-bn>
  %a, %c = Split(%y, _) {axis=1, num_outputs=2} : f32[1,32,2,2], f32[1,32,2,2] name="split_3"
}
```

- Names are bare when they match ``[A-Za-z0-9_.:/-]+`` (and are not ``_``), else JSON-quoted.
- Attributes are sorted by key. Floats always carry ``.`` or ``e`` (or are ``nan``/``inf``) and
  print the shortest text that parses back to the same bits; lists print without spaces;
  tensor attributes print as ``tensor<f32[2]>[1.0, 2.0]``.
- A constant prints its values inline when it has at most ``INLINE_LIMIT`` elements, otherwise
  ``@`` and a digest of dtype, shape and bytes; ``@?`` marks a constant with neither.
- The trailing comment is ``str(node.provenance)``; when that text would not parse back to the
  same provenance it is written as ``#= ["source", [rewrites], [merged]]`` instead.
- ``name="..."`` after the types appears only when ``node.name`` differs from the provenance
  source (the parser defaults the name to that source).
- A group node (``node.body``, made by fusion) is followed by its body: a nested ``graph`` block
  indented two more spaces than the node, with its own value names. Bodies carry no metadata.

```
  %r = effarch::FusedConv(%x, %w) : f32[1,8,4,4]  # conv <fuse-operators:conv-act> {conv,relu}
    graph conv_relu(%x: f32[1,3,4,4], %w: f32[8,3,1,1]) -> (%r) {
      %c = Conv(%x, %w) : f32[1,8,4,4]  # conv
      %r = Relu(%c) : f32[1,8,4,4]  # relu
    }
```
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable

import numpy as np

from compiler.ir.core import AttrValue, Node, Provenance, Value
from compiler.ir.graph import Graph
from compiler.ir.types import DType, TensorType

INLINE_LIMIT = 16
BARE_NAME = re.compile(r"[A-Za-z0-9_.:/\-]+")
# Op and domain names may not contain ':' bare, so "domain::Op" splits unambiguously.
BARE_OP = re.compile(r"[A-Za-z0-9_.\-]+")
_REWRITE = re.compile(r"<([^<>]*)>")


def quote_name(name: str) -> str:
    """A value, graph, op or attribute name as written in the text form."""
    if name != "_" and BARE_NAME.fullmatch(name):
        return name
    return json.dumps(name)


def quote_op(name: str) -> str:
    return name if BARE_OP.fullmatch(name) else json.dumps(name)


def constant_digest(array: np.ndarray) -> str:
    """First 16 hex digits of sha256 over the dtype, the shape and the C-order bytes."""
    h = hashlib.sha256()
    h.update(DType.from_numpy(array.dtype).short.encode())
    h.update(repr(tuple(int(d) for d in array.shape)).encode())
    h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()[:16]


def value_digest(v: Value) -> str | None:
    """The digest of a constant's payload, cached in ``v.const_digest``."""
    if v.const_digest is None and v.const is not None:
        v.const_digest = constant_digest(v.const)
    return v.const_digest


# ---- scalars and tensors ----------------------------------------------------------------------
def format_float(x: float) -> str:
    """A Python float, bit-exact and recognisably a float."""
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(float(x))


def _format_element(x: object, dtype: DType) -> str:
    if dtype is DType.BOOL:
        return "true" if x else "false"
    if not dtype.is_float:
        return str(int(x))  # type: ignore[call-overload]  # numpy integer scalar
    if dtype in (DType.F16, DType.F32):
        # numpy prints the shortest digits that round-trip in the element's own precision.
        return str(x)
    return format_float(float(x))  # type: ignore[arg-type]  # f64 and bf16 scalars


def format_elements(array: np.ndarray) -> str:
    """A tensor's elements in C order, flattened: ``[1.0, 2.5]``."""
    dtype = DType.from_numpy(array.dtype)
    return "[" + ", ".join(_format_element(x, dtype) for x in array.reshape(-1)) + "]"


def format_type(t: TensorType | None) -> str:
    return "?" if t is None else str(t)


# ---- attributes -------------------------------------------------------------------------------
def format_attr(value: AttrValue) -> str:
    if isinstance(value, np.ndarray):
        return f"tensor<{TensorType.of(value)}>{format_elements(value)}"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_attr(x) for x in value) + "]"
    if isinstance(value, (float, np.floating)):
        return format_float(float(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    raise TypeError(f"attribute value {value!r} of type {type(value).__name__} has no text form")


def format_attrs(attrs: dict[str, AttrValue]) -> str:
    if not attrs:
        return ""
    items = ", ".join(f"{quote_name(k)}={format_attr(attrs[k])}" for k in sorted(attrs))
    return " {" + items + "}"


# ---- provenance -------------------------------------------------------------------------------
def parse_provenance_text(text: str) -> Provenance:
    """Inverse of ``Provenance.__str__`` for the texts ``format_provenance`` emits bare."""
    merged: tuple[str, ...] = ()
    if text.endswith("}") and "{" in text:
        start = text.rindex("{")
        merged = tuple(text[start + 1 : -1].split(",")) if start + 1 < len(text) - 1 else ("",)
        text = text[:start].rstrip(" ")
    first = text.find(" <") if not text.startswith("<") else 0
    source, rest = (text, "") if first < 0 else (text[:first], text[first:])
    rewrites = tuple(_REWRITE.findall(rest))
    return Provenance(source, rewrites, merged)


def format_provenance(p: Provenance) -> str:
    """The trailing comment for a node, or "" for an empty provenance."""
    if p == Provenance():
        return ""
    text = str(p)
    readable = text == text.strip() and text.isprintable() and not text.startswith("=")
    if readable and parse_provenance_text(text) == p:
        return "  # " + text
    return "  #= " + json.dumps([p.source, list(p.rewrites), list(p.merged)])


# ---- lines ------------------------------------------------------------------------------------
def _ref(v: Value | None) -> str:
    return "_" if v is None else "%" + quote_name(v.name)


def _refs(values: Iterable[Value | None]) -> str:
    return ", ".join(_ref(v) for v in values)


def format_constant(v: Value) -> str:
    head = f"  {_ref(v)} = const {format_type(v.type)} "
    if v.const is not None and v.const.size <= INLINE_LIMIT:
        return head + format_elements(v.const)
    digest = value_digest(v)
    return head + "@" + (digest if digest is not None else "?")


def format_node(n: Node) -> str:
    domain = quote_op(n.domain) + "::" if n.domain else ""
    line = f"  {_refs(n.outputs)} = " if n.outputs else "  "
    line += f"{domain}{quote_op(n.op)}({_refs(n.inputs)}){format_attrs(n.attrs)}"
    if n.outputs:
        line += " : " + ", ".join(format_type(v.type) for v in n.outputs)
    if n.name != n.provenance.source:
        line += " name=" + json.dumps(n.name)
    return line + format_provenance(n.provenance)


def format_body(n: Node) -> list[str]:
    """The nested block of a group node: its body's text, two spaces deeper than the node line."""
    if n.body is None:
        return []
    return ["    " + line for line in _graph_lines(n.body, metadata=False)]


def format_metadata(key: str, value: str) -> str:
    value = str(value)
    plain = value and value == value.strip() and value.isprintable() and not value.startswith('"')
    return f"# {quote_op(key)}: {value if plain else json.dumps(value)}"


def format_header(g: Graph) -> str:
    ins = ", ".join(f"{_ref(v)}: {format_type(v.type)}" for v in g.inputs)
    return f"graph {quote_name(g.name)}({ins}) -> ({_refs(g.outputs)}) {{"


def _graph_lines(g: Graph, *, metadata: bool = True) -> list[str]:
    lines = [format_metadata(k, v) for k, v in g.metadata.items()] if metadata else []
    lines.append(format_header(g))
    lines += [format_constant(v) for v in g.constants.values()]
    for n in g.nodes:
        lines.append(format_node(n))
        lines += format_body(n)
    lines.append("}")
    return lines


def print_graph(g: Graph) -> str:
    """The graph's text form, one definition per line, ending with a newline."""
    return "\n".join(_graph_lines(g)) + "\n"
