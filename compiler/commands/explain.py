"""``effarch explain MODEL --pass NAME``: why a pass's rules fired, or did not, on this model.

The pass runs once (after ``--before PIPELINE``, if given) and its Notes are listed, grouped by
rule: first what fired, then the near misses, each with the node, its provenance and the check
that failed ("weight is not constant", "shape of %x is not static"). Passes only note nodes that
came close to matching, so an empty list means no node was a candidate at all.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

DEFAULT_LIMIT = 20


@dataclass
class Explanation:
    pass_text: str
    before: str
    modified: bool
    notes: list[Any] = field(default_factory=list)  # compiler.pass_manager.Note

    @property
    def fired(self) -> list[Any]:
        return [n for n in self.notes if n.fired]

    @property
    def near_misses(self) -> list[Any]:
        return [n for n in self.notes if not n.fired]


def explain_pass(graph: Any, pass_text: str, before: str = "", ctx: Any = None) -> Explanation:
    """Run ``before`` then the one pass in ``pass_text`` on a clone of ``graph``; collect its notes."""
    import passes  # noqa: F401  (registers every pass)
    from compiler.pass_manager import PassContext, PassManager, parse_one_pass, parse_pipeline

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


def _section(title: str, notes: Sequence[Any], limit: int) -> list[str]:
    if not notes:
        return []
    lines = ["", f"{title}:"]
    for rule, group in _by_rule(notes).items():
        lines.append(f"  rule {rule}: {len(group)} node{'s' if len(group) != 1 else ''}")
        lines += [f"    {_where(n)}: {n.reason}" for n in group[:limit]]
        if len(group) > limit:
            lines.append(f"    ... and {len(group) - limit} more (--limit {len(group)} shows all)")
    return lines


def _by_rule(notes: Sequence[Any]) -> dict[str, list[Any]]:
    groups: dict[str, list[Any]] = defaultdict(list)
    for n in notes:
        groups[n.rule].append(n)
    return dict(groups)


def _where(note: Any) -> str:
    node = note.node or "(graph)"
    return f"{node} [{note.provenance}]" if note.provenance and note.provenance != note.node else node


def register(sub: Any) -> None:
    from compiler.cli import add_model_args

    p = sub.add_parser("explain", help="why a pass's rules fired or not: its rewrites and near misses")
    add_model_args(p)
    p.add_argument("--pass", dest="pass_text", required=True, metavar="NAME",
                   help="the pass to explain, with options if any, e.g. 'fold-constants{size_limit=4096}'")
    p.add_argument("--before", default="", metavar="PIPELINE", help="passes to run first, as pipeline text")
    p.add_argument("--target", default="x86", help="target the passes are told about (default x86)")
    p.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="nodes listed per rule (default 20)")
    p.set_defaults(func=cmd_explain)


def cmd_explain(args: argparse.Namespace) -> int:
    from compiler.cli import load_source
    from compiler.pass_manager import PassContext

    source = load_source(args)
    explanation = explain_pass(source.graph, args.pass_text, args.before, PassContext(target=args.target))
    print(format_explanation(explanation, args.limit))
    return 0
