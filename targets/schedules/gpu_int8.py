"""int8 GEMMs on NVIDIA GPUs: tiled for threads and shared memory, ``dp4a`` at the innermost level.

The lowering (``lowering.quantized_cuda``) marks the reduction block with ``GPU_INT8_ATTR`` = the position
of its output-column axis ``n``; every other spatial axis is a row axis ``m`` (fused into one), and its
one reduction axis ``k`` runs over s8 operands ``A[.., m, k]`` and ``W[n, k]`` with ``k`` a multiple of
``K_TILE``. A thread block computes a ``(TY*TM) x (TX*TN)`` tile; per ``K_TILE`` step both operand tiles are
loaded into shared memory by all threads (the activation's producer -- the u8 -> s8 shift, padding and
the convolution's implicit im2col -- is inlined into that load), and each thread accumulates its
``TM x TN`` int32 tile in registers, four ``k`` per ``dp4a``. The correction and the fused epilogue
(cast, scale, bias, ReLU, requantize) run as each thread writes its tile back.

A function this rule cannot take (an epilogue with a reduction, say) is left to dlight's rules.
"""

from __future__ import annotations

import logging
import math

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_root_block
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.s_tir.schedule import LoopRV, SBlockRV
from tvm.target import Target

logger = logging.getLogger(__name__)

