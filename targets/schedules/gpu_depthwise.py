"""Depthwise convolution on NVIDIA GPUs: an input tile in shared memory, weights and sums in registers.

``LegalizeOps`` + ``FuseTIR`` turn an NCHW ``conv2d`` with ``groups == in channels == out channels`` (MobileNet's
3x3 depthwise layers) into a padding block, a reduction block ``out[n, c, y, x] += pad[n, c, y*s + ry, x*s + rx]
* w[c, 0, ry, rx]`` and the fused element-wise epilogue (bias add, clip / ReLU6, residual add, a cast). Without
this rule dlight's ``GeneralReduction`` takes it (a reduction of 9 taps per output), reading the input from
global memory once per tap.

Here a thread block owns ``channels`` channels x a tile of output rows and columns. It loads the input tile with
its halo (the padding computed on the way) into shared memory once; each thread then computes ``rows x cols``
neighbouring outputs of one channel, its ``k x k`` weights loaded into registers, sums kept in registers (in the
conv's own dtype: float32 sums for fp16 are not done yet -- ``unsafe_set_dtype`` only re-rounds each step), and
writes them back through the inlined epilogue. Anything else returns ``None``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, NamedTuple

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.s_tir.schedule import SBlockRV
from tvm.target import Target

from targets.schedules.gpu_rules import fused_kernel

logger = logging.getLogger(__name__)

THREADS = 128  # threads per block aimed at (fewer where one tile covers the whole map)
MAX_THREADS_W = 32  # thread columns: one warp across a row


@dataclass(frozen=True)
class DepthwiseTiles:
    """Per thread ``rows x cols`` outputs; per block ``channels`` x (``threads_h * rows``) x (``threads_w * cols``)."""

    channels: int
    threads_h: int
    threads_w: int
    rows: int
    cols: int

    @property
    def threads(self) -> int:
        return self.channels * self.threads_h * self.threads_w


def choose_tiles(channels: int, height: int, width: int) -> DepthwiseTiles:
    """Two outputs per thread along each axis of maps 14 wide or more; a warp across a row (fewer threads where
    the row is shorter); rows, then channels, fill the block up to ``THREADS``."""
    rows = 2 if height >= 14 else 1
    cols = 2 if width >= 14 else 1
    threads_w = min(MAX_THREADS_W, -(-width // cols))
    threads_h = min(-(-height // rows), max(1, THREADS // threads_w))
    per_channel = threads_h * threads_w
    group = 1
    while group * 2 * per_channel <= THREADS and channels % (group * 2) == 0:
        group *= 2
    return DepthwiseTiles(group, threads_h, threads_w, rows, cols)


@dataclass(frozen=True)
class DepthwisePlan:
    conv: SBlockRV
    pad: SBlockRV | None  # the padding block feeding the conv (None: unpadded)
    epilogue: list[SBlockRV]  # element-wise blocks after the conv, in order
    shape: tuple[int, int, int, int]  # output N, C, H, W


def static_dims(shape: object) -> list[int] | None:
    dims = [int(d) if isinstance(d, (tirx.IntImm, int)) else None for d in shape]  # type: ignore[attr-defined]
    return None if None in dims else dims  # type: ignore[return-value]


class ConvBlocks(NamedTuple):
    """A kernel with one 2-d convolution block (4 spatial and 3 reduction iterators, two reads) and static 4-d
    output, weight and input: its blocks and their statements, the conv's index among them, and the shapes."""

    blocks: list[SBlockRV]
    stmts: list[Any]
    at: int
    out: list[int]
    weight: list[int]
    data: list[int]


def conv_blocks(sch: s_tir.Schedule, layout: str) -> ConvBlocks | str:
    """The kernel's one convolution block and its shapes, or why it has none (``layout`` names it in the reason)."""
    blocks = sch.get_child_blocks(sch.get_sblock("root") if has_root(sch) else None)
    stmts = [sch.get(b) for b in blocks]
    reductions = [i for i, s in enumerate(stmts) if any(v.iter_type == tirx.IterVar.CommReduce for v in s.iter_vars)]
    if len(reductions) != 1:
        return f"{len(reductions)} reduction blocks, not one"
    conv = stmts[reductions[0]]
    kinds = "".join("R" if v.iter_type == tirx.IterVar.CommReduce else "S" for v in conv.iter_vars)
    if kinds != "SSSSRRR" or len(conv.writes) != 1 or len(conv.reads) != 2:
        return f"iterators {kinds} and {len(conv.reads)} reads, not the {layout} conv's SSSSRRR and 2"
    out, wshape, dshape = (static_dims(b.shape) if len(b.shape) == 4 else None
                           for b in (conv.writes[0].source, conv.reads[1].source, conv.reads[0].source))
    if out is None or wshape is None or dshape is None:
        return f"shapes not static and 4-d ({layout})"
    return ConvBlocks(blocks, stmts, reductions[0], out, wshape, dshape)


