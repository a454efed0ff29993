"""Importance of each group's channels, and cutting the chosen ones out of a graph.

Importance of a channel: the norm (L1 or L2) of everything that makes it non-zero, summed over the
group's coupled layers: the layer's weight slice and bias, and additive constants after it (a
MatMul's bias Add). A channel whose importance is 0 is constant 0 where it enters its consumers.
Whole blocks (attention heads) are ranked by the sum over their channels.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from compiler.ir import Graph, Node, TensorType
from passes.prune_follow import analyze
from passes.prune_groups import Analysis, Edit, Group, keep_indices

PASS_NAME = "prune-channels"
# (output value name, kept output channels) of each layer that lost input channels, in graph order.
Layers = list[tuple[str, np.ndarray]]
IMPORTANCE_ROLES = ("out", "additive")


@dataclass(frozen=True)
class Removal:
    """What one pruned group lost: for the notes and the report."""

    group: Group
    removed: int  # channels
    why: str


def importance(an: Analysis, norm: str) -> dict[int, np.ndarray]:
    """Per root group index, the importance of each block (one entry per ``group.block`` channels)."""
    power: dict[int, np.ndarray] = {}
    for edit in an.edits:
        seg = edit.slot.segments[0]
        array = edit.node.inputs[edit.index]
        if edit.role not in IMPORTANCE_ROLES or seg.group is None or array is None or array.const is None:
            continue
        root = seg.group.root()
        moved = np.moveaxis(array.const.astype(np.float64), edit.axis, 0).reshape(array.const.shape[edit.axis], -1)
        per_element = (np.abs(moved) if norm == "l1" else moved ** 2).sum(axis=1)
        per_channel = np.repeat(per_element.reshape(-1, seg.stride).sum(axis=1), seg.per)
        power[root.index] = power.get(root.index, 0) + per_channel
    out = {}
    for g in an.roots():
        channel = power.get(g.index, np.zeros(g.channels))
        channel = channel if norm == "l1" else np.sqrt(channel)
        out[g.index] = channel.reshape(g.blocks, g.block).sum(axis=1)
    return out


def kept_channels(group: Group, scores: np.ndarray, remove_blocks: int) -> np.ndarray:
    """The channels left when the ``remove_blocks`` least important blocks go (ties: the later)."""
    order = np.lexsort((-np.arange(len(scores)), scores))  # ascending importance, later index first
    keep_blocks = np.sort(order[remove_blocks:])
    return (keep_blocks[:, None] * group.block + np.arange(group.block)).reshape(-1)


def apply_plan(an: Analysis, kept: dict[int, np.ndarray]) -> set[int]:
    """Cut the channels not in ``kept`` (root index -> kept channels); returns ids of nodes changed."""
    touched: dict[int, tuple[Node, str]] = {}
    by_input: dict[tuple[int, int], list[Edit]] = defaultdict(list)
    for edit in an.edits:
        by_input[(id(edit.node), edit.index)].append(edit)
    for edits in by_input.values():
        _cut_constant(an.graph, edits, kept, touched)
    for v, slot in an.slots.values():
        idx = keep_indices(slot, kept)
        if v.type is not None and v.type.shape is not None and len(idx) != v.type.shape[slot.axis]:
            shape = list(v.type.shape)
            shape[slot.axis] = len(idx)
            v.type = TensorType(v.type.dtype, tuple(shape))
            if v.producer is not None:
                touched.setdefault(id(v.producer), (v.producer, "follow"))
    for node in an.reshapes:
        _fix_reshape(an.graph, node)
    for node in an.depthwise:
        w = node.inputs[1]
        assert w is not None and w.const is not None
        node.attrs["group"] = int(w.const.shape[0])
    an.graph.remove_unused_constants()
    for node, rule in touched.values():
        node.provenance = node.provenance.rewritten(PASS_NAME, rule)
    return set(touched)


def _cut_constant(graph: Graph, edits: list[Edit], kept: dict[int, np.ndarray],
                  touched: dict[int, tuple[Node, str]]) -> None:
    node, index = edits[0].node, edits[0].index
    value = node.inputs[index]
    assert value is not None and value.const is not None, "edits are recorded on constant inputs only"
    array = value.const
    for edit in edits:
        idx = keep_indices(edit.slot, kept)
        if len(idx) != array.shape[edit.axis]:
            array = np.take(array, idx, axis=edit.axis)
            rule = {"out": "out-channels", "in": "in-channels"}.get(edit.role, "follow")
            if touched.get(id(node), (None, ""))[1] != "out-channels":
                touched[id(node)] = (node, rule)
    if array is not value.const:
        array = np.ascontiguousarray(array)
        array.flags.writeable = False
        node.set_input(index, graph.add_constant(f"{value.name}_pruned", array))


def _fix_reshape(graph: Graph, node: Node) -> None:
    """A Reshape's target shape is its (static) output type: spelled out, no -1 or 0."""
    out = node.outputs[0].type
    shape_v = node.inputs[1]
    assert out is not None and out.is_static and shape_v is not None
    target = np.asarray(out.static_shape(), dtype=np.int64)
    if shape_v.const is not None and _same_meaning(shape_v.const, target):
        return
    target.flags.writeable = False
    node.set_input(1, graph.add_constant(f"{shape_v.name}_pruned", target))


def _same_meaning(old: np.ndarray, target: np.ndarray) -> bool:
    """Whether the old shape (maybe with -1/0) still produces ``target``: then it stays."""
    return len(old) == len(target) and all(int(o) in (-1, int(t)) for o, t in zip(old, target, strict=True)) \
        and int((old == -1).sum()) <= 1


def pruned_copy(graph: Graph, remove: dict[int, int], norm: str) -> tuple[Graph, Layers]:
    """A clone of ``graph`` with ``remove[g]`` blocks cut from group ``g`` (analysis indices), and
    the layers that lost input channels (``consumer_layers``)."""
    clone = graph.clone()
    an = analyze(clone)
    scores = importance(an, norm)
    groups = {g.index: g for g in an.roots()}
    kept = {g: kept_channels(groups[g], scores[g], n) for g, n in remove.items() if n}
    layers = consumer_layers(an, kept)
    apply_plan(an, kept)
    return clone, layers


def consumer_layers(an: Analysis, kept: dict[int, np.ndarray]) -> Layers:
    """(output name, kept output channels) of every layer that loses input channels, in graph order."""
    position = {id(n): i for i, n in enumerate(an.graph.nodes)}
    layers = {}
    for edit in an.edits:
        weight = edit.node.inputs[edit.index]
        assert weight is not None and weight.const is not None, "edits are recorded on constants"
        if edit.role != "in" or len(keep_indices(edit.slot, kept)) == weight.const.shape[edit.axis]:
            continue
        out = edit.node.outputs[0]
        slot = an.slot(out)
        channels = out.type.static_shape()[1] if out.type is not None and out.type.is_static else 0
        keep = keep_indices(slot, kept) if slot is not None and slot.axis == 1 else np.arange(channels)
        layers[id(edit.node)] = (position[id(edit.node)], out.name, keep)
    return [(name, keep) for _, name, keep in sorted(layers.values(), key=lambda t: t[0])]
