"""The pass contract: a frozen context in, a ``PassResult`` out, typed options, honest ``modified``.

A pass subclass implements ``run(graph, ctx)``; callers go through ``pass_(graph, ctx)``, which
adds the honesty check when ``ctx.check_honesty`` is set. Passes keep no state between runs: the
only per-instance data are the options given at construction, which never change afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

from compiler.errors import EffarchError, PassError
from compiler.ir import Graph, Node
from compiler.pass_manager.fingerprint import fingerprint

log = logging.getLogger(__name__)

# List-valued options are written with '+' between items in pipeline text: fuse{patterns=a+b}.
LIST_SEPARATOR = "+"


@dataclass(frozen=True, slots=True)
class Note:
    """Why a rule did not fire on a node, or what it did there."""

    rule: str
    reason: str
    node: str = ""
    provenance: str = ""
    fired: bool = False

    @classmethod
    def at(cls, node: Node, rule: str, reason: str, *, fired: bool = False) -> Note:
        return cls(rule, reason, node.name or repr(node), str(node.provenance), fired)

    def __str__(self) -> str:
        where = f" at {self.node}" if self.node else ""
        origin = f" [{self.provenance}]" if self.provenance and self.provenance != self.node else ""
        verb = "did" if self.fired else "skipped"
        return f"{self.rule}{where}{origin}: {verb}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a pass that effarch's -O tables do not name (a plugin's) joins the default pipelines.

    ``stage``: ``cleanup`` (with simplify and folding: once at -O1, in the fixed-point loop from
    -O2), ``folding`` (after BatchNorm folding, before fusion, from -O2) or ``late`` (after fusion,
    before the last dead-code sweep, from -O2). The pass runs at ``-O<min_level>`` and above.
    """

    stage: str
    min_level: int = 2

    STAGES: ClassVar[tuple[str, ...]] = ("cleanup", "folding", "late")

    def __post_init__(self) -> None:
        if self.stage not in self.STAGES:
            raise ValueError(f"placement stage '{self.stage}' is none of {', '.join(self.STAGES)}")
        if not 1 <= self.min_level <= 3:
            raise ValueError(f"placement min_level {self.min_level} is not an -O level from 1 to 3")
        if self.stage != "cleanup" and self.min_level < 2:
            raise ValueError(f"-O1 has no '{self.stage}' stage (it only cleans up); use min_level=2")


@dataclass(slots=True)
class PassResult:
    graph: Graph
    modified: bool
    notes: list[Note] = field(default_factory=list)


def _frozen_mapping(m: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(m or {}))


@dataclass(frozen=True)
class PassContext:
    """Everything a pass may read besides the graph. Frozen: passes cannot leave state behind here.

    ``options`` are pipeline-wide settings (e.g. a target's preferences) that passes may consult;
    per-pass options come from pipeline text instead.
    """

    opt_level: int = 2
    target: str = "x86"
    disabled: frozenset[str] = frozenset()
    options: Mapping[str, Any] = field(default_factory=_frozen_mapping)
    check_honesty: bool = False
    # The user's data for passes that need it (calibration, accuracy budget): a
    # ``compiler.compression.CompressionData``, or None when the compile was given none.
    data: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "disabled", frozenset(self.disabled))
        object.__setattr__(self, "options", _frozen_mapping(self.options))


class Pass:
    """Base class of every pass.

    Subclasses set ``name`` (kebab-case, as written in pipelines), a one-line ``description`` and
    ``option_defaults`` (option name -> default; the default's type is the option's type: int,
    float, bool, str or tuple[str, ...]), and implement ``run``. A pass from a plugin may set
    ``placement`` to join the -O pipelines; effarch's own passes are placed by ``passes.pipelines``.
    ``tolerance``: the relative error a lossy pass may add (``effarch check-pass`` allows it); 0 for
    passes that keep the numbers.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    option_defaults: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    placement: ClassVar[Placement | None] = None
    tolerance: ClassVar[float] = 0.0

    def __init__(self, **options: Any) -> None:
        values = dict(self.option_defaults)
        for key, raw in options.items():
            if key not in self.option_defaults:
                known = ", ".join(sorted(self.option_defaults)) or "none"
                raise EffarchError(f"pass '{self.name}' has no option '{key}' (its options: {known})")
            values[key] = convert_option(self.name, key, raw, self.option_defaults[key])
        self.options: Mapping[str, Any] = MappingProxyType(values)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        raise NotImplementedError

    def __call__(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Run the pass; with ``ctx.check_honesty``, also check that ``modified`` tells the truth."""
        if not ctx.check_honesty:
            return self.run(graph, ctx)
        before = fingerprint(graph)
        result = self.run(graph, ctx)
        check_honest(self.name, before, fingerprint(result.graph), result.modified)
        return result

    def option_text(self) -> str:
        """The options that differ from their defaults, as written in pipeline text."""
        changed = [(k, v) for k, v in self.options.items() if v != self.option_defaults[k]]
        return ",".join(f"{k}={format_option(v)}" for k, v in changed)

    def __repr__(self) -> str:
        opts = self.option_text()
        return f"{self.name}{{{opts}}}" if opts else self.name


def check_honest(name: str, before: object, after: object, modified: bool) -> None:
    changed = before != after
    if changed and not modified:
        raise PassError(f"pass '{name}' changed the graph but reported modified=False; return modified=True")
    if modified and not changed:
        raise PassError(f"pass '{name}' reported modified=True but the graph is unchanged; "
                        "return modified=False when nothing was rewritten")


def convert_option(pass_name: str, key: str, raw: Any, default: Any) -> Any:
    """Convert an option (a string from pipeline text, or a typed value) to its default's type."""
    kind = type(default)
    try:
        if not isinstance(raw, str):
            return tuple(raw) if kind is tuple else kind(raw)
        if kind is bool:
            return {"true": True, "false": False, "1": True, "0": False}[raw.lower()]
        if kind is tuple:
            return tuple(item for item in raw.split(LIST_SEPARATOR) if item)
        return kind(raw)
    except (KeyError, ValueError, TypeError):
        expected = "true or false" if kind is bool else f"a value of type {kind.__name__}"
        raise EffarchError(f"option '{key}' of pass '{pass_name}' got '{raw}'; expected {expected}") from None


def format_option(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return LIST_SEPARATOR.join(str(v) for v in value)
    return str(value)
