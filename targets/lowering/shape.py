"""Converters of shape and data-movement ops; their shape-like inputs must be known constants."""

from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.relax import op as R

from compiler.ir.consteval import constant_value, shape_op, slice_bounds
from targets.lowering.elementwise import scalar
from targets.lowering.registry import Call, LoweringError, converter, is_static, norm_axis, product


def _const(arr: np.ndarray) -> relax.Expr:
    return relax.const(np.asarray(arr, order="C"), str(arr.dtype))


@converter("Reshape")
def _reshape(c: Call) -> relax.Expr:
    dims, shape = c.ints(1, "shape"), c.shape(0)
    if not is_static(shape):  # 0 copies a (maybe symbolic) dim; Relax infers -1 symbolically
        if c.attr("allowzero", 0) and 0 in dims:
            raise c.fail("Reshape with allowzero=1 and a 0 in the shape needs static input dims; pass --shape")
        return R.reshape(c.arg(0), [shape[i] if d == 0 else d for i, d in enumerate(dims)])
    if 0 in shape:
        raise c.fail(f"reshaping the empty tensor of shape {shape} is not supported")
    if not c.attr("allowzero", 0):
        dims = [shape[i] if d == 0 else d for i, d in enumerate(dims)]
    if -1 in dims:
        known = int(np.prod([d for d in dims if d != -1], dtype=np.int64))
        dims[dims.index(-1)] = int(np.prod(shape, dtype=np.int64)) // max(known, 1)
    return R.reshape(c.arg(0), dims)


@converter("Transpose")
def _transpose(c: Call) -> relax.Expr:
    perm = c.attr("perm") or list(reversed(range(c.rank(0))))
    return R.permute_dims(c.arg(0), [int(p) for p in perm])


@converter("Flatten")
def _flatten(c: Call) -> relax.Expr:
    shape = c.shape(0)
    axis = norm_axis(int(c.attr("axis", 1)), len(shape))
    return R.reshape(c.arg(0), [product(shape[:axis]), product(shape[axis:])])


@converter("Concat")
def _concat(c: Call) -> relax.Expr:
    args = [a for a in c.args if a is not None]
    return R.concat(args, norm_axis(int(c.attr("axis")), c.rank(0)))