GPU_INT8_ATTR = "effarch.gpu_int8"  # on the reduction block: index of the output-column axis
K_TILE = 32  # reduction step per shared-memory tile; the weight's K is padded to a multiple of it
DP4A = "effarch_dp4a_s8s8s32"  # registered on first use (register_dp4a)
SM_COUNT = 132  # thread blocks that fill an H100/H200; smaller GPUs are filled by any tile that fills it
MAX_THREADS = 256


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def choose_tile(m: int, n: int) -> tuple[int, int, int, int]:
    """(TM, TN, TY, TX): the largest register tile whose grid still fills the GPU twice over."""
    best = (1, 1, 1, 1)
    for tm, tn in ((4, 4), (2, 4), (2, 2), (1, 2), (1, 1)):
        tx = min(16, _pow2_at_least(-(-n // tn)))
        ty = min(MAX_THREADS // 2 // tx, _pow2_at_least(-(-m // tm)))
        best = (tm, tn, ty, tx)
        if -(-m // (ty * tm)) * -(-n // (tx * tn)) >= 2 * SM_COUNT:
            break
    return best


def register_dp4a() -> None:
    """TVM's own ``dp4a_s8s8s32`` (``tvm.s_tir.tensor_intrin.dot_product_common``), registered here:
    importing that package parses hundreds of other intrinsics (tens of seconds on every import)."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    if TensorIntrin.get(DP4A, allow_missing=True) is not None:
        return

    @T.prim_func(s_tir=True)
    def desc(a_: T.handle, b_: T.handle, c_: T.handle) -> None:
        a = T.match_buffer(a_, (4,), "int8", offset_factor=1, align=4, scope="shared")
        b = T.match_buffer(b_, (4,), "int8", offset_factor=1, align=4, scope="shared")
        c = T.match_buffer(c_, (1,), "int32", offset_factor=1, align=4, scope="local")
        with T.sblock("root"):
            T.reads(c[0], a[0:4], b[0:4])
            T.writes(c[0])
            for i in range(4):
                with T.sblock("update"):
                    vi = T.axis.remap("R", [i])
                    c[0] = c[0] + T.cast(a[vi], "int32") * T.cast(b[vi], "int32")

    @T.prim_func(s_tir=True)
    def impl(a_: T.handle, b_: T.handle, c_: T.handle) -> None:
        a = T.match_buffer(a_, (4,), "int8", offset_factor=1, align=4, scope="shared")
        b = T.match_buffer(b_, (4,), "int8", offset_factor=1, align=4, scope="shared")
        c = T.match_buffer(c_, (1,), "int32", offset_factor=1, align=4, scope="local")
        with T.sblock("root"):
            T.reads(c[0], a[0:4], b[0:4])
            T.writes(c[0])
            c[0] += T.call_pure_extern("__dp4a", a.vload([0], "int8x4"), b.vload([0], "int8x4"), T.int32(0),
                                       dtype="int32")

    TensorIntrin.register(DP4A, desc, impl)


def find_int8_gemm(sch: s_tir.Schedule) -> tuple[SBlockRV, int] | None:
    for block in sch.get_child_blocks(get_root_block(sch)):
        axis = sch.get(block).annotations.get(GPU_INT8_ATTR)
        if axis is not None:
            return block, int(axis)
    return None


class GpuInt8(ScheduleRule):
    """The dp4a schedule for functions holding a block marked ``GPU_INT8_ATTR``."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "cuda":
            return None
        sch = s_tir.Schedule(func)
        if find_int8_gemm(sch) is None:
            return None
        # Relax gives TE int64 shapes; the dp4a intrinsic's description is written with int32 indices.
        narrow = tirx.transform.ForceNarrowIndexToInt32()(tvm.IRModule({"main": func}))["main"]
        sch = s_tir.Schedule(narrow)
        found = find_int8_gemm(sch)
        if found is None:
            return None
        try:
            return sch if schedule_int8_gemm(sch, *found) else None
        except (s_tir.ScheduleError, RuntimeError, ValueError) as exc:  # a shape or epilogue it does not take
            logger.warning("dp4a schedule failed (%s); the kernel falls back to dlight", str(exc).splitlines()[0])
            return None


def schedule_int8_gemm(sch: s_tir.Schedule, main: SBlockRV, n_axis: int) -> bool:
    a_sh = sch.cache_read(main, 0, "shared")
    b_sh = sch.cache_read(main, 1, "shared")
    writeback = sch.cache_write(main, 0, "local")
    if not _inline_rest(sch, {main, a_sh, b_sh, writeback}, writeback):
        return False
    *spatial, k = sch.get_loops(main)
    n = spatial.pop(n_axis)
    if not spatial:
        return False
    sch.reorder(*spatial, n)
    m = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    tm, tn, ty, tx = choose_tile(_extent(sch, m), _extent(sch, n))
    bm, ty_l, mi = sch.split(m, factors=[None, ty, tm])
    bn, tx_l, ni = sch.split(n, factors=[None, tx, tn])
    ko, kk, k4 = sch.split(k, factors=[None, K_TILE // 4, 4])
    sch.reorder(bm, bn, ty_l, tx_l, ko, mi, ni, kk, k4)
    sch.bind(bm, "blockIdx.y")
    sch.bind(bn, "blockIdx.x")
    sch.bind(ty_l, "threadIdx.y")
    sch.bind(tx_l, "threadIdx.x")
    sch.annotate(bn, "pragma_auto_unroll_max_step", 256)
    sch.annotate(bn, "pragma_unroll_explicit", 1)
    sch.reverse_compute_at(writeback, tx_l, preserve_unit_loops=True)
    for cached, vector in ((a_sh, 1), (b_sh, 4)):
        sch.compute_at(cached, ko, preserve_unit_loops=True)
        _cooperative_fetch(sch, cached, 5, ty, tx, vector)  # below bm, bn, ty, tx, ko
    sch.decompose_reduction(main, ko)
    # The tile's edge guard (T.where) must sit on a block above the one dp4a replaces: tensorize
    # matches no predicate. So the register tile is outside the K step and blockized with the guard.
    sch.blockize(kk)
    register_dp4a()
    sch.tensorize(k4, DP4A)
    return True


def _extent(sch: s_tir.Schedule, loop: LoopRV) -> int:
    return int(sch.get(loop).extent)


def _inline_rest(sch: s_tir.Schedule, keep: set[SBlockRV], writeback: SBlockRV) -> bool:
    """Inline every other block: operand producers into their loads, the epilogue into the write-back."""
    keep_names = {sch.get(b).name_hint for b in keep}
    progress = True
    while progress:
        progress = False
        for block in sch.get_child_blocks(get_root_block(sch)):
            if sch.get(block).name_hint in keep_names:
                continue
            for inline in (sch.compute_inline, sch.reverse_compute_inline):
                try:
                    inline(block)
                except s_tir.ScheduleError:
                    continue
                progress = True
                break
    left = [sch.get(b).name_hint for b in sch.get_child_blocks(get_root_block(sch))]
    return sorted(left) == sorted(keep_names)


def _cooperative_fetch(sch: s_tir.Schedule, block: SBlockRV, outer: int, ty: int, tx: int, vector: int) -> None:
    """The tile load spread over all threads of the block (``outer``: loops above the load's own)."""
    loops = sch.get_loops(block)[outer:]
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    total = sch.get(fused).extent  # symbolic where the tile overhangs the matrix's edge
    if vector > 1 and isinstance(total, tirx.IntImm) and int(total) % (ty * tx * vector) == 0:
        _, y, x, v = sch.split(fused, factors=[None, ty, tx, vector])
        sch.vectorize(v)
    else:
        _, y, x = sch.split(fused, factors=[None, ty, tx])
    sch.bind(y, "threadIdx.y")
    sch.bind(x, "threadIdx.x")
