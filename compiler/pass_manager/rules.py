"""The rule framework: effarch's one style for local rewrites, used by every rule-based pass.

A ``Rule`` is data: a name, a one-line law, the ops it anchors on, a ``match`` and a ``rewrite``::

    RELU_RELU = Rule(
        "relu-relu", "Relu(Relu(x)) -> Relu(x)", anchors=("Relu",),
        match=lambda n: forward(n, n.inputs[0]) if producer(n.inputs[0], "Relu") else None)

``match(node)`` is called only on nodes whose op is one of ``anchors`` and returns
- ``None``: the node is no candidate at all (the pattern's shape is absent; nothing to explain);
- a reason string: a near-miss, the pattern is there but a check failed ("weight is not
  constant", "conv output has 2 users"); it becomes a Note so `effarch explain` can list it;
- a ``Match``: the rule applies. ``Match.forward`` set and no ``rewrite`` means "replace the
  anchor's output by this existing value"; otherwise ``rewrite(rw, match)`` builds the
  replacement through the ``Rewriter`` it is given.

Anchor a multi-node pattern on its *last* node (its root): the Rewriter inserts new nodes just
before the anchor, where every input of the pattern is already defined.

A ``RuleSet`` (a ``Pass``) sweeps the graph in order, applies the first rule that matches each
node, and repeats until a sweep fires nothing (at most ``max_sweeps``), so a second run of the
pass changes nothing. It records a fired Note per rewrite and a skipped Note per near-miss of the
last sweep (the near-misses of the graph it returns), sets provenance on new nodes with
``Provenance.rewritten(pass, rule, merged=...)``, and erases the anchor and absorbed nodes once
their outputs are unused. Anything else that becomes dead is left to eliminate-dead-code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np

from compiler.errors import EffarchError
from compiler.ir import Graph, Node, Provenance, TensorType, Value
from compiler.ir.core import AttrValue
from compiler.pass_manager.base import Note, Pass, PassContext, PassResult

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Match:
    """A rule's hit on ``anchor``.

    ``absorbed``: the other pattern nodes the rewrite replaces; their provenance sources are merged
    into the new nodes' provenance and they are erased once unused. ``origin``: the node whose
    provenance the new nodes continue (default: the anchor; for Conv+BN folding, the Conv).
    ``forward``: for rewrites that replace the anchor's output by an existing value.
    ``bind``: whatever the match computed that the rewrite needs (values, arrays, attributes).
    ``detail``: added to the fired Note after the rule's law.
    """

    anchor: Node
    absorbed: tuple[Node, ...] = ()
    origin: Node | None = None
    forward: Value | None = None
    bind: Mapping[str, Any] = field(default_factory=dict)
    detail: str = ""

    @property
    def nodes(self) -> tuple[Node, ...]:
        return (self.anchor, *self.absorbed)


MatchResult = Match | str | None
Matcher = Callable[[Node], MatchResult]
Rewrite = Callable[["Rewriter", Match], None]


@dataclass(frozen=True, slots=True)
class Rule:
    """A local rewrite: ``law`` states it in one line, e.g. ``"Mul(x, 1) -> x"``."""

    name: str
    law: str
    anchors: tuple[str, ...]
    match: Matcher
    rewrite: Rewrite | None = None  # None: replace the anchor's output by ``match.forward``


class Rewriter:
    """What a rule's rewrite may do to the graph: add nodes and constants, replace values.

    New nodes go just before the anchor and carry the origin's provenance extended by
    ``pass:rule``, with every other matched node's sources merged in.
    """

    def __init__(self, graph: Graph, pass_name: str, rule: Rule, match: Match) -> None:
        self.graph = graph
        self.match = match
        origin = match.origin or match.anchor
        merged = tuple(s for n in match.nodes if n is not origin for s in _sources(n.provenance))
        self.provenance = origin.provenance.rewritten(pass_name, rule.name, merged=merged)
        self.created: list[Node] = []
        self._unnamed: set[int] = set()  # ids of rw.node outputs that may take a replaced value's name

    def node(self, op: str, inputs: Iterable[Value | None], attrs: dict[str, AttrValue] | None = None, *,
             types: Sequence[TensorType | None], domain: str = "", name: str = "",
             output_names: Sequence[str] | None = None) -> Node:
        """A new node before the anchor; returns it (its outputs are ``node.outputs``)."""
        node = self.graph.make_node(op, inputs, attrs, num_outputs=len(types), types=list(types),
                                    domain=domain, name=name or self.match.anchor.name,
                                    provenance=self.provenance, before=self.match.anchor,
                                    output_names=list(output_names) if output_names else None)
        self.created.append(node)
        if not output_names:
            self._unnamed.update(id(v) for v in node.outputs)
        return node

    def insert(self, node: Node) -> Node:
        """Insert a node built by hand (e.g. a group node with a body), with this rewrite's provenance."""
        node.provenance = self.provenance
        self.created.append(node)
        return self.graph.insert(node, before=self.match.anchor)

    def constant(self, hint: str, array: np.ndarray) -> Value:
        """A new read-only constant named after ``hint``."""
        array = np.array(array, copy=True)
        array.flags.writeable = False
        return self.graph.add_constant(hint, array)

    def replace(self, old: Value, new: Value) -> None:
        """Every use of ``old`` (graph outputs included) now reads ``new``.

        A graph output keeps its name: ``new`` takes it (names are the model's interface). So does a
        value replaced by an unnamed output of ``node()``, which keeps printed IR readable.
        """
        refusal = forward_refusal(self.graph, old, new)
        if refusal:
            raise EffarchError(f"rule rewrite cannot replace %{old.name}: {refusal}; check it in match")
        if old in self.graph.outputs or id(new) in self._unnamed:
            old.name, new.name = new.name, old.name
            self._unnamed.discard(id(new))
        self.graph.replace_value(old, new)


