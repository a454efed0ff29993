"""float32 GEMMs with a few rows (2 <= M < 16: a batch of a few samples or tokens through a linear layer) on
CUDA cores, the reduction split across the block's threads (and a long one across blocks too).

``simt-matmul`` takes no GEMM with an edge under 16 (its thread tiles run along both edges), dlight's GEMV
rules take one row, so dlight's ``Matmul`` got these: a 64x32 tile of 128 threads, of which a batch-8 GEMM
fills one eighth, each walking all of K. On the H200 (2026-12-04) the MLP's first layer (M x N x K: 8 x 512 x
784) took 0.0308 ms that way, and MetaSchedule found a schedule of 0.0116 ms; its weights are 1.6 MB, 0.5 us of
HBM bandwidth.

Such a GEMM is a read of B. Every thread keeps all M rows of ``COLUMNS`` adjacent output columns in
registers (one 16-byte load of B per k, broadcast loads of A; M padded to 8 or 16) and walks every
``threads_k``-th k, so a warp reads whole 128-byte lines of B, ``threads_k`` rows at a time; the block's
``threads_k`` partial sums meet in shared memory, where one thread per output adds them and applies the epilogue.

H200, 2026-12-04 (``tools/gpu_tensorcore_check.py --precisions fp32 --schedules effarch-small dlight``, cosine
1.000000 against numpy on each; M x N x K, us, dlight at 08:05 UTC -> this rule at 08:05, or at 08:22 where the
reduction is split): 8x512x784 31.2 -> 10.2, 8x512x512 21.0 -> 4.5, 4x4096x4096 245 -> 25.9, 12x3072x768 31.5 ->
9.3, 12x768x3072 120 -> 11.1, 2x512x784 23.8 -> 7.2, 15x1024x1024 41.3 -> 9.7. The MLP end to end (bias and GELU
in the write-back; ``tools/gpu_check.py``, two runs each, one call): batch 2 0.059 -> 0.036-0.038 ms, batch 4 0.077
-> 0.037-0.038 (from 0.80-1.15x the best PyTorch's time to 0.37-0.56x), batch 8 0.048 with MetaSchedule's records
(2.65x and 1.11x over dlight) -> 0.039.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.s_tir.schedule import LoopRV, SBlockRV
from tvm.target import Target

from targets.schedules.gpu_simt import FP32, apply_fp32_gemm
from targets.schedules.gpu_tensorcore import (
    MIN_EDGE,
    SM_COUNT,
    Gemm,
    analyze_operand,
    ceil_div,
    find_gemm,
    inline_rest,
    normalize,
    reduction_parts,
    schedule_partial_sum,
    split_reduction,
)

logger = logging.getLogger(__name__)

COLUMNS = 4  # output columns a thread keeps: one 16-byte load of B per k
# Threads across the columns and along K (H200, 2026-12-04, `tools/gpu_tensorcore_check.py`, six GEMMs of 2-12
# rows: 8 x 32 the fastest or within 2% on five, 16 x 16 on one by 7%; 128-thread blocks 1.0-3.6x slower): a warp then
# reads four rows of B, 128 contiguous bytes each.
THREADS_N = 8
THREADS_K = 32
# A long reduction (LONG_STEPS steps of THREADS_K or more) in a grid of fewer than two blocks per SM is split in
# parts, each a block of its own, while each part keeps MIN_PART_STEPS steps; a second kernel adds the parts and
# applies the epilogue. H200, 2026-12-04 08:22 UTC, us unsplit -> split: 4x4096x4096 61.7 -> 25.9 (4 parts),
# 12x768x3072 26.7 -> 11.1 (8), 15x1024x1024 23.8 -> 9.7 (4); shorter ones lost to the second launch: 8x512x784
# 10.1 -> 18.3 (2), 12x3072x768 8.9 -> 11.2, 8x512x512 4.3 -> 7.6, 2x512x784 7.0 -> 9.9.
LONG_STEPS = 32
MIN_PART_STEPS = 8


@dataclass(frozen=True)
class SmallMTiles:
    """A block's ``threads_n x COLUMNS`` output columns (all M rows), its reduction over ``threads_k`` threads,
    K in ``split_k`` parts. Its grid: one block per ``block_n`` columns and part (a 512-wide layer: 16 blocks,
    which still read B in 4.5 us)."""

    threads_n: int
    threads_k: int
    split_k: int = 1

    @property
    def block_n(self) -> int:
        return self.threads_n * COLUMNS


def choose_small_m_tiles(m: int, n: int, k: int, batch: int = 1) -> SmallMTiles:
    """``THREADS_N x THREADS_K`` threads; the partial sums of ``m`` rows (padded to 8) take 32 KiB of shared
    memory, 64 KiB from 9 rows. A long K split in parts while the blocks are fewer than two per SM."""
    if min(m, n, k, batch) < 1:
        raise ValueError(f"GEMM dimensions must be positive, got m={m} n={n} k={k} batch={batch}")
    blocks, steps = batch * ceil_div(n, THREADS_N * COLUMNS), ceil_div(k, THREADS_K)
    split = reduction_parts(blocks, steps, MIN_PART_STEPS, 2 * SM_COUNT) if steps >= LONG_STEPS else 1
    return SmallMTiles(THREADS_N, THREADS_K, split)


class SmallMMatmul(ScheduleRule):
    """float32 GEMM-shaped kernels with ``2 <= M < MIN_EDGE`` rows and ``N >= MIN_EDGE`` columns, static shapes.
    ``apply`` returns None for any other kernel."""

    def __init__(self, tiles: SmallMTiles | None = None) -> None:
        self.tiles = tiles  # forced tiles (experiments), else ``choose_small_m_tiles``

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        return apply_fp32_gemm(func, target, "small-m matmul",
                               lambda sch, gemm: schedule_small_m(sch, gemm, self.tiles))


def plan_small_m(func: tirx.PrimFunc) -> tuple[tuple[int, int, int, int], SmallMTiles] | None:
    """``func``'s GEMM shape ``(batch, m, n, k)`` and tiles (None when the rule would not take it)."""
    sch = s_tir.Schedule(func)
    gemm = find_gemm(sch, FP32)
    shape = None if gemm is None else _normalized(sch, gemm)
    return None if shape is None else (shape, choose_small_m_tiles(shape[1], shape[2], shape[3], shape[0]))


