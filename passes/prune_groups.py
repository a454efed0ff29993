"""Channel dependencies for prune-channels: which channels must be removed together, and where.

A *group* is a set of output channels that can only be removed together: the output channels of
one layer (a Conv, Gemm or MatMul with a constant weight: its *source*), merged with the groups of
every tensor it is added, multiplied or batched with (a residual Add couples the channels of both
branches). The analysis follows each group forward, in graph order, through ops that keep channels
apart, and records every constant that must lose the same channels (*edits*):

- per-channel ops (activations, pooling, BatchNormalization, Add/Mul with a per-channel constant,
  a depthwise Conv) carry the channels to their output;
- a dense Conv, a Gemm or a MatMul with a constant weight *consumes* them: its weight loses the
  matching input rows/columns and the group stops there;
- Reshape, Flatten, Squeeze, Unsqueeze and Transpose move the channel axis; a Reshape that merges
  it with the axes after it (Flatten into Gemm: each channel owns H*W features) or splits it into
  (heads, head_dim) is followed, the latter making whole heads the unit that is removed;
- Concat on the channel axis places the group at an offset; Softmax, LayerNormalization and
  reductions that do not touch the channel axis carry it.

Anything else that sees the channels refuses the whole group with a reason (a Note for
``effarch explain``): a graph output (channels are the model's interface), Softmax over channels,
a grouped Conv, a Gather on the channel axis, ...
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from compiler.ir import Graph, Node, Value


@dataclass(eq=False)
class Group:
    """Channels removed together; ``block`` channels at a time (a whole attention head)."""

    index: int
    channels: int
    sources: list[Node] = field(default_factory=list)
    block: int = 1
    refusal: str = ""
    refused_at: Node | None = None
    parent: Group | None = None

    def root(self) -> Group:
        g = self
        while g.parent is not None:
            g = g.parent
        return g

    @property
    def blocks(self) -> int:
        return self.channels // self.block


@dataclass(frozen=True)
class Segment:
    """A stretch of a tracked axis: the channels of ``group`` (None: channels that stay), each
    channel spanning ``stride`` elements, or ``per`` channels sharing one element (a head)."""

    group: Group | None
    length: int
    stride: int = 1
    per: int = 1

    def same_layout(self, other: Segment) -> bool:
        return (self.length, self.stride, self.per) == (other.length, other.stride, other.per) and (
            (self.group is None) == (other.group is None))


@dataclass(frozen=True)
class Slot:
    """Where channels live in one value: an axis and the segments along it."""

    axis: int
    segments: tuple[Segment, ...]

    def moved(self, axis: int) -> Slot:
        return Slot(axis, self.segments)

    def groups(self) -> list[Group]:
        return [s.group.root() for s in self.segments if s.group is not None]


@dataclass(frozen=True)
class Edit:
    """Constant input ``index`` of ``node`` keeps, on ``axis``, the elements ``slot`` keeps."""

    node: Node
    index: int
    axis: int
    slot: Slot
    role: str  # "out" (a source's weight or bias), "in" (a consumer's weight), "follow", "additive"


@dataclass
class Analysis:
    graph: Graph
    groups: list[Group] = field(default_factory=list)
    slots: dict[int, tuple[Value, Slot]] = field(default_factory=dict)
    edits: list[Edit] = field(default_factory=list)
    reshapes: list[Node] = field(default_factory=list)
    depthwise: list[Node] = field(default_factory=list)  # their group attribute follows the channels

    def slot(self, v: Value | None) -> Slot | None:
        entry = None if v is None else self.slots.get(id(v))
        return None if entry is None else entry[1]

    def track(self, v: Value, slot: Slot) -> None:
        self.slots[id(v)] = (v, slot)

    def refuse(self, slot: Slot, node: Node, reason: str) -> None:
        for g in slot.groups():
            if not g.refusal:
                g.refusal, g.refused_at = reason, node

    def couple(self, a: Slot, b: Slot, node: Node) -> bool:
        """Merge the groups of two slots with the same layout; refuse both when they differ."""
        if len(a.segments) != len(b.segments) or not all(
                x.same_layout(y) for x, y in zip(a.segments, b.segments, strict=True)):
            reason = f"{node.op} combines channels laid out differently on its inputs"
            self.refuse(a, node, reason)
            self.refuse(b, node, reason)
            return False
        for x, y in zip(a.segments, b.segments, strict=True):
            if x.group is not None and y.group is not None:
                merge(x.group, y.group)
        return True

    def roots(self) -> list[Group]:
        return [g for g in self.groups if g.parent is None]


def merge(a: Group, b: Group) -> None:
    ra, rb = a.root(), b.root()
    if ra is rb:
        return
    if ra.index > rb.index:
        ra, rb = rb, ra
    rb.parent = ra
    ra.sources += rb.sources
    ra.block = math.lcm(ra.block, rb.block)
    if rb.refusal and not ra.refusal:
        ra.refusal, ra.refused_at = rb.refusal, rb.refused_at


def keep_indices(slot: Slot, kept: dict[int, np.ndarray]) -> np.ndarray:
    """The indices along the slot's axis that stay, given each pruned root's kept channels."""
    parts, offset = [], 0
    for seg in slot.segments:
        root = None if seg.group is None else seg.group.root()
        channels = None if root is None else kept.get(root.index)
        if channels is None:
            parts.append(offset + np.arange(seg.length))
        else:
            elements = np.unique(channels // seg.per)
            parts.append(offset + (elements[:, None] * seg.stride + np.arange(seg.stride)).reshape(-1))
        offset += seg.length
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def static(v: Value | None) -> tuple[int, ...] | None:
    if v is None or v.type is None or not v.type.is_static:
        return None
    return v.type.static_shape()