def _sources(p: Provenance) -> tuple[str, ...]:
    return tuple(s for s in (p.source, *p.merged) if s)


def forward_refusal(graph: Graph, old: Value, new: Value) -> str | None:
    """Why ``old`` cannot be replaced by ``new``, or None.

    The types must agree where both are known; a graph output can only be replaced by a node
    output that is not already a graph output, since that value takes over the output's name.
    """
    if old.type is not None and new.type is not None and old.type != new.type:
        return f"%{new.name} is {new.type} but %{old.name} is {old.type}"
    if old in graph.outputs and (new.producer is None or new in graph.outputs):
        return f"%{old.name} is a graph output and %{new.name} cannot take its name"
    return None


class RuleSet(Pass):
    """A pass made of rules. Subclasses set ``name``, ``description`` and ``rules``.

    Options: ``rules`` restricts the pass to the named rules (pipeline text: ``simplify{rules=a+b}``);
    ``max_sweeps`` caps the sweeps over the graph.
    """

    rules: ClassVar[tuple[Rule, ...]] = ()
    option_defaults: ClassVar[Mapping[str, Any]] = MappingProxyType({"rules": (), "max_sweeps": 16})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        known = {r.name for r in self.rules}
        unknown = [r for r in self.options.get("rules", ()) if r not in known]
        if unknown:
            raise EffarchError(f"pass '{self.name}' has no rule '{unknown[0]}' "
                               f"(its rules: {', '.join(sorted(known))})")

    def active_rules(self) -> tuple[Rule, ...]:
        chosen = self.options.get("rules", ())
        return tuple(r for r in self.rules if not chosen or r.name in chosen)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        by_op = anchor_table(self.active_rules())
        fired: list[Note] = []
        for sweep in range(int(self.options.get("max_sweeps", 16))):
            near: list[Note] = []
            count = self.sweep(graph, by_op, fired, near)
            if count == 0:
                return PassResult(graph, bool(fired), fired + near)
            log.debug("%s: sweep %d fired %d rules", self.name, sweep + 1, count)
        log.warning("%s: still rewriting after %d sweeps; stopped", self.name, self.options.get("max_sweeps"))
        return PassResult(graph, bool(fired), fired)

    def sweep(self, graph: Graph, by_op: Mapping[str, list[Rule]], fired: list[Note], near: list[Note]) -> int:
        """One pass over the nodes; returns how many rules fired."""
        count = 0
        for node in graph.nodes_snapshot():
            if node.graph is not graph or is_dead(graph, node):
                continue  # erased by an earlier rewrite, or dead: eliminate-dead-code's business
            for rule in by_op.get(node.qualified_op, ()):
                outcome = self.try_rule(graph, rule, node)
                if isinstance(outcome, Note) and outcome.fired:
                    fired.append(outcome)
                    count += 1
                    break
                if outcome is not None:
                    near.append(outcome)
        return count

    def try_rule(self, graph: Graph, rule: Rule, node: Node) -> Note | None:
        """Apply ``rule`` at ``node``: a fired Note, a near-miss Note, or None (no candidate)."""
        outcome = rule.match(node)
        if outcome is None:
            return None
        if isinstance(outcome, str):
            return Note.at(node, rule.name, outcome)
        if rule.rewrite is None:
            refusal = forward_check(graph, outcome)
            if refusal:
                return Note.at(node, rule.name, refusal)
        note = Note.at(node, rule.name, rule.law + (f": {outcome.detail}" if outcome.detail else ""), fired=True)
        apply(graph, self.name, rule, outcome)
        return note


