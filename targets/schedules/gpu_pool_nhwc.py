"""Window pooling (max / average) on NVIDIA GPUs, channels last: a thread owns a 16-byte vector of channels.

fp16/bf16 convolutional networks at batch >= 8 are lowered NHWC on CUDA (``CudaTarget.channels_last_for``), so
ResNet-18's max pool after the stem is ``LegalizeOps``' padding block and a reduction block
``out[n, y, x, c] = max(out, pad[n, y*s + ry, x*s + rx, c])`` (an average pool adds, then divides in a block of
its own), possibly followed by element-wise blocks. dlight's ``Fallback`` gives each output element a thread and
each tap a 2-byte load: 42 us for ResNet-18's at batch 32 in fp16 on the H200 (2026-12-03, torch.profiler); with
this rule ResNet-18 b32 went 0.767 -> 0.749 ms in fp16 and 0.800 -> 0.776 in bf16 (same call, 09:13 UTC).

Here a thread owns ``16 / dtype bytes`` consecutive channels of one output pixel, loads each tap as one vector
(the padding computed on the way: its condition does not depend on the channel), keeps the window's result in
registers and stores it as one vector through the inlined epilogue. Consecutive threads take consecutive
channel vectors, so a warp's loads and stores cover contiguous bytes. Anything else (channels not a multiple of
the vector, a layout where channels are not innermost, a global pool, a window over ``MAX_TAPS`` taps) returns
``None``.
"""

from __future__ import annotations

import logging
import math

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_root_block
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from targets.schedules.common import is_reduction_block
from targets.schedules.gpu_tensorcore import tirx_dtype_bytes

logger = logging.getLogger(__name__)

VECTOR_BYTES = 16
THREADS = 128
MAX_TAPS = 64  # window taps, each one unrolled vector load
FLOATS = ("float16", "bfloat16", "float32")


def _channel_innermost(stmt: tirx.stmt.SBlock) -> bool:
    """Spatial iterators ``[n, y, x, c]`` then the window's, ``c`` the last index of the read and the write."""
    kinds = [iv.iter_type for iv in stmt.iter_vars]
    spatial = [iv.var for iv in stmt.iter_vars if iv.iter_type == tirx.IterVar.DataPar]
    if kinds[:4] != [tirx.IterVar.DataPar] * 4 or len(spatial) != 4 or len(stmt.reads) != 1:
        return False
    c = spatial[-1]
    last_read, last_write = stmt.reads[0].region[-1].min, stmt.writes[0].region[-1].min
    return (isinstance(last_read, tirx.Var) and last_read.same_as(c) and isinstance(last_write, tirx.Var)
            and last_write.same_as(c))


def vector_lanes(dtype: str, channels: int) -> int:
    """Channels per thread: a 16-byte vector of a float dtype where the channel count divides, else 0 (declined)."""
    if dtype not in FLOATS:
        return 0
    lanes = VECTOR_BYTES // tirx_dtype_bytes(dtype)
    return lanes if channels % lanes == 0 else 0


class GpuPoolNhwc(ScheduleRule):
    """NHWC window pooling: a 16-byte channel vector of one output pixel per thread."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "cuda":
            return None
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(get_root_block(sch))
        pools = [b for b in blocks if is_reduction_block(sch.get(b))]
        if len(pools) != 1 or not _channel_innermost(sch.get(pools[0])):
            return None
        pool = pools[0]
        stmt = sch.get(pool)
        extents = [iv.dom.extent for iv in stmt.iter_vars]
        if not all(isinstance(e, tirx.IntImm) for e in extents):
            return None
        lanes = vector_lanes(str(stmt.writes[0].source.dtype), int(extents[3]))
        taps = math.prod(int(e) for e in extents[4:])
        # a sliding window (a global pool, whose output is one pixel, stays with dlight's reductions)
        if not lanes or int(extents[1]) == 1 or int(extents[2]) == 1 or taps > MAX_TAPS:
            return None
        try:
            return _schedule(sch, pool, lanes)
        except s_tir.ScheduleError as exc:  # an epilogue or prologue it cannot inline
            logger.info("nhwc pooling declined (%s)", (str(exc).strip().splitlines() or ["?"])[-1])
            return None


def _schedule(sch: s_tir.Schedule, pool: s_tir.schedule.SBlockRV, lanes: int) -> s_tir.Schedule:
    root = get_root_block(sch)
    name = sch.get(pool).name_hint
    for block in sch.get_child_blocks(root):  # the padding (and any element-wise prologue)
        if sch.get(block).name_hint == name:
            break
        sch.compute_inline(block)
    acc = sch.cache_write(pool, 0, "local")
    rest = [b for b in sch.get_child_blocks(root) if sch.get(b).name_hint not in (name, sch.get(acc).name_hint)]
    for block in reversed(rest):  # the element-wise epilogue, into the store
        sch.reverse_compute_inline(block)
    n, y, x, c, *window = sch.get_loops(pool)
    c, vec = sch.split(c, [None, lanes])
    sch.reorder(n, y, x, c, *window, vec)
    bx, tx = sch.split(sch.fuse(n, y, x, c), [None, THREADS])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    sch.reverse_compute_at(acc, tx)
    sch.vectorize(vec)  # before the init is split off: TVM vectorizes no update block without its init
    sch.vectorize(sch.get_loops(acc)[-1])
    sch.decompose_reduction(pool, window[0])
    for loop in window:
        sch.unroll(loop)
    return sch