def _normalized(sch: s_tir.Schedule, gemm: Gemm) -> tuple[int, int, int, int] | None:
    """``gemm``'s block rewritten to ``C[S, I, J] += A * B`` and its extents, if it is a small-M GEMM whose B
    runs along N (as ``[K, N]``: a warp's 16-byte loads of ``[N, K]`` would stride by K)."""
    stmt = sch.get(gemm.block)
    b = analyze_operand(stmt, 1)
    if b.k_inner:
        return None
    shape = normalize(sch, gemm.block, analyze_operand(stmt, 0), b)
    if shape is None or not 2 <= shape[1] < MIN_EDGE or shape[2] < MIN_EDGE:
        return None
    batch, m, n, k = shape
    return batch, m, n, k


def schedule_small_m(sch: s_tir.Schedule, gemm: Gemm, tiles: SmallMTiles | None = None) -> bool:
    """Schedule ``gemm`` (float32, a few rows) in place; False when it is not a GEMM this rule takes."""
    shape = _normalized(sch, gemm)
    if shape is None:
        return False
    batch, m, n, k = shape
    tiles = tiles or choose_small_m_tiles(m, n, k, batch)
    logger.info("small-m: %s: %s", "x".join(map(str, shape)), tiles)
    # M padded so that the block's padded outputs fall exactly on its threads (8 rows x 32 columns, 256): with a
    # guard instead, TVM 0.27 dropped it from the write-back placed inside, and rows past M were written
    rows = tiles.threads_k * tiles.threads_n // tiles.block_n
    sch.pad_einsum(gemm.block, [1, rows, tiles.block_n, tiles.threads_k * tiles.split_k])
    main, parts = gemm.block, None
    if tiles.split_k > 1:  # main: each part's sums [part * batch, m, n]; parts: their sum
        main, parts = split_reduction(sch, gemm.block, tiles.split_k), gemm.block
    kept = [*_partial_sums(sch, main, tiles), main, _sum_partials(sch, main, tiles), *([parts] if parts else [])]
    inline_rest(sch, {sch.get(b).name_hint for b in kept})
    if parts is not None:
        schedule_partial_sum(sch, parts)
    return True