def forward_check(graph: Graph, m: Match) -> str | None:
    if m.forward is None:
        return "rule has neither a rewrite nor a value to forward"
    return forward_refusal(graph, m.anchor.outputs[0], m.forward)


def apply(graph: Graph, pass_name: str, rule: Rule, m: Match) -> None:
    rw = Rewriter(graph, pass_name, rule, m)
    if rule.rewrite is None:
        assert m.forward is not None  # forward_check ran
        rw.replace(m.anchor.outputs[0], m.forward)
    else:
        rule.rewrite(rw, m)
    erase_unused(graph, m.nodes)


def erase_unused(graph: Graph, nodes: Iterable[Node]) -> None:
    """Erase the matched nodes nothing uses any more, users before producers."""
    pending = [n for n in nodes if n.graph is graph]
    progress = True
    while pending and progress:
        progress = False
        for n in list(pending):
            if is_dead(graph, n):
                graph.remove_node(n)
                pending.remove(n)
                progress = True


def anchor_table(rules: Iterable[Rule]) -> dict[str, list[Rule]]:
    table: dict[str, list[Rule]] = {}
    for r in rules:
        for op in r.anchors:
            table.setdefault(op, []).append(r)
    return table


# ---- helpers for writing matchers --------------------------------------------------------------
def is_dead(graph: Graph, node: Node) -> bool:
    return all(not v.uses and v not in graph.outputs for v in node.outputs)


def forward(node: Node, value: Value | None, detail: str = "", absorbed: tuple[Node, ...] = ()) -> Match | None:
    """A match that replaces ``node``'s output by ``value`` (None when the input is omitted).

    ``absorbed``: the pattern's inner nodes, erased too once nothing else uses them.
    """
    return None if value is None else Match(node, absorbed=absorbed, forward=value, detail=detail)


def producer(v: Value | None, *ops: str) -> Node | None:
    """The node producing ``v`` when its op is one of ``ops`` (default domain), else None."""
    if v is None or v.producer is None or v.producer.domain:
        return None
    return v.producer if v.producer.op in ops else None


def const(v: Value | None) -> np.ndarray | None:
    """The payload of a constant input, or None (not a constant, or a digest without payload)."""
    return None if v is None else v.const


def is_fill(v: Value | None, x: float) -> bool:
    """``v`` is a constant whose every element equals ``x``."""
    a = const(v)
    return a is not None and a.size > 0 and bool(np.all(a == x))


def users_reason(v: Value, graph: Graph | None, what: str) -> str | None:
    """Why ``v`` cannot be absorbed into a fused or folded node: it has other users, or is an output."""
    if graph is not None and v in graph.outputs:
        return f"{what} output %{v.name} is a graph output"
    if len(v.uses) != 1:
        return f"{what} output %{v.name} has {len(v.uses)} users"
    return None


def static_shape(v: Value | None) -> tuple[int, ...] | None:
    if v is None or v.type is None or not v.type.is_static:
        return None
    return v.type.static_shape()
