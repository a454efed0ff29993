"""Pipeline text: a readable, round-tripping description of which passes run in which order.

Grammar (spaces between tokens are allowed and dropped in the canonical form)::

    pipeline := [ element { "," element } ]
    element  := group | pass
    group    := "fixpoint" "<" INT ">" "(" pipeline ")"     repeat until nothing changes, at most INT rounds
    pass     := NAME [ "{" option { "," option } "}" ]
    option   := KEY "=" VALUE
    NAME     := kebab-case, e.g. fold-constants            ("fixpoint" is reserved)
    KEY      := [a-z_][a-z0-9_-]*
    VALUE    := [A-Za-z0-9_.+:/-]+                          list items are joined with "+"

Example: ``fold-constants,fixpoint<8>(fuse{patterns=conv-bn-relu,max=3},eliminate-dead-code)``.
``str(parse_pipeline(text)) == text`` for canonical text (no spaces, options as written).
Errors name the 1-based column.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NoReturn

from compiler.errors import EffarchError
from compiler.pass_manager.base import Pass
from compiler.pass_manager.registry import get_pass

_NAME = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
_KEY = re.compile(r"[a-z_][a-z0-9_-]*")
_VALUE = re.compile(r"[A-Za-z0-9_.+:/-]+")
_INT = re.compile(r"[0-9]+")
GROUP_KEYWORD = "fixpoint"


@dataclass(frozen=True)
class PassSpec:
    """One pass as written: its name and its options as text, in the order given."""

    name: str
    options: tuple[tuple[str, str], ...] = ()
    column: int = field(default=0, compare=False)

    def __str__(self) -> str:
        if not self.options:
            return self.name
        return self.name + "{" + ",".join(f"{k}={v}" for k, v in self.options) + "}"


@dataclass(frozen=True)
class FixpointGroup:
    """Elements repeated until a whole round modifies nothing, or ``cap`` rounds have run."""

    cap: int
    elements: tuple[PassSpec | FixpointGroup, ...]

    def __str__(self) -> str:
        return f"{GROUP_KEYWORD}<{self.cap}>(" + ",".join(str(e) for e in self.elements) + ")"


@dataclass(frozen=True)
class Pipeline:
    elements: tuple[PassSpec | FixpointGroup, ...] = ()

    def __str__(self) -> str:
        return ",".join(str(e) for e in self.elements)

    def specs(self) -> Iterator[PassSpec]:
        """Every pass spec, groups flattened, in text order."""
        yield from _walk(self.elements)


def _walk(elements: tuple[PassSpec | FixpointGroup, ...]) -> Iterator[PassSpec]:
    for e in elements:
        if isinstance(e, FixpointGroup):
            yield from _walk(e.elements)
        else:
            yield e


def parse_pipeline(text: str, *, check: bool = True) -> Pipeline:
    """Parse pipeline text; with ``check``, also resolve every pass and its options now."""
    pipeline = Pipeline(_Parser(text).parse())
    if check:
        for spec in pipeline.specs():
            try:
                get_pass(spec.name, **dict(spec.options))
            except EffarchError as exc:
                raise EffarchError(f"pipeline column {spec.column}: {exc}") from None
    return pipeline


def parse_one_pass(text: str, what: str = "a pass", hint: str = "") -> tuple[PassSpec, Pass]:
    """One pass with its options (``fold-constants{size_limit=4096}``), as its spec and an instance."""
    pipeline = parse_pipeline(text)
    specs = list(pipeline.specs())
    if len(pipeline.elements) != 1 or len(specs) != 1:
        raise EffarchError(f"{what} takes one pass, e.g. {what} fold-constants, not '{text}'{hint}")
    return specs[0], get_pass(specs[0].name, **dict(specs[0].options))


class _Parser:
    """Recursive descent over the grammar above; ``pos`` is a 0-based index into ``text``."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def parse(self) -> tuple[PassSpec | FixpointGroup, ...]:
        elements = self.elements(closing=None)
        if self.peek() != "":
            self.fail(f"unexpected '{self.peek()}'")
        return elements

    def elements(self, closing: str | None) -> tuple[PassSpec | FixpointGroup, ...]:
        if self.peek() in ("", closing):
            return ()
        out = [self.element()]
        while self.peek() == ",":
            self.pos += 1
            out.append(self.element())
        return tuple(out)

    def element(self) -> PassSpec | FixpointGroup:
        column = self.column()
        name = self.match(_NAME, "a pass name")
        if name == GROUP_KEYWORD:
            return self.group()
        options = self.options() if self.peek() == "{" else ()
        return PassSpec(name, options, column)

    def group(self) -> FixpointGroup:
        self.expect("<")
        cap_column = self.column()
        cap = int(self.match(_INT, "a round limit (an integer)"))
        if cap < 1:
            self.fail("a fixpoint round limit must be at least 1", cap_column)
        self.expect(">")
        self.expect("(")
        body = self.elements(closing=")")
        if not body:
            self.fail("a fixpoint group needs at least one pass")
        self.expect(")")
        return FixpointGroup(cap, body)

    def options(self) -> tuple[tuple[str, str], ...]:
        self.expect("{")
        out = [self.option(())]
        while self.peek() == ",":
            self.pos += 1
            out.append(self.option(tuple(k for k, _ in out)))
        self.expect("}")
        return tuple(out)

    def option(self, seen: tuple[str, ...]) -> tuple[str, str]:
        column = self.column()
        key = self.match(_KEY, "an option name")
        if key in seen:
            self.fail(f"option '{key}' is given twice", column)
        self.expect("=")
        return key, self.match(_VALUE, f"a value for option '{key}'")

    # ---- tokens -------------------------------------------------------------------------------
    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip_space()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def column(self) -> int:
        self.skip_space()
        return self.pos + 1

    def expect(self, char: str) -> None:
        if self.peek() != char:
            self.fail(f"expected '{char}'")
        self.pos += 1

    def match(self, pattern: re.Pattern[str], what: str) -> str:
        self.skip_space()
        m = pattern.match(self.text, self.pos)
        if m is None:
            self.fail(f"expected {what}")
        self.pos = m.end()
        return m.group(0)

    def fail(self, message: str, column: int | None = None) -> NoReturn:
        col = column if column is not None else self.column()
        found = repr(self.text[col - 1]) if col - 1 < len(self.text) else "the end"
        raise EffarchError(f"pipeline syntax error at column {col} (found {found}): {message} "
                           f"in {self.text!r}")
