"""A diff as text for a person: a count summary, what compression made of each weighted layer (when
B is compressed), then fused, rewritten, removed, added and constants.

Colour (ANSI) only when asked; the CLI asks when stdout is a terminal or with ``--color``. Each
section lists at most ``limit`` entries and says how many it left out.
"""

from __future__ import annotations

from collections import Counter

from compiler.debugging.diff.model import Change, ConstantChange, Fused, GraphDiff, LayerCompression, NodeRef, Rewritten

COLORS = {"added": "32", "removed": "31", "rewritten": "33", "fused": "35", "constant": "36", "compression": "34",
          "head": "1"}
MARKS = {"added": "+", "removed": "-", "rewritten": "~", "fused": "*", "constant": "!", "compression": "#"}


class _Style:
    def __init__(self, color: bool) -> None:
        self.color = color

    def __call__(self, kind: str, text: str) -> str:
        return f"\x1b[{COLORS[kind]}m{text}\x1b[0m" if self.color else text


def render_text(d: GraphDiff, *, color: bool = False, limit: int = 50) -> str:
    style = _Style(color)
    lines = [style("head", f"diff {d.label_a} -> {d.label_b}: {d.nodes_a} -> {d.nodes_b} nodes"), summary_line(d)]
    if d.is_empty:
        return "\n".join([*lines, "no differences"]) + "\n"
    lines += _section(style, "compression", compression_title(d), d.compression, compression_lines, limit)
    lines += _section(style, "fused", "fused", d.fused, _fused_lines, limit)
    lines += _section(style, "rewritten", "rewritten", d.rewritten, _rewritten_lines, limit)
    lines += _section(style, "removed", "removed", d.removed, _node_lines, limit)
    lines += _section(style, "added", "added", d.added, _node_lines, limit)
    lines += _section(style, "constant", "constants changed", d.constants, _constant_lines, limit)
    lines += _names(style, "removed", "constants removed", d.constants_removed, limit)
    lines += _names(style, "added", "constants added", d.constants_added, limit)
    return "\n".join(lines) + "\n"


def summary_line(d: GraphDiff) -> str:
    s = d.summary()
    fused = f"{s['fused']} fused" + (f" (from {s['fused_sources']} nodes)" if s["fused"] else "")
    parts = [f"{s['unchanged']} unchanged", f"{s['rewritten']} rewritten", fused, f"{s['removed']} removed",
             f"{s['added']} added", f"{s['constants_changed']} constants changed"]
    if s["constants_added"] or s["constants_removed"]:
        parts.append(f"constants: {s['constants_added']} added, {s['constants_removed']} removed")
    return "  " + ", ".join(parts)


def _section(style: _Style, kind: str, title: str, items: list, lines_of, limit: int) -> list[str]:  # type: ignore[type-arg, no-untyped-def]
    if not items:
        return []
    out = [style("head", f"{title} ({len(items)})")]
    shown = items if limit <= 0 else items[:limit]
    for item in shown:
        first, *rest = lines_of(item)
        out.append(f"  {style(kind, MARKS[kind] + ' ' + first)}")
        out += [f"      {line}" for line in rest]
    if len(shown) < len(items):
        out.append(f"  ... and {len(items) - len(shown)} more (--limit 0 shows all, --json lists all)")
    return out


def _names(style: _Style, kind: str, title: str, names: list[str], limit: int) -> list[str]:
    return _section(style, kind, title, names, lambda n: [f"%{n}"], limit)


def _node_lines(r: NodeRef) -> list[str]:
    outs = ", ".join(f"%{o}" for o in r.outputs)
    return [f"{r} -> {outs}" + (f"  # {r.provenance}" if r.provenance and r.provenance != r.label else "")]


def _fused_lines(f: Fused) -> list[str]:
    sources = " + ".join(str(s) for s in f.sources)
    rules = ", ".join(f.rules) or "(no rule recorded)"
    return [f"{sources} => {f.into}", f"by {rules}", *(_change_text(c) for c in f.changes)]


def _rewritten_lines(r: Rewritten) -> list[str]:
    head = str(r.a) if str(r.a) == str(r.b) else f"{r.a} => {r.b}"
    return [f"{head}  (matched by {r.matched_by})", *(_change_text(c) for c in r.changes)]


def _change_text(c: Change) -> str:
    if c.what == "op":
        return f"op: {c.before} -> {c.after}"
    if c.what == "rewrites":
        return f"by {c.after}"
    label = {"attr": "attribute", "input": "input", "type": "output type"}[c.what]
    return f"{label} {c.key}: {c.before} -> {c.after}"


def _constant_lines(c: ConstantChange) -> list[str]:
    name = f"%{c.name_a}" if c.name_a == c.name_b else f"%{c.name_a} -> %{c.name_b} (same consumer)"
    types = c.type_a if c.type_a == c.type_b else f"{c.type_a} -> {c.type_b}"
    change = "values differ" if c.max_abs_change is None else f"max abs change {c.max_abs_change:.6g}"
    return [f"{name}: {types}, {change}"]



def compression_title(d: GraphDiff) -> str:
    counts = Counter(c.scheme for c in d.compression)
    pruned = sum(1 for c in d.compression if c.channels)
    parts = [f"{n} {scheme}" for scheme, n in sorted(counts.items())] + ([f"{pruned} pruned"] if pruned else [])
    return f"compression per Conv/MatMul/Gemm: {', '.join(parts)}"


def compression_lines(c: LayerCompression) -> list[str]:
    """``Conv 'features.0' => int8: Conv, weight i8, activation u8 calibrated`` and its details."""
    if c.b is None:
        head = f"{c.a} => removed"
    elif c.scheme == "float":
        head = f"{c.a} => kept float: {c.product}"
    else:
        head = f"{c.a} => {c.scheme}: {c.product}, weight {c.weight}, activation {c.activation}"
    details = [f"channels {c.channels}"] if c.channels else []
    if c.scheme in ("float", "removed") and not c.notes:
        details.append("(no compression pass noted why; B may not record the notes)")
    return [head, *details, *c.notes]
