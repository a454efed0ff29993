"""A layered layout for drawing a graph top to bottom, and the collapsed view of unchanged regions.

Layers are longest paths from the graph inputs (items arrive in topological order, so one sweep
suffices); within a layer, items sort by the mean position of their producers (one barycentre
sweep, which untangles most of a model's edges at a fraction of a crossing-minimiser's cost).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

NODE_W, NODE_H = 168, 30
GAP_X, GAP_Y = 24, 34
MIN_RUN = 3  # shorter runs of unchanged nodes stay visible


@dataclass
class View:
    """Items (``id`` -> ``(x, y)``), edges between item ids, and the drawing's size."""

    pos: dict[str, tuple[int, int]] = field(default_factory=dict)
    edges: list[tuple[str, str]] = field(default_factory=list)
    width: int = 0
    height: int = 0


def layered(items: list[str], edges: list[tuple[str, str]]) -> View:
    preds: dict[str, list[str]] = defaultdict(list)
    succs: dict[str, list[str]] = defaultdict(list)
    for src, dst in edges:
        preds[dst].append(src)
        succs[src].append(dst)
    layer: dict[str, int] = {}
    for it in items:
        layer[it] = 1 + max((layer[p] for p in preds[it] if p in layer), default=-1)
    _sink_constant_chains(items, preds, succs, layer)
    rows: dict[int, list[str]] = defaultdict(list)
    for it in items:
        rows[layer[it]].append(it)
    slot: dict[str, float] = {}
    for k in sorted(rows):
        rows[k].sort(key=lambda it: _barycentre(preds[it], slot))
        slot.update((it, float(n)) for n, it in enumerate(rows[k]))
    widest = max((len(r) for r in rows.values()), default=0)
    view = View(edges=list(edges), width=widest * (NODE_W + GAP_X) + GAP_X,
                height=len(rows) * (NODE_H + GAP_Y) + GAP_Y)
    for k, row in rows.items():
        offset = (widest - len(row)) * (NODE_W + GAP_X) // 2  # centre each row
        for n, it in enumerate(row):
            view.pos[it] = (GAP_X + offset + n * (NODE_W + GAP_X), GAP_Y + k * (NODE_H + GAP_Y))
    return view


def _sink_constant_chains(items: list[str], preds: dict[str, list[str]], succs: dict[str, list[str]],
                          layer: dict[str, int]) -> None:
    """Nodes that depend on no graph input (``Shape`` of a weight, then ``Expand``...) sit just above
    their first user instead of in one long top row with every other such chain."""
    rooted: set[str] = set()
    for it in items:
        if it.startswith("i:") or any(p in rooted for p in preds[it]):
            rooted.add(it)
    for it in reversed(items):
        if it not in rooted and succs[it]:
            layer[it] = max(0, min(layer[s] for s in succs[it]) - 1)


def _barycentre(preds: list[str], slot: dict[str, float]) -> float:
    placed = [slot[p] for p in preds if p in slot]
    return sum(placed) / len(placed) if placed else 0.0


def quiet_sections(items: list[str], edges: list[tuple[str, str]], unchanged: set[str]) -> list[list[str]]:
    """Runs of consecutive items (in graph order) that are unchanged and not next to a change; each
    run of at least ``MIN_RUN`` becomes one fold. Graph order is topological, so a run is a region
    of the model and folding keeps the graph acyclic."""
    near_change = {x for s, d in edges for x in (s, d) if s not in unchanged or d not in unchanged}
    quiet = unchanged - near_change
    runs: list[list[str]] = [[]]
    for it in items:
        if it in quiet:
            runs[-1].append(it)
        elif runs[-1]:
            runs.append([])
    return [r for r in runs if len(r) >= MIN_RUN]


def collapse(items: list[str], edges: list[tuple[str, str]], chains: list[list[str]]) -> tuple[
        list[str], list[tuple[str, str]], dict[str, list[str]]]:
    """Items and edges with each run replaced by one fold item ``fold:<first>``; folds -> members."""
    owner = {m: f"fold:{c[0]}" for c in chains for m in c}
    folds = {f"fold:{c[0]}": c for c in chains}
    new_items = list(dict.fromkeys(owner.get(it, it) for it in items))
    new_edges = list(dict.fromkeys((owner.get(s, s), owner.get(d, d)) for s, d in edges
                                   if owner.get(s, s) != owner.get(d, d)))
    return new_items, new_edges, folds