@converter("Split")
def _split(c: Call) -> list[relax.Expr]:
    shape = c.shape(0)
    axis = norm_axis(int(c.attr("axis", 0)), len(shape))
    n = len(c.node.outputs)
    if c.has(1):
        sizes = c.ints(1, "split")
    else:
        # Equal parts; with num_outputs not dividing the dim, the last part is smaller.
        part = -(-shape[axis] // n)
        sizes = [min(part, shape[axis] - i * part) for i in range(n)]
    if 0 in sizes:
        raise c.fail(f"split sizes {sizes} contain an empty part; zero-size tensors are not supported")
    indices = list(np.cumsum(sizes[:-1]).astype(int))
    parts = c.emit(R.split(c.arg(0), [int(i) for i in indices], axis))
    return [relax.TupleGetItem(parts, i) for i in range(n)]


@converter("Slice")
def _slice(c: Call) -> relax.Expr:
    shape = c.shape(0)
    starts, ends = c.ints(1, "starts"), c.ints(2, "ends")
    axes = c.ints(3, "axes") if c.has(3) else list(range(len(starts)))
    steps = c.ints(4, "steps") if c.has(4) else [1] * len(starts)
    x = c.arg(0)
    begin, end, stride, ax_list = [], [], [], []
    for s, e, ax, st in zip(starts, ends, axes, steps, strict=True):
        ax = norm_axis(ax, len(shape))
        lo, hi = slice_bounds(s, e, st, shape[ax])
        if st < 0:
            # Walk a flipped axis forwards: index i there is dim - 1 - i here.
            x = c.emit(R.flip(x, ax))
            lo, hi, st = shape[ax] - 1 - lo, shape[ax] - 1 - hi, -st
        begin.append(lo)
        end.append(max(hi, lo))
        stride.append(st)
        ax_list.append(ax)
    return R.strided_slice(x, ax_list, begin, end, stride, assume_inbound=True)


@converter("Gather")
def _gather(c: Call) -> relax.Expr:
    axis = norm_axis(int(c.attr("axis", 0)), c.rank(0))
    dim = c.shape(0)[axis]
    known = c.consts[1]
    if known is not None:
        if known.size and (known.min() < -dim or known.max() >= dim):
            raise LoweringError(f"node '{c.node.name}' (Gather): constant indices fall outside [-{dim}, {dim}); "
                                f"fix the model's indices")
        indices = np.where(known < 0, known + dim, known).astype(np.int64)
        if indices.ndim == 0:  # one constant index: a slice (fuses with its neighbours; take is opaque to fusion)
            i = int(indices)
            picked = R.strided_slice(c.arg(0), [axis], [i], [i + 1], assume_inbound=True)
            return R.reshape(picked, [d for a, d in enumerate(c.shape(0)) if a != axis])
        return R.take(c.arg(0), _const(indices), axis)
    idx = c.arg(1)
    indices = c.emit(R.where(R.less(idx, scalar(0, c.dtype(1))), R.add(idx, scalar(dim, c.dtype(1))), idx))
    # Run-time indices (token ids, ...) are clamped: TVM's default "fast" mode reads out of bounds
    # (and can crash the process) on a bad index, where ONNX leaves the result undefined.
    return R.take(c.arg(0), indices, axis, mode="clip")


@converter("Squeeze")
def _squeeze(c: Call) -> relax.Expr:
    shape = c.shape(0)
    axes = [norm_axis(a, len(shape)) for a in c.ints(1, "axes")] if c.has(1) else \
        [i for i, d in enumerate(shape) if d == 1]
    return R.reshape(c.arg(0), [d for i, d in enumerate(shape) if i not in axes])


@converter("Unsqueeze")
def _unsqueeze(c: Call) -> relax.Expr:
    shape = c.shape(0)
    rank = len(shape) + len(c.ints(1, "axes"))
    axes = {norm_axis(a, rank) for a in c.ints(1, "axes")}
    rest = iter(shape)
    return R.reshape(c.arg(0), [1 if i in axes else next(rest) for i in range(rank)])


@converter("Expand")
def _expand(c: Call) -> relax.Expr:
    # Bidirectional broadcast: the output may be larger than the requested shape.
    out = np.broadcast_shapes(tuple(c.shape(0)), tuple(c.ints(1, "shape")))
    return R.broadcast_to(c.arg(0), [int(d) for d in out])


@converter("Tile")
def _tile(c: Call) -> relax.Expr:
    return R.tile(c.arg(0), c.ints(1, "repeats"))


@converter("Shape", "Size")
def _shape(c: Call) -> relax.Expr:
    return _const(shape_op(c.node, tuple(c.shape(0))))


@converter("Constant")
def _constant(c: Call) -> relax.Expr:
    return _const(constant_value(c.node))


@converter("ConstantOfShape")
def _constant_of_shape(c: Call) -> relax.Expr:
    value = np.asarray(c.attr("value", np.zeros(1, np.float32))).reshape(-1)[:1].reshape(())
    return R.full(c.ints(0, "shape"), _const(value), str(value.dtype))


@converter("Range")
def _range(c: Call) -> relax.Expr:
    start, limit, delta = (c.const(i, name).reshape(()) for i, name in enumerate(("start", "limit", "delta")))
    dtype = str(start.dtype)
    return R.arange(start.item(), limit.item(), delta.item(), dtype)


@converter("Trilu")
def _trilu(c: Call) -> relax.Expr:
    k = c.ints(1, "k")[0] if c.has(1) else 0
    return (R.triu if c.attr("upper", 1) else R.tril)(c.arg(0), k)


@converter("Pad")
def _pad(c: Call) -> relax.Expr:
    rank = c.rank(0)
    pads = c.ints(1, "pads")
    axes = [norm_axis(a, rank) for a in c.ints(3, "axes")] if c.has(3) else list(range(rank))
    full = [0] * (2 * rank)
    for i, ax in enumerate(axes):
        full[ax], full[rank + ax] = pads[i], pads[len(axes) + i]
    if min(full) < 0:
        raise c.fail("negative pads (cropping) are not supported; use Slice")
    mode = c.attr("mode", "constant")
    if mode not in _PAD_MODES:
        raise c.fail(f"pad mode '{mode}' is not supported ({', '.join(_PAD_MODES)} are)")
    value = float(c.const(2, "constant_value").reshape(-1)[0]) if c.has(2) else 0.0
    width = [p for ax in range(rank) for p in (full[ax], full[rank + ax])]
    return R.nn.pad(c.arg(0), width, pad_mode=_PAD_MODES[mode], pad_value=value)


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}
