"""The walk of prune-channels' analysis: start a group at every prunable layer and follow its
channels op by op (the rules are listed in ``passes/prune_groups.py``).

Every handler gets a node with at least one tracked input; it tracks the node's output, records
the constants to cut, couples groups, or refuses them with a reason a reader can act on.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from compiler.ir import Graph, Node
from passes.prune_groups import Analysis, Edit, Group, Segment, Slot, static

SOURCE_OPS = ("Conv", "Gemm", "MatMul")
# Ops applied to each element (or each channel) on their own: channels pass through unchanged.
PER_ELEMENT = frozenset({
    "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Erf", "Sin", "Cos", "Relu",
    "LeakyRelu", "Elu", "Selu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Gelu", "Softplus", "Sign",
    "Round", "Mish", "Identity", "Dropout", "Cast", "Clip",
})
# Ops combining their inputs element by element with broadcasting.
BROADCASTING = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "PRelu", "Where", "Sum", "Mean"})
# Additive constants contribute to a channel's importance (a bias keeps a channel alive).
ADDITIVE = frozenset({"Add", "Sub"})
POOLS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool"})
RESHAPING = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})
REDUCTIONS = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceL1"})


def analyze(graph: Graph) -> Analysis:
    """Every group of ``graph``, the slots of the values its channels flow through, and the edits."""
    an = Analysis(graph)
    for node in graph.nodes:
        if any(an.slot(v) is not None for v in node.inputs):
            follow(an, node)
        if node.outputs and an.slot(node.outputs[0]) is None:
            _source(an, node)
    for v in graph.outputs:
        slot = an.slot(v)
        if slot is not None and v.producer is not None:
            an.refuse(slot, v.producer, f"its channels reach graph output %{v.name}, the model's interface")
    return an


def source_axes(node: Node) -> tuple[int, int] | None:
    """(channel axis of the weight, channel axis of the output) of a prunable layer, else None."""
    if node.domain or node.op not in SOURCE_OPS or len(node.inputs) < 2:
        return None
    w, bias = node.inputs[1], (node.inputs[2] if len(node.inputs) > 2 else None)
    out = node.outputs[0].type
    if w is None or w.const is None or (bias is not None and bias.const is None) or out is None:
        return None
    if node.op == "Conv":
        return (0, 1) if int(node.attr("group", 1)) == 1 and w.const.ndim >= 3 else None
    if node.op == "Gemm":
        return (0 if node.attr("transB", 0) else 1, 1)
    return (1, out.rank - 1) if w.const.ndim == 2 and out.rank else None


def _source(an: Analysis, node: Node) -> None:
    axes = source_axes(node)
    out = node.outputs[0]
    shape = static(out)
    if axes is None or shape is None:
        return
    w_axis, out_axis = axes
    group = Group(len(an.groups), shape[out_axis], [node])
    an.groups.append(group)
    slot = Slot(out_axis, (Segment(group, group.channels),))
    an.track(out, slot)
    an.edits.append(Edit(node, 1, w_axis, slot, "out"))
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if bias is not None and bias.const is not None and bias.const.ndim >= 1 and bias.const.shape[-1] == group.channels:
        an.edits.append(Edit(node, 2, bias.const.ndim - 1, slot, "out"))


def follow(an: Analysis, node: Node) -> None:
    tracked = [(i, s) for i, v in enumerate(node.inputs) if (s := an.slot(v)) is not None]
    handler = HANDLERS.get(node.op) if not node.domain else None
    if handler is None:
        _refuse_all(an, node, tracked, f"its channels reach {node.qualified_op}, which prune-channels does not "
                                       "follow")
        return
    reason = handler(an, node, tracked)
    if reason:
        _refuse_all(an, node, tracked, reason)


def _refuse_all(an: Analysis, node: Node, tracked: list[tuple[int, Slot]], reason: str) -> None:
    for _, slot in tracked:
        an.refuse(slot, node, f"{reason} (at {node.name or node.op})")


Handler = Callable[[Analysis, Node, list[tuple[int, Slot]]], str | None]


def _per_element(an: Analysis, node: Node, tracked: list[tuple[int, Slot]]) -> str | None:
    if tracked[0][0] != 0 or len(tracked) > 1:
        return f"{node.op} takes channels as a parameter, not as data"
    an.track(node.outputs[0], tracked[0][1])
    return None


def _pool(an: Analysis, node: Node, tracked: list[tuple[int, Slot]]) -> str | None:
    slot = tracked[0][1]
    if slot.axis != 1:
        return f"{node.op} pools over axis {slot.axis}, where the channels are"
    an.track(node.outputs[0], slot)
    return None


def _batchnorm(an: Analysis, node: Node, tracked: list[tuple[int, Slot]]) -> str | None:
    slot = tracked[0][1]
    if tracked[0][0] != 0 or slot.axis != 1 or any(v.uses for v in node.outputs[1:]):
        return "BatchNormalization's channels are not on axis 1 of its data, or its statistics are used"
    if any(v is None or v.const is None for v in node.inputs[1:5]):
        return "BatchNormalization parameters are not all constant"
    an.edits.extend(Edit(node, i, 0, slot, "follow") for i in range(1, 5))
    an.track(node.outputs[0], slot)
    return None


def _broadcasting(an: Analysis, node: Node, tracked: list[tuple[int, Slot]]) -> str | None:
    out = node.outputs[0]
    shape = static(out)
    first = dict(tracked)
    i0, slot = tracked[0]
    rank_in = static(node.inputs[i0])
    if shape is None or rank_in is None:
        return f"{node.op} has no static shape"
    from_right = slot.axis - len(rank_in)
    length = shape[from_right]
    for j, v in enumerate(node.inputs):
        if j == i0 or v is None:
            continue
        dims = static(v)
        if dims is None:
            return f"{node.op} input %{v.name} has no static shape"
        other = first.get(j)
        if other is not None:
            if other.axis - len(dims) != from_right or not an.couple(slot, other, node):
                return f"{node.op} combines these channels with differently placed ones from %{v.name}"
        elif len(dims) >= -from_right and dims[from_right] == length and length > 1:
            if v.const is None:
                origin = v.producer.op if v.producer else "a graph input"
                return f"{node.op} mixes these channels with %{v.name}, which comes from {origin}, not a prunable layer"
            role = "additive" if node.op in ADDITIVE else "follow"
            an.edits.append(Edit(node, j, len(dims) + from_right, slot, role))
    an.track(out, slot.moved(len(shape) + from_right))
    return None


def _conv(an: Analysis, node: Node, tracked: list[tuple[int, Slot]]) -> str | None:
    i, slot = tracked[0]
    w = node.inputs[1]
    groups = int(node.attr("group", 1))
    if i != 0 or slot.axis != 1 or w is None or w.const is None:
        return "Conv reads the channels as a weight, or its weight is not constant"
    if groups == 1:
        an.edits.append(Edit(node, 1, 1, slot, "in"))
        return None
    channels = static(node.inputs[0])
    if w.const.shape[1] != 1 or channels is None or groups != channels[1] or w.const.shape[0] != groups:
        return f"Conv with group={groups} mixes channels in groups; only dense and depthwise convolutions are followed"
    an.edits.append(Edit(node, 1, 0, slot, "follow"))
    an.depthwise.append(node)
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        an.edits.append(Edit(node, 2, 0, slot, "follow"))
    an.track(node.outputs[0], slot)
    return None


def _gemm(an: Analysis, node: Node, tracked: list[tuple[int, Slot]]) -> str | None:
    i, slot = tracked[0]
    w = node.inputs[1]
    if i != 0 or node.attr("transA", 0) or slot.axis != 1 or w is None or w.const is None:
        return "Gemm reads the channels transposed or as its weight, or its weight is not constant"
    an.edits.append(Edit(node, 1, 1 if node.attr("transB", 0) else 0, slot, "in"))
    return None


def _matmul(an: Analysis, node: Node, tracked: list[tuple[int, Slot]]) -> str | None:
    a, b, out = static(node.inputs[0]), static(node.inputs[1]), static(node.outputs[0])
    if a is None or b is None or out is None or len(a) < 2 or len(b) < 2:
        return "MatMul has no static shapes, or a vector operand"
    slots = dict(tracked)
    w = node.inputs[1]
    sa, sb = slots.get(0), slots.get(1)
    if sb is None and w is not None and w.const is not None and sa is not None and sa.axis == len(a) - 1:
        an.edits.append(Edit(node, 1, 0, sa, "in"))  # x @ W: W loses the rows of removed channels
        return None
    if sa is not None and sb is not None and sa.axis == len(a) - 1 and sb.axis == len(b) - 2:
        return None if an.couple(sa, sb, node) else "MatMul contracts differently laid out channels"
    batch = [(s.axis - len(d), s) for s, d in ((sa, a), (sb, b)) if s is not None and s.axis < len(d) - 2]
    if len(batch) != len(tracked):
        return "MatMul contracts the channels with a tensor that does not carry them"
    from_right, slot = batch[0]
    if len(batch) == 2:
        if batch[1][0] != from_right or not an.couple(slot, batch[1][1], node):
            return "MatMul batches channels placed on different axes"
    else:
        dims = b if sa is not None else a
        if len(dims) >= -from_right and dims[from_right] != 1:
            return "MatMul batches these channels with a tensor that does not carry them"
    an.track(node.outputs[0], slot.moved(len(out) + from_right))
    return None


def _transpose(an: Analysis, node: Node, tracked: list[tuple[int, Slot]]) -> str | None:
    slot = tracked[0][1]
    shape = static(node.inputs[0])
    if shape is None:
        return "Transpose has no static shape"
    perm = list(node.attr("perm") or reversed(range(len(shape))))
    an.track(node.outputs[0], slot.moved(perm.index(slot.axis)))
    return None


def _reshape(an: Analysis, node: Node, tracked: list[tuple[int, Slot]]) -> str | None:
    i, slot = tracked[0]
    src, dst = static(node.inputs[0]), static(node.outputs[0])
    if i != 0 or src is None or dst is None:
        return f"{node.op} has no static shapes"
    if len(slot.segments) != 1 or slot.segments[0].group is None:
        return f"{node.op} reshapes a concatenation of channels"
    moved = reshape_slot(slot, src, dst)
    if isinstance(moved, str):
        return moved
    if node.op == "Reshape":
        an.reshapes.append(node)
    an.track(node.outputs[0], moved)
    return None


def reshape_slot(slot: Slot, src: tuple[int, ...], dst: tuple[int, ...]) -> Slot | str:
    """Where the channel axis ends up when ``src`` is reshaped to ``dst``, or why it cannot follow."""
    seg = slot.segments[0]
    before, size = math.prod(src[:slot.axis]), src[slot.axis]
    ks = [k for k in range(len(dst)) if math.prod(dst[:k]) == before]
    k = next((k for k in ks if dst[k] == size), next((k for k in ks if dst[k] != 1), None))
    if k is None:
        return f"Reshape {list(src)} -> {list(dst)} moves elements across the channel axis"
    if dst[k] == size:
        return Slot(k, (seg,))
    if dst[k] % size == 0 and not _is_prefix_product(dst[k] // size, src[slot.axis + 1:]):
        return f"Reshape {list(src)} -> {list(dst)} merges the channel axis with part of an axis"
    if size % dst[k] == 0 and not _is_prefix_product(size // dst[k], dst[k + 1:]):
        return f"Reshape {list(src)} -> {list(dst)} splits the channel axis across axes"
    if dst[k] % size == 0 and seg.per == 1:  # merged with the axes after it: Flatten
        return Slot(k, (Segment(seg.group, dst[k], seg.stride * (dst[k] // size), 1),))
    if dst[k] % size == 0 and seg.stride == 1 and dst[k] // size == seg.per:  # heads merged back
        return Slot(k, (Segment(seg.group, dst[k]),))
    if size % dst[k] == 0 and seg.group is not None:  # split into (outer, inner)
        inner = size // dst[k]
        if seg.stride % inner == 0:
            return Slot(k, (Segment(seg.group, dst[k], seg.stride // inner, seg.per),))
        if seg.stride == 1:
            root = seg.group.root()
            root.block = math.lcm(root.block, seg.per * inner)
            if root.channels % root.block:
                return f"Reshape splits {root.channels} channels into blocks of {root.block}"
            return Slot(k, (Segment(seg.group, dst[k], 1, seg.per * inner),))
    return f"Reshape {list(src)} -> {list(dst)} regroups the channel axis"


def _is_prefix_product(n: int, dims: tuple[int, ...]) -> bool:
    """Whether ``n`` is the product of the first few of ``dims`` (the axes a reshape joins)."""
    return any(math.prod(dims[:m]) == n for m in range(len(dims) + 1))


def _gather(an: Analysis, node: Node, tracked: list[tuple[int, Slot]]) -> str | None:
    i, slot = tracked[0]
    shape = static(node.inputs[0])
    if i == 0 and shape is not None and int(node.attr("axis", 0)) % len(shape) == slot.axis:
        return "Gather picks slices of the channel axis (as a fused QKV projection is split)"
    return "its channels reach Gather, which prune-channels does not follow"


def _concat(an: Analysis, node: Node, tracked: list[tuple[int, Slot]]) -> str | None:
    shapes = [static(v) for v in node.inputs]
    if any(s is None for s in shapes):
        return "Concat has no static shapes"
    rank = len(shapes[0])  # type: ignore[arg-type]  # checked above
    axis = int(node.attr("axis", 0)) % rank
    slots = dict(tracked)
    if any(s.axis != axis for s in slots.values()):
        return "Concat joins tensors on an axis other than their channels"
    segments: list[Segment] = []
    for j, dims in enumerate(shapes):
        s = slots.get(j)
        segments += s.segments if s is not None else [Segment(None, dims[axis])]  # type: ignore[index]
    an.track(node.outputs[0], Slot(axis, tuple(segments)))
    return None


def _along_other_axis(attr: str, default: int, what: str) -> Handler:
    """Softmax, LogSoftmax, LayerNormalization: fine unless they normalise over the channels."""
    def handler(an: Analysis, node: Node, tracked: list[tuple[int, Slot]]) -> str | None:
        i, slot = tracked[0]
        shape = static(node.inputs[0])
        if i != 0 or shape is None:
            return f"{node.op} reads the channels as a parameter"
        axis = int(node.attr(attr, default)) % len(shape)
        if (slot.axis >= axis) if node.op == "LayerNormalization" else slot.axis == axis:
            return f"{node.op} {what} over the channel axis"
        an.track(node.outputs[0], slot)
        return None
    return handler


def _reduce(an: Analysis, node: Node, tracked: list[tuple[int, Slot]]) -> str | None:
    i, slot = tracked[0]
    shape = static(node.inputs[0])
    axes_v = node.inputs[1] if len(node.inputs) > 1 else None
    axes = node.attr("axes") if axes_v is None else (None if axes_v.const is None else axes_v.const.tolist())
    if i != 0 or shape is None or not axes:
        return f"{node.op} reduces over every axis, the channels included"
    axes = [int(a) % len(shape) for a in axes]
    if slot.axis in axes:
        return f"{node.op} reduces over the channel axis"
    keep = node.attr("keepdims", 1)
    an.track(node.outputs[0], slot.moved(slot.axis if keep else slot.axis - sum(a < slot.axis for a in axes)))
    return None


HANDLERS: dict[str, Handler] = {
    **dict.fromkeys(PER_ELEMENT, _per_element),
    **dict.fromkeys(POOLS, _pool),
    **dict.fromkeys(BROADCASTING, _broadcasting),
    **dict.fromkeys(RESHAPING, _reshape),
    **dict.fromkeys(REDUCTIONS, _reduce),
    "BatchNormalization": _batchnorm, "Conv": _conv, "Gemm": _gemm, "MatMul": _matmul,
    "Transpose": _transpose, "Concat": _concat, "Gather": _gather,
    "Softmax": _along_other_axis("axis", -1, "normalises"),
    "LogSoftmax": _along_other_axis("axis", -1, "normalises"),
    "LayerNormalization": _along_other_axis("axis", -1, "normalises"),
}

