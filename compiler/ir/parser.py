"""Reads the text form written by ``compiler.ir.printer`` back into a ``Graph``.

``print_graph(parse_graph(s)) == s`` for every printed ``s``. Hand-written texts may also use
forward references (a node input defined by a later line), blank lines and ``#`` comment lines
in the body. A ``graph`` line inside a body opens the nested body of the node just above it; the
block ends at the ``}`` indented like that ``graph`` line and is parsed as a graph of its own.
Errors are ``ParseError`` with ``line N, col M:`` and what was expected.
"""

from __future__ import annotations

import json
import re

import numpy as np

from compiler.errors import EffarchError
from compiler.ir.core import AttrValue, Node, Provenance, Value
from compiler.ir.graph import Graph
from compiler.ir.printer import constant_digest, parse_provenance_text
from compiler.ir.types import Dim, DType, TensorType

_STR = r'"(?:[^"\\]|\\.)*"'
_SPACES = re.compile(r"[ \t]*")
_REF = re.compile(r"%(?:([A-Za-z0-9_.:/\-]+)|(" + _STR + "))")
_OP = re.compile(r"([A-Za-z0-9_.\-]+)|(" + _STR + ")")
_NAME = re.compile(r"([A-Za-z0-9_.:/\-]+)|(" + _STR + ")")
_STRING = re.compile(_STR)
_NUMBER = re.compile(r"-?(?:inf|nan|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)")
_INT = re.compile(r"-?\d+")
_TYPE = re.compile(r"\?|([a-z0-9]+)\[([^\]]*)\]")
_DIGEST = re.compile(r"@([0-9a-f]{16}|\?)")
_ELEMENT = re.compile(r"-?(?:inf|nan|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)|true|false")


class ParseError(EffarchError):
    """The IR text is malformed; the message says where and what was expected."""


class _Cursor:
    """A position in one line; every ``expect``/``take`` skips spaces first."""

    __slots__ = ("text", "pos", "lineno")

    def __init__(self, text: str, lineno: int) -> None:
        self.text, self.pos, self.lineno = text, 0, lineno

    def error(self, expected: str) -> ParseError:
        rest = self.text[self.pos : self.pos + 20]
        found = f"'{rest}'" if rest else "end of line"
        return ParseError(f"line {self.lineno}, col {self.pos + 1}: expected {expected}, found {found}")

    def skip(self) -> None:
        self.pos = _SPACES.match(self.text, self.pos).end()  # type: ignore[union-attr]  # always matches

    def at(self, literal: str) -> bool:
        self.skip()
        return self.text.startswith(literal, self.pos)

    def take(self, literal: str) -> bool:
        if self.at(literal):
            self.pos += len(literal)
            return True
        return False

    def expect(self, literal: str) -> None:
        if not self.take(literal):
            raise self.error(f"'{literal}'")

    def match(self, pattern: re.Pattern[str], expected: str) -> re.Match[str]:
        self.skip()
        m = pattern.match(self.text, self.pos)
        if m is None:
            raise self.error(expected)
        self.pos = m.end()
        return m

    def end(self) -> None:
        self.skip()
        if self.pos != len(self.text):
            raise self.error("end of line")

    def rest(self) -> str:
        text, self.pos = self.text[self.pos :], len(self.text)
        return text


def _unquote(m: re.Match[str], cur: _Cursor) -> str:
    """The name matched as group 1 (bare) or group 2 (JSON string)."""
    if m.group(1) is not None:
        return m.group(1)
    return _json_string(m.group(2), cur)


def _json_string(text: str, cur: _Cursor) -> str:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise cur.error(f"a valid JSON string ({e.msg})") from None
    return str(value)


# ---- types and tensors ------------------------------------------------------------------------
def _dtype(short: str, cur: _Cursor) -> DType:
    try:
        return DType.from_short(short)
    except ValueError as e:
        raise cur.error(f"a dtype ({e})") from None