def _partial_sums(sch: s_tir.Schedule, block: SBlockRV, tiles: SmallMTiles) -> list[SBlockRV]:
    """Each thread's sum over its k (every ``threads_k``-th) of its ``m x COLUMNS`` outputs, in registers,
    then stored to the block's shared partial sums ``[threads_k, m, block_n]``. Returns the blocks made:
    the partial sums, their initialisation, their store to shared memory, the load of B."""
    s_loop, i, j, k = sch.get_loops(block)
    jb, jt, jv = sch.split(j, [None, tiles.threads_n, COLUMNS])
    ko, kt = sch.split(k, [None, tiles.threads_k])
    partial = sch.rfactor(kt, factor_axis=0)
    s_loop, i, jb, jt, jv, ko, kt = sch.get_loops(partial)
    sch.reorder(s_loop, jb, kt, jt, ko, i, jv)
    sch.bind(sch.fuse(s_loop, jb), "blockIdx.x")
    sch.bind(kt, "threadIdx.y")
    sch.bind(jt, "threadIdx.x")
    acc = sch.cache_write(partial, 0, "local")
    sch.reverse_compute_at(acc, jt)
    sch.set_scope(acc, 0, "shared.dyn")  # over 48 KiB from 9 rows: the runtime raises the kernel's limit
    b_reg = sch.cache_read(partial, 1, "local")  # B's COLUMNS for one k
    sch.compute_at(b_reg, ko)
    sch.vectorize(sch.get_loops(b_reg)[-1])
    sch.unroll(i)
    sch.unroll(jv)
    init = sch.decompose_reduction(partial, ko)
    *_, cols = sch.get_loops(acc)
    sch.vectorize(cols)
    return [partial, init, acc, b_reg]


def _sum_partials(sch: s_tir.Schedule, block: SBlockRV, tiles: SmallMTiles) -> SBlockRV:
    """``block`` (left by ``rfactor`` summing the partial sums over the threads of K) computed per thread
    block, one output element per thread; its result written back with the epilogue."""
    bx = sch.get_loops(sch.get_producers(block)[0])[0]
    sch.reverse_compute_at(block, bx)
    loops = sch.get_loops(block)[1:]
    kt = _reduction_loop(sch, loops)
    spatial = [lp for lp in loops if not sch.get(lp).same_as(sch.get(kt))]
    sch.reorder(*spatial, kt)
    _, ty, tx = sch.split(sch.fuse(*spatial), [None, tiles.threads_k, tiles.threads_n])
    sch.bind(ty, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")
    total = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(total, tx)
    return total


def _reduction_loop(sch: s_tir.Schedule, loops: list[LoopRV]) -> LoopRV:
    """The one of ``loops`` (the loop nest of a block, innermost last) that its reduction iterator runs over."""
    from tvm.tirx.analysis import undefined_vars

    realize = sch.get(loops[-1]).body
    (value,) = [v for iv, v in zip(realize.block.iter_vars, realize.iter_values, strict=True)
                if iv.iter_type == tirx.IterVar.CommReduce]
    used = undefined_vars(value)
    (loop,) = [lp for lp in loops if any(sch.get(lp).loop_var.same_as(v) for v in used)]
    return loop

