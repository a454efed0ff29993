"""A diff as one self-contained HTML page: both graphs side by side, changes highlighted.

The page is the template ``static/diff.html`` with ``static/diff.css`` and ``static/diff.js``
inlined and the diff as JSON in ``<script type="application/json" id="diff-data">``; it loads
nothing from the network. Python computes the layouts (``compiler.debugging.diff.layout``): for each side a
full view and a collapsed one where runs of unchanged nodes fold into one box, which is the
default above ``COLLAPSE_ABOVE`` nodes. The script draws SVG, shows a node's provenance,
attributes and changes on click, and searches by name or op.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from compiler.debugging.diff import layout
from compiler.debugging.diff.model import GraphDiff
from compiler.debugging.diff.render_json import diff_to_dict
from compiler.debugging.diff.render_text import compression_lines, summary_line
from compiler.errors import EffarchError
from compiler.ir import Graph, Node
from compiler.ir.printer import format_attr, format_type

STATIC = Path(__file__).parent / "static"
COLLAPSE_ABOVE = 300
ATTR_TEXT_LIMIT = 240


def render_html(d: GraphDiff, a: Graph, b: Graph) -> str:
    title = f"{d.label_a} -> {d.label_b}"
    data = {
        "title": title, "summary": d.summary(), "summaryLine": summary_line(d).strip(),
        "collapsed": max(len(a.nodes), len(b.nodes)) > COLLAPSE_ABOVE,
        "a": side_data(a, "a", d.status_a(), d.matches, _notes_a(d)),
        "b": side_data(b, "b", d.status_b(), {j: i for i, j in d.matches.items()}, _notes_b(d)),
        "diff": diff_to_dict(d),
    }
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    page = _static("diff.html")
    for key, text in (("/*CSS*/", _static("diff.css")), ("/*JS*/", _static("diff.js")),
                      ("{{TITLE}}", _escape(title)), ("{{DATA}}", payload)):
        page = page.replace(key, text, 1)
    return page


def write_html(d: GraphDiff, a: Graph, b: Graph, path: str | Path) -> Path:
    """Write the page atomically: a reader never sees half a file."""
    path = Path(path)
    page = render_html(d, a, b)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as e:
        raise EffarchError(f"cannot write {path}: {e.strerror}; check the folder exists and is writable") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the page is an ordinary document
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise EffarchError(f"cannot write {path}: {e.strerror}; check the disk has space") from None
    return path


def _static(name: str) -> str:
    try:
        return (STATIC / name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EffarchError(f"the diff page's {name} is missing from {STATIC}; reinstall effarch with its "
                           f"package data (compiler/debugging/diff/static)") from None


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# ---- per-side data --------------------------------------------------------------------------
def side_data(g: Graph, side: str, status: dict[int, str], other: dict[int, int],
              notes: dict[int, list[str]]) -> dict[str, Any]:
    items, edges = _items_and_edges(g)
    info = {f"i:{v.name}": _input_info(v.name, format_type(v.type)) for v in g.inputs}
    info.update((f"n{i}", _node_info(n, i, status.get(i, "unchanged"), other.get(i), notes.get(i, [])))
                for i, n in enumerate(g.nodes))
    unchanged = {f"n{i}" for i in range(len(g.nodes)) if status.get(i, "unchanged") == "unchanged"}
    unchanged |= {f"i:{v.name}" for v in g.inputs}
    runs = layout.quiet_sections(items, edges, unchanged)
    c_items, c_edges, folds = layout.collapse(items, edges, runs)
    for fold, members in folds.items():
        ops = sorted({info[m]["op"] for m in members})
        info[fold] = {"kind": "fold", "op": f"{len(members)} unchanged nodes", "label": ", ".join(ops)[:60],
                      "status": "fold", "members": members}
    return {"name": side, "title": g.name, "info": info, "full": _view(layout.layered(items, edges)),
            "collapsed": _view(layout.layered(c_items, c_edges))}


def _items_and_edges(g: Graph) -> tuple[list[str], list[tuple[str, str]]]:
    ids = {id(n): f"n{i}" for i, n in enumerate(g.nodes)}
    inputs = {id(v): f"i:{v.name}" for v in g.inputs}
    items = [*inputs.values(), *ids.values()]
    edges: list[tuple[str, str]] = []
    for i, n in enumerate(g.nodes):
        for v in n.inputs:
            src = None if v is None else ids.get(id(v.producer)) if v.producer else inputs.get(id(v))
            if src is not None:
                edges.append((src, f"n{i}"))
    return items, list(dict.fromkeys(edges))  # a value read twice by one node is one edge


def _view(v: layout.View) -> dict[str, Any]:
    return {"pos": v.pos, "edges": v.edges, "width": v.width, "height": v.height,
            "nodeW": layout.NODE_W, "nodeH": layout.NODE_H}


def _input_info(name: str, type_text: str) -> dict[str, Any]:
    return {"kind": "input", "op": "input", "label": name, "status": "input", "outputs": [f"%{name}: {type_text}"]}


def _node_info(n: Node, i: int, status: str, other: int | None, notes: list[str]) -> dict[str, Any]:
    p = n.provenance
    return {
        "kind": "node", "index": i, "op": n.qualified_op, "status": status, "other": other,
        "label": p.source or n.name or (n.outputs[0].name if n.outputs else n.op),
        "name": n.name, "source": p.source, "rewrites": list(p.rewrites), "merged": list(p.merged),
        "attrs": {k: _short(format_attr(v)) for k, v in sorted(n.attrs.items())},
        "inputs": ["_" if v is None else f"%{v.name}: {format_type(v.type)}" for v in n.inputs],
        "outputs": [f"%{v.name}: {format_type(v.type)}" for v in n.outputs],
        "body": [m.qualified_op for m in n.body.nodes] if n.body is not None else [],
        "notes": notes,
    }


def _short(text: str) -> str:
    return text if len(text) <= ATTR_TEXT_LIMIT else text[:ATTR_TEXT_LIMIT] + " ..."


def _notes_a(d: GraphDiff) -> dict[int, list[str]]:
    notes: dict[int, list[str]] = {}
    for r in d.rewritten:
        notes[r.a.index] = [_change_line(c.what, c.key, c.before, c.after) for c in r.changes]
    for f in d.fused:
        for s in f.sources:
            notes.setdefault(s.index, []).append(f"fused into b:{f.into} by {', '.join(f.rules) or '?'}")
    _compression_notes(d, notes, "a")
    return notes


def _compression_notes(d: GraphDiff, notes: dict[int, list[str]], side: str) -> None:
    """The compression view's lines (compiler.debugging.diff.render_text) on both nodes of a layer."""
    for c in d.compression:
        node = c.a if side == "a" else c.b
        if node is not None:
            notes.setdefault(node.index, []).extend(f"compression: {line}" for line in compression_lines(c))


def _notes_b(d: GraphDiff) -> dict[int, list[str]]:
    notes: dict[int, list[str]] = {}
    for r in d.rewritten:
        notes[r.b.index] = [_change_line(c.what, c.key, c.before, c.after) for c in r.changes]
    for f in d.fused:
        sources = " + ".join(str(s) for s in f.sources)
        notes.setdefault(f.into.index, []).append(f"fused from {sources} by {', '.join(f.rules) or '?'}")
        notes[f.into.index] += [_change_line(c.what, c.key, c.before, c.after) for c in f.changes]
    _compression_notes(d, notes, "b")
    return notes


def _change_line(what: str, key: str, before: str, after: str) -> str:
    return f"{what} {key}: {before} -> {after}".replace("  ", " ")