def _dim(text: str) -> Dim:
    text = text.strip()
    if text == "?":
        return None
    return int(text) if _INT.fullmatch(text) else text


def parse_type(cur: _Cursor) -> TensorType | None:
    m = cur.match(_TYPE, "a type such as f32[1,?,n], f32[*] or ?")
    if m.group(1) is None:
        return None
    cur.pos, end = m.start(), m.end()  # so that a dtype error points at the type
    dtype, dims, cur.pos = _dtype(m.group(1), cur), m.group(2), end
    if dims == "*":
        return TensorType(dtype, None)
    return TensorType(dtype, tuple(_dim(d) for d in dims.split(",")) if dims else ())


def _element(text: str, cur: _Cursor) -> float | int | bool:
    if text in ("true", "false"):
        return text == "true"
    return int(text) if _INT.fullmatch(text) else float(text)


def parse_elements(cur: _Cursor, t: TensorType) -> np.ndarray:
    """``[e0, e1, ...]`` in C order, shaped by the static type ``t``."""
    cur.skip()
    start = cur.pos
    cur.expect("[")
    close = cur.text.find("]", cur.pos)
    if close < 0:
        raise cur.error("']' closing the tensor elements")
    body = cur.text[cur.pos : close]
    items = [s.strip() for s in body.split(",")] if body.strip() else []
    for item in items:
        if not _ELEMENT.fullmatch(item):
            raise cur.error(f"a number, true or false (got '{item}')")
    if not t.is_static or len(items) != t.numel():
        cur.pos = start
        raise cur.error(f"{t.numel() if t.is_static else 'a static shape with its'} elements for {t}")
    cur.pos = close + 1
    values = [_element(s, cur) for s in items]
    return np.array(values, dtype=t.dtype.numpy).reshape(t.static_shape())


# ---- attributes -------------------------------------------------------------------------------
def parse_attr_value(cur: _Cursor) -> AttrValue:
    if cur.take("tensor<"):
        t = parse_type(cur)
        cur.expect(">")
        if t is None:
            raise cur.error("a tensor type")
        return parse_elements(cur, t)
    if cur.at('"'):
        return _json_string(cur.match(_STRING, "a string").group(0), cur)
    if cur.take("["):
        items: list[AttrValue] = []
        while not cur.take("]"):
            if items:
                cur.expect(",")
            items.append(parse_attr_value(cur))
        return items
    text = cur.match(_NUMBER, "an attribute value (number, string, list or tensor<...>)").group(0)
    return int(text) if _INT.fullmatch(text) else float(text)


def parse_attrs(cur: _Cursor) -> dict[str, AttrValue]:
    attrs: dict[str, AttrValue] = {}
    if not cur.take("{"):
        return attrs
    while not cur.take("}"):
        if attrs:
            cur.expect(",")
        key = _unquote(cur.match(_NAME, "an attribute name"), cur)
        if key in attrs:
            raise cur.error(f"a new attribute name ('{key}' is repeated)")
        cur.expect("=")
        attrs[key] = parse_attr_value(cur)
    return attrs


def parse_provenance(cur: _Cursor) -> Provenance:
    if not cur.take("#"):
        return Provenance()
    if not cur.take("="):
        return parse_provenance_text(cur.rest().strip())
    try:
        source, rewrites, merged = json.loads(cur.rest())
        return Provenance(str(source), tuple(rewrites), tuple(merged))
    except (json.JSONDecodeError, ValueError, TypeError):
        raise cur.error('#= ["source", [rewrites], [merged]]') from None