def match_depthwise(sch: s_tir.Schedule) -> DepthwisePlan | str:
    """The plan, or why this kernel is not a depthwise convolution."""
    found = conv_blocks(sch, "NCHW")
    if isinstance(found, str):
        return found
    blocks, stmts, at, out, wshape, dshape = found
    conv = stmts[at]
    data = conv.reads[0].source
    c = out[1]
    if wshape[0] != c or wshape[1] != 1 or dshape[1] != c:
        return f"weight {wshape}, input channels {dshape[1]}: not groups == in == out channels ({c})"
    ext = [int(v.dom.extent) for v in conv.iter_vars[4:]]
    if ext != [1, wshape[2], wshape[3]]:
        return f"reduction extents {ext}, not [1, kh, kw]"
    if any(any(v.iter_type == tirx.IterVar.CommReduce for v in s.iter_vars) or len(s.iter_vars) != 4
           for s in stmts[at + 1:]):
        return "a block after the conv is not a 4-d element-wise one"
    pad = [blocks[i] for i in range(at) if stmts[i].writes[0].source.same_as(data)]
    if at - len(pad) != 0:
        return "blocks other than the padding before the conv"
    return DepthwisePlan(blocks[at], pad[0] if pad else None, list(blocks[at + 1:]), (out[0], c, out[2], out[3]))


def has_root(sch: s_tir.Schedule) -> bool:
    try:
        sch.get_sblock("root")
    except s_tir.ScheduleError:
        return False
    return True


class GpuDepthwise(ScheduleRule):
    """effarch's rule for depthwise convolutions (see the module docstring); declines anything else."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "cuda":
            return None
        sch = s_tir.Schedule(func)
        try:
            plan = match_depthwise(sch)
        except (s_tir.ScheduleError, IndexError, AttributeError, TypeError) as exc:  # not this shape of kernel
            plan = f"not matched ({type(exc).__name__})"
        if isinstance(plan, str):
            logger.debug("gpu-depthwise declines: %s", plan)
            return None
        schedule_depthwise(sch, plan, choose_tiles(*plan.shape[1:]))
        return sch


def schedule_depthwise(sch: s_tir.Schedule, plan: DepthwisePlan, t: DepthwiseTiles) -> None:
    conv = plan.conv
    # The epilogue becomes one block (all but the last inlined into it) written back from the thread's registers.
    for block in plan.epilogue[:-1]:
        sch.compute_inline(block)
    final = plan.epilogue[-1] if plan.epilogue else sch.cache_write(conv, 0, "local")
    if plan.epilogue:
        sch.set_scope(conv, 0, "local")
    n, c, y, x, rc, ry, rx = sch.get_loops(conv)
    c_o, c_t = sch.split(c, [None, t.channels])
    y_o, y_t, y_r = sch.split(y, [None, t.threads_h, t.rows])
    x_o, x_t, x_r = sch.split(x, [None, t.threads_w, t.cols])
    sch.reorder(n, c_o, y_o, x_o, c_t, y_t, x_t, rc, ry, rx, y_r, x_r)
    bx = sch.fuse(n, c_o, y_o, x_o)
    tx = sch.fuse(c_t, y_t, x_t)
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    weight = sch.cache_read(conv, 1, "local")
    sch.compute_at(weight, tx)
    source = plan.pad if plan.pad is not None else sch.cache_read(conv, 0, "shared")
    if plan.pad is not None:
        sch.set_scope(source, 0, "shared")
    sch.compute_at(source, bx)
    _cooperative(sch, source, t.threads)
    sch.reverse_compute_at(final, tx)
    init = sch.decompose_reduction(conv, rc)
    for loop in sch.get_loops(init)[2:] + [ry, rx, y_r, x_r]:
        sch.unroll(loop)


def _cooperative(sch: s_tir.Schedule, block: SBlockRV, threads: int) -> None:
    """The block's loops under the thread-block loop shared out over its threads."""
    loops = sch.get_loops(block)[1:]
    _, tx = sch.split(sch.fuse(*loops), [None, threads])
    sch.bind(tx, "threadIdx.x")


def depthwise_kernel(channels: int, size: int, stride: int, dtype: str, kernel: int = 3, batch: int = 1,
                     acc: str | None = None) -> tirx.PrimFunc:
    """The fused PrimFunc of ``clip(conv2d(x, w, groups=channels) + b, 0, 6)`` (MobileNet's depthwise layer) on a
    ``size x size`` map, summed in ``acc`` (None: ``dtype``) and cast back, as effarch's CUDA build sees it: for
    the tests and ``tools/gpu_depthwise_check.py``."""
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((batch, channels, size, size), dtype))
    w = relax.Var("w", relax.TensorType((channels, 1, kernel, kernel), dtype))
    b = relax.Var("b", relax.TensorType((1, channels, 1, 1), dtype))
    with bb.function("main", [x, w, b]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, w, strides=stride, padding=kernel // 2, groups=channels,
                                           out_dtype=acc or dtype))
            if acc and acc != dtype:
                y = bb.emit(relax.op.astype(y, dtype))
            y = bb.emit(relax.op.clip(relax.op.add(y, b), 0, 6))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return fused_kernel(bb.get())


def schedule_with(func: tirx.PrimFunc, schedule: str, target: Target) -> tirx.PrimFunc:
    """``func`` scheduled by effarch's rule ('effarch') or by dlight's GeneralReduction ('dlight': what took
    depthwise kernels before this rule; its Fallback if that declines); raises if the rule declines."""
    from tvm.s_tir import dlight as dl

    rules = [GpuDepthwise()] if schedule == "effarch" else [dl.gpu.GeneralReduction(), dl.gpu.Fallback()]
    for rule in rules:
        sch = rule.apply(func, target, False)
        if sch is not None:
            return sch.mod["main"].with_attr("tirx.is_scheduled", True)
    raise ValueError(f"{schedule} declined this kernel")
