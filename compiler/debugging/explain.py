"""What a pass did and almost did on a graph: its Notes, grouped by rule, fired ones first.

Passes only note nodes that came close to matching (see ``compiler.pass_manager.rules``), so an
empty list means no node was a candidate at all. ``effarch explain`` prints ``format_explanation``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from compiler.ir import Graph
from compiler.pass_manager import Note, PassContext

DEFAULT_LIMIT = 20


@dataclass
class Explanation:
    pass_text: str
    before: str
    modified: bool
    notes: list[Note] = field(default_factory=list)

    @property
    def fired(self) -> list[Note]:
        return [n for n in self.notes if n.fired]

    @property
    def near_misses(self) -> list[Note]:
        return [n for n in self.notes if not n.fired]


def explain_pass(graph: Graph, pass_text: str, before: str = "", ctx: PassContext | None = None) -> Explanation:
    """Run ``before`` then the one pass in ``pass_text`` on a clone of ``graph``; collect its notes."""
    import passes  # noqa: F401  (registers every pass)
    from compiler.pass_manager import PassManager, parse_one_pass, parse_pipeline

    spec, _ = parse_one_pass(pass_text, "--pass", "; put the passes to run first in --before")
    text = ",".join(t for t in (before, str(spec)) if t)
    result = PassManager(parse_pipeline(text), ctx or PassContext()).run(graph.clone())
    last = result.records[-1]
    return Explanation(str(spec), before, last.modified, list(last.notes))


def format_explanation(e: Explanation, limit: int = DEFAULT_LIMIT) -> str:
    after = f" after '{e.before}'" if e.before else ""
    verdict = "changed the graph" if e.modified else "changed nothing"
    lines = [f"{e.pass_text}{after}: {verdict}; {len(e.fired)} rewrites, {len(e.near_misses)} near misses"]
    if not e.notes:
        lines.append("  no notes: no node came close to any rule of this pass")
    lines += _section("fired", e.fired, limit)
    lines += _section("near misses (the check that failed)", e.near_misses, limit)
    return "\n".join(lines)


def _section(title: str, notes: Sequence[Note], limit: int) -> list[str]:
    if not notes:
        return []
    lines = ["", f"{title}:"]
    for rule, group in _by_rule(notes).items():
        lines.append(f"  rule {rule}: {len(group)} node{'s' if len(group) != 1 else ''}")
        lines += [f"    {_where(n)}: {n.reason}" for n in group[:limit]]
        if len(group) > limit:
            lines.append(f"    ... and {len(group) - limit} more (--limit {len(group)} shows all)")
    return lines


def _by_rule(notes: Sequence[Note]) -> dict[str, list[Note]]:
    groups: dict[str, list[Note]] = defaultdict(list)
    for n in notes:
        groups[n.rule].append(n)
    return dict(groups)


def _where(note: Note) -> str:
    node = note.node or "(graph)"
    return f"{node} [{note.provenance}]" if note.provenance and note.provenance != note.node else node