# ---- lines and the graph ---------------------------------------------------------------------
class _GraphParser:
    """Builds the graph line by line; values may be used before the line that defines them."""

    def __init__(self, text: str, constants: dict[str, np.ndarray], line_offset: int = 0) -> None:
        self.lines = text.split("\n")
        self.line_offset = line_offset
        self.constants = constants
        self.graph = Graph()
        self.values: dict[str, Value] = {}
        self.defined: set[str] = set()
        self.first_use: dict[str, tuple[int, int]] = {}
        self.output_refs: list[Value] = []

    # ---- values -------------------------------------------------------------------------------
    def ref(self, cur: _Cursor) -> str:
        return _unquote(cur.match(_REF, "a value such as %x or %\"a b\""), cur)

    def use(self, name: str, cur: _Cursor) -> Value:
        v = self.values.get(name)
        if v is None:
            v = self.values[name] = Value(name)
            self.first_use[name] = (cur.lineno, cur.pos)
        return v

    def define(self, name: str, cur: _Cursor) -> Value:
        if name in self.defined:
            raise cur.error(f"a new value name (%{name} is already defined)")
        self.defined.add(name)
        self.graph._names.add(name)  # names are unique by the check above
        return self.values.get(name) or self.values.setdefault(name, Value(name))

    # ---- header and metadata ------------------------------------------------------------------
    def metadata(self, cur: _Cursor) -> None:
        cur.expect("#")
        key = _unquote(cur.match(_OP, "a metadata key"), cur)
        cur.expect(":")
        cur.skip()
        raw = cur.rest()
        self.graph.metadata[key] = _json_string(raw, cur) if raw.startswith('"') else raw

    def header_input(self, cur: _Cursor) -> None:
        m = cur.match(_REF, "a graph input such as %x: f32[1,3]")
        name = _unquote(m, cur)
        # A bare name may end in ':'; in "%x: f32" the greedy match swallowed the separator.
        if m.group(1) is not None and name.endswith(":"):
            name = name[:-1]
        else:
            cur.expect(":")
        v = self.define(name, cur)
        v.type = parse_type(cur)
        self.graph.inputs.append(v)

    def header(self, cur: _Cursor) -> None:
        cur.expect("graph")
        self.graph.name = _unquote(cur.match(_NAME, "the graph name"), cur)
        cur.expect("(")
        while not cur.take(")"):
            if self.graph.inputs:
                cur.expect(",")
            self.header_input(cur)
        cur.expect("->")
        cur.expect("(")
        while not cur.take(")"):
            if self.output_refs:
                cur.expect(",")
            self.output_refs.append(self.use(self.ref(cur), cur))
        cur.expect("{")
        cur.end()

    # ---- body lines ---------------------------------------------------------------------------
    def constant(self, cur: _Cursor, name: str) -> None:
        v = self.define(name, cur)
        v.type = parse_type(cur)
        if cur.at("["):
            if v.type is None:
                raise cur.error("a constant type before its elements")
            v.const = parse_elements(cur, v.type)
        else:
            digest = cur.match(_DIGEST, "'[' elements or '@' and a 16-digit digest").group(1)
            if digest != "?":
                self.attach_payload(cur, v, digest)
        cur.end()
        self.graph.constants[name] = v

    def attach_payload(self, cur: _Cursor, v: Value, digest: str) -> None:
        array = self.constants.get(v.name)
        if array is not None:
            if constant_digest(array) != digest:
                raise cur.error(f"a payload for %{v.name} with digest {digest} (the one given differs)")
            v.const = array
        v.const_digest = digest

    def node(self, cur: _Cursor, outs: list[str]) -> None:
        op = _unquote(cur.match(_OP, "an op name"), cur)
        domain = ""
        if cur.take("::"):
            domain, op = op, _unquote(cur.match(_OP, "an op name after '::'"), cur)
        inputs = self.operands(cur)
        attrs = parse_attrs(cur)
        types = self.result_types(cur, len(outs))
        name = _json_string(cur.match(_STRING, "a node name").group(0), cur) if cur.take("name=") else None
        prov = parse_provenance(cur)
        cur.end()
        values = [self.define(o, cur) for o in outs]
        for v, t in zip(values, types, strict=True):
            v.type = t
        node = Node(op, inputs, attrs, values, domain=domain, provenance=prov,
                    name=prov.source if name is None else name)
        self.graph.insert(node)

    def operands(self, cur: _Cursor) -> list[Value | None]:
        cur.expect("(")
        inputs: list[Value | None] = []
        while not cur.take(")"):
            if inputs:
                cur.expect(",")
            inputs.append(None if cur.take("_") else self.use(self.ref(cur), cur))
        return inputs

    def result_types(self, cur: _Cursor, count: int) -> list[TensorType | None]:
        if count == 0:
            return []
        cur.expect(":")
        types = [parse_type(cur)]
        while len(types) < count:
            cur.expect(",")
            types.append(parse_type(cur))
        return types

    def body_line(self, cur: _Cursor) -> None:
        if not cur.at("%"):
            self.node(cur, [])
            return
        outs = [self.ref(cur)]
        while cur.take(","):
            outs.append(self.ref(cur))
        cur.expect("=")
        if cur.take("const ") and len(outs) == 1:
            self.constant(cur, outs[0])
        else:
            self.node(cur, outs)

    # ---- driver -------------------------------------------------------------------------------
    def parse(self) -> Graph:
        i = self.skip_blank(0)
        while i < len(self.lines) and self.lines[i].lstrip().startswith("#"):
            self.metadata(_Cursor(self.lines[i], i + 1))
            i = self.skip_blank(i + 1)
        if i == len(self.lines):
            raise ParseError(f"line {self.line_offset + i}, col 1: expected 'graph', found end of text")
        self.header(_Cursor(self.lines[i], self.line_offset + i + 1))
        i += 1
        while True:
            if i == len(self.lines):
                raise ParseError(f"line {self.line_offset + i}, col 1: expected '}}' closing the graph, "
                                 "found end of text")
            stripped = self.lines[i].strip()
            if stripped == "}":
                break
            if stripped.startswith("graph ") or stripped.startswith("graph\t"):
                i = self.nested_body(i)
            elif stripped and not stripped.startswith("#"):
                self.body_line(_Cursor(self.lines[i], self.line_offset + i + 1))
            i += 1
        if self.skip_blank(i + 1) != len(self.lines):
            raise ParseError(f"line {self.line_offset + self.skip_blank(i + 1) + 1}, col 1: "
                             "expected end of text after '}'")
        return self.finish()

    def nested_body(self, start: int) -> int:
        """Parse the body block opening at line ``start`` into the last node; return its last line."""
        line = self.lines[start]
        indent = line[: len(line) - len(line.lstrip())]
        end = start + 1
        while end < len(self.lines) and self.lines[end] != indent + "}":
            end += 1
        owner = self.graph.nodes[-1] if self.graph.nodes else None
        if owner is None or owner.body is not None:
            raise ParseError(f"line {self.line_offset + start + 1}, col {len(indent) + 1}: expected a node "
                             "line before this body (a body follows the group node that owns it)")
        block = "\n".join(s[len(indent):] if s.startswith(indent) else s for s in self.lines[start:end + 1])
        owner.body = _GraphParser(block, self.constants, self.line_offset + start).parse()
        return end

    def skip_blank(self, i: int) -> int:
        while i < len(self.lines) and not self.lines[i].strip():
            i += 1
        return i

    def finish(self) -> Graph:
        for name, (line, col) in self.first_use.items():
            if name not in self.defined:
                raise ParseError(f"line {line}, col {col + 1}: value %{name} is used but never defined; "
                                 "define it as a graph input, a constant or a node output")
        self.graph.outputs = self.output_refs
        return self.graph


def parse_graph(text: str, constants: dict[str, np.ndarray] | None = None) -> Graph:
    """Parse the IR text form. ``constants`` supplies payloads of digest (``@...``) constants by
    name; a digest constant without one keeps ``const=None`` and its ``const_digest``."""
    return _GraphParser(text, constants or {}).parse()
