"""float32 matmuls, batched matmuls and convolutions on CUDA cores, tiled by shape, the reduction split
when the tiles alone leave SMs idle.

dlight's ``Matmul`` gives every float32 GEMM the same 64x32 tile of 128 threads and never splits the
reduction: a batch-1 ResNet-18 layer-4 3x3 convolution (49 pixels x 512 channels, K = 4608) is 16 thread
blocks for 132 SMs, each walking all of K. This rule reads the kernel as the tensor-core rule does
(``gpu_tensorcore``: the GEMM ``C[S, I, J] += A[S, I, K] * B[S, J, K]``, the im2col gather inlined into
the operand loads, the epilogue into the write-back) and chooses the tile the same way: the largest tile
whose grid fills every SM, else the smallest and the reduction cut into parts that a second kernel adds
(with the epilogue).

A thread computes ``MICRO`` outputs along the edge its warp runs across (threadIdx.x) and ``TALL`` (8,
in tiles of 64 or more; else 4) along the other. The warp runs along the output's contiguous edge: N
for a matmul or an NHWC convolution, M (the pixels) for an NCHW convolution, whose output is [channels,
pixels]; its stores are then 16-byte vectors side by side. Per ``BLOCK_K`` step both operand tiles go
to shared memory stored ``[K, rows]`` (transposed when the operand lies K-inner: read from global memory
in 16-byte vectors along K, stored element by element down the padded columns), so that per k a thread
loads its values of each operand with 16-byte shared-memory loads: one for the operand along the warp
(8 threads of a quarter-warp read 128 contiguous bytes: no bank conflict), one or two for the other
(broadcast across the warp), and issues ``MICRO x TALL`` FMAs. float16/bfloat16 GEMMs go to the
tensor-core rule; this one takes only float32.

Both operands as vectors (H200, 2026-12-03; the other operand was 4-8 scalar loads per k before):
100352x64x576 225 -> 197 us, 1568x512x4608 314 -> 297, 4096x1536x384 141 -> 126, MiniLM's batch-32
GEMMs 2-6% faster; ResNet-18 fp32 b32 4.89 -> 4.60 ms, MobileNetV2 b32 1.49 -> 1.43, ResNet-18 b1 0.411
-> 0.394. 8x8 outputs a thread (two vectors along the warp) measured 1.2-1.5x slower on those GEMMs.

Measured on the H200 (2026-12-02, ``tools/gpu_tensorcore_check.py --precisions fp32``, cosine 1.000000
against numpy on every case): the layer-4 conv 380 -> 27 us against dlight, 49x512x4608 193 -> 22 us,
the encoder's 128x384x1536 66 -> 16 us; at batch 32 1.2-1.9x dlight, 21-35 TFLOP/s with 8x4 outputs a
thread (4x4: 10-18% slower; a software pipeline over K, ``cp.async``: 1-4% slower, so it stays off).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.s_tir.schedule import LoopRV, SBlockRV
from tvm.target import Target

from targets.schedules.gpu_tensorcore import (
    MIN_EDGE,
    SM_COUNT,
    Gemm,
    Operand,
    analyze_operand,
    block_tile,
    ceil_div,
    find_gemm,
    inline_rest,
    normalize,
    output_runs_along_a,
    pipeline_k_steps,
    reduction_parts,
    round_up,
    schedule_partial_sum,
    split_reduction,
)

logger = logging.getLogger(__name__)

FP32 = frozenset({("float32", "float32")})
BLOCK_K = 16  # reduction elements per shared-memory step (64 bytes of a float32 row)
MICRO = 4  # a thread's outputs along the edge its warp runs across: 16 bytes of float32
TALL = 8  # and along the other edge, in tiles of 64 or more (H200, GEMMs at batch 32: 10-18% faster than 4)
# (block_m, block_n) from largest to smallest; with 4x4 per thread: 512 .. 64 threads.
BLOCK_TILES = ((128, 64), (64, 128), (64, 64), (64, 32), (32, 64), (32, 32))
PAD = 4  # words after each shared row read down a column: spreads banks, keeps 16-byte vectors aligned
# A tile is large enough to take when its grid gives every SM two blocks: at one, a grid of 1-2 waves leaves
# SMs idle (H200, 2026-12-02 23:02 UTC: 4096x384x1536 184 -> 140 us with 64x64 tiles instead of 128x64,
# 1568x512x4608 356 -> 305 us with 32x64 instead of 64x64; 128x128 tiles were 6% slower where they applied).
BLOCKS_PER_SM = 2
# BLOCK_K steps each part of a split reduction keeps at least (H200, 2026-12-03, 8 -> 4 steps: GPT fp32 b1
# 0.195 -> 0.165 ms, MobileNetV2 b1 0.309 -> 0.276, the MLP b32 0.044 -> 0.040, the digits CNN b32 0.030 ->
# 0.026 but b1 0.0290 -> 0.0303; ResNet-18 b1 and b32, MobileNetV2 b32 unchanged)
MIN_PART_STEPS = 4
# A GEMM whose filling tile is under 64 on both edges (4x4 outputs a thread, 64 threads a block), though a 64x64
# tile fits it, and whose reduction is LONG_STEPS BLOCK_K steps or more takes 64x64 tiles, the reduction split
# until they fill the SMs as well (H200, 2026-12-03, batch 32, one call: MiniLM fp32 1.143 -> 0.897 ms, its FFN
# down 76 -> 37 us a launch with the partial sums' kernel; GPT fp32 0.649 -> 0.586).
LONG_STEPS = 64


@dataclass(frozen=True)
class SimtTiles:
    """A thread block's ``block_m x block_n`` outputs, ``micro_m x micro_n`` per thread, the reduction in
    ``split_k`` parts."""

    block_m: int
    block_n: int
    split_k: int = 1
    micro_m: int = MICRO
    micro_n: int = MICRO

    @property
    def threads_m(self) -> int:
        return self.block_m // self.micro_m

    @property
    def threads_n(self) -> int:
        return self.block_n // self.micro_n

    @property
    def threads(self) -> int:
        return self.threads_m * self.threads_n


def choose_simt_tiles(m: int, n: int, k: int, batch: int = 1, tall: int = TALL, across_m: bool = False) -> SimtTiles:
    """The largest tile whose grid has ``BLOCKS_PER_SM`` blocks per SM, among tiles no larger than the matrix
    rounded up to 32 (less padding on a tie); else the one with the most blocks and the reduction split
    in two until the parts give every SM ``BLOCKS_PER_SM`` too, each part keeping ``MIN_PART_STEPS`` steps
    (H200, 2026-12-03: ResNet-18 fp32 b1 0.569 -> 0.400 ms against splits to one block per SM); 64x64 tiles and a
    split where small tiles would walk a long reduction (``LONG_STEPS``). A thread's outputs:
    ``MICRO`` along the edge its warp runs across (one 16-byte load per k; N, or M when ``across_m``),
    ``tall`` along the other where that edge of the tile is 64 or more."""
    bm, bn = block_tile(m, n, k, batch, BLOCK_TILES, BLOCKS_PER_SM * SM_COUNT)
    steps = round_up(k, BLOCK_K) // BLOCK_K
    split = reduction_parts(batch * ceil_div(m, bm) * ceil_div(n, bn), steps, MIN_PART_STEPS,
                            BLOCKS_PER_SM * SM_COUNT)
    if split == 1 and max(bm, bn) < 64 <= min(round_up(m, 32), round_up(n, 32)) and steps >= LONG_STEPS:
        bm, bn = 64, 64
        split = reduction_parts(batch * ceil_div(m, bm) * ceil_div(n, bn), steps, MIN_PART_STEPS,
                                BLOCKS_PER_SM * SM_COUNT)
    if across_m:
        return SimtTiles(bm, bn, split, MICRO, tall if bn >= 64 else MICRO)
    return SimtTiles(bm, bn, split, tall if bm >= 64 else MICRO, MICRO)


class SimtMatmul(ScheduleRule):
    """float32 GEMM-shaped kernels (matmul, batched matmul, NCHW and NHWC convolution) on CUDA cores.
    ``apply`` returns None for a kernel it does not take: not CUDA, no float32 GEMM, a dimension
    under 16 (matrix-vector: dlight's GEMV rules), a symbolic shape."""

    def __init__(self, tall: int = TALL, pipeline: int = 1) -> None:
        self.tall = tall
        self.pipeline = pipeline

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        return apply_fp32_gemm(func, target, "simt matmul",
                               lambda sch, gemm: schedule_simt(sch, gemm, self.tall, self.pipeline))


def apply_fp32_gemm(func: tirx.PrimFunc, target: Target, rule: str,
                    schedule: Callable[[s_tir.Schedule, Gemm], bool]) -> s_tir.Schedule | None:
    """``func`` scheduled by ``schedule`` if it is a CUDA kernel around one float32 GEMM that ``schedule`` takes
    (it returns False, or raises on a shape or epilogue it does not take), else None."""
    if not isinstance(func, tirx.PrimFunc) or target.kind.name != "cuda":
        return None
    sch = s_tir.Schedule(func)
    gemm = find_gemm(sch, FP32)
    if gemm is None:
        return None
    try:
        return sch if schedule(sch, gemm) else None
    except (s_tir.ScheduleError, ValueError) as exc:
        logger.info("%s declined (%s)", rule, (str(exc).strip().splitlines() or ["?"])[-1])
        return None


@dataclass(frozen=True)
class SimtPlan:
    """What the rule does with one kernel: its operands, GEMM shape ``(batch, m, n, k)``, tiles, and whether
    the warp runs along M."""

    a: Operand
    b: Operand
    shape: tuple[int, int, int, int]
    tiles: SimtTiles
    across_m: bool


def plan_simt(func: tirx.PrimFunc, tall: int = TALL) -> tuple[tuple[int, int, int, int], SimtTiles] | None:
    """``func``'s GEMM shape ``(batch, m, n, k)`` and tiles (None when the rule would not take it)."""
    sch = s_tir.Schedule(func)
    gemm = find_gemm(sch, FP32)
    plan = None if gemm is None else _prepare(sch, gemm, tall)
    return None if plan is None else (plan.shape, plan.tiles)


def _prepare(sch: s_tir.Schedule, gemm: Gemm, tall: int) -> SimtPlan | None:
    """Normalize ``gemm``'s block in ``sch`` and choose its tiles (None: a matrix-vector product or a
    symbolic shape)."""
    stmt = sch.get(gemm.block)
    across_m = output_runs_along_a(stmt)
    a, b = analyze_operand(stmt, 0), analyze_operand(stmt, 1)
    shape = normalize(sch, gemm.block, a, b)
    if shape is None or min(shape[1], shape[2]) < MIN_EDGE:
        return None
    batch, m, n, k = shape
    tiles, across_m = _tiles(m, n, k, batch, tall, across_m)
    return SimtPlan(a, b, (batch, m, n, k), tiles, across_m)


def _tiles(m: int, n: int, k: int, batch: int, tall: int, across_m: bool) -> tuple[SimtTiles, bool]:
    """The tiles and whether the warp runs along M: only without a split, since the partial sums are
    laid out ``[part, M, N]``."""
    tiles = choose_simt_tiles(m, n, k, batch, tall, across_m)
    if across_m and tiles.split_k > 1:
        return choose_simt_tiles(m, n, k, batch, tall), False
    return tiles, across_m


def schedule_simt(sch: s_tir.Schedule, gemm: Gemm, tall: int = TALL, pipeline: int = 1) -> bool:
    """Schedule ``gemm`` (float32) in place; False when it is not a GEMM this rule takes. ``pipeline``:
    the next K step's tiles copied to shared memory (``cp.async``) while this one computes."""
    plan = _prepare(sch, gemm, tall)
    if plan is None:
        return False
    a, b, tiles, across_m = plan.a, plan.b, plan.tiles, plan.across_m
    logger.info("simt: %s: %s", "x".join(map(str, plan.shape)), tiles)
    sch.pad_einsum(gemm.block, [1, tiles.block_m, tiles.block_n, BLOCK_K * tiles.split_k])
    main, partial_sum = gemm.block, None
    if tiles.split_k > 1:
        main, partial_sum = split_reduction(sch, gemm.block, tiles.split_k), gemm.block
    s_loop, i, j, kk = sch.get_loops(main)
    ib, it, im = sch.split(i, [None, tiles.threads_m, tiles.micro_m])
    jb, jt, jm = sch.split(j, [None, tiles.threads_n, tiles.micro_n])
    ko, ki = sch.split(kk, [None, BLOCK_K])
    sch.reorder(ib, jb, it, jt, ko, ki, im, jm)
    sch.bind(sch.fuse(ib, jb), "blockIdx.x")
    sch.bind(s_loop, "blockIdx.y")
    # threadIdx.x runs along the output's contiguous edge: the warp's stores are then coalesced
    threads = (tiles.threads_n, tiles.threads_m) if across_m else (tiles.threads_m, tiles.threads_n)  # (y, x)
    sch.bind(it, "threadIdx.x" if across_m else "threadIdx.y")
    sch.bind(jt, "threadIdx.y" if across_m else "threadIdx.x")
    acc = sch.cache_write(main, 0, "local")
    sch.reverse_compute_at(acc, jt)
    a_sh = _stage(sch, main, 0, ko, threads, a)
    b_sh = _stage(sch, main, 1, ko, threads, b)
    a_reg = _registers(sch, main, 0, ki)
    b_reg = _registers(sch, main, 1, ki)
    sch.unroll(ki)
    sch.unroll(im)
    sch.unroll(jm)
    init = sch.decompose_reduction(main, ko)
    if pipeline > 1:  # ko's body: the A copy, the B copy, the k loop
        pipeline_k_steps(sch, ko, pipeline, async_copy=False)  # TVM 0.27's cp.async injection fails on these copies
    kept = [main, init, acc, a_sh, b_sh, a_reg, b_reg] + ([partial_sum] if partial_sum else [])
    inline_rest(sch, {sch.get(x).name_hint for x in kept})
    rows, cols = sch.get_loops(acc)[-2:]
    if across_m:
        sch.reorder(cols, rows)
        rows, cols = cols, rows
    sch.unroll(rows)
    sch.vectorize(cols)  # 16-byte stores where the output's layout allows; TVM scalarizes them elsewhere
    if partial_sum is not None:
        schedule_partial_sum(sch, partial_sum)
    return True


def _stage(sch: s_tir.Schedule, main: SBlockRV, index: int, ko: LoopRV, threads: tuple[int, int],
           op: Operand) -> SBlockRV:
    """Operand ``index``'s tile for one K step in shared memory, stored ``[K, rows]`` (transposed when it
    lies K-inner), copied by all the block's ``threads`` (y, x) in vectors along the global layout's
    inner axis where it allows (a transposed copy then stores each vector's elements one by one)."""
    cached = sch.cache_read(main, index, "shared.dyn")
    sch.compute_at(cached, ko)
    rows, cols = sch.get_loops(cached)[-2:]
    width = int(sch.get(cols).extent)
    elements = int(sch.get(rows).extent) * width
    lanes = math.gcd(4, width, op.lanes)
    while lanes > 1 and elements % (threads[0] * threads[1] * lanes):
        lanes //= 2
    if op.k_inner:
        sch.transform_layout(cached, ("write", 0), lambda *idx: (*idx[:-2], idx[-1], idx[-2]))
    fused = sch.fuse(rows, cols)
    _, ty, tx, vec = sch.split(fused, [None, *threads, lanes])
    sch.bind(ty, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")
    sch.vectorize(vec)
    if op.k_inner:  # rows padded: the transposed copy's stores go down a column
        sch.storage_align(cached, 0, axis=-2, factor=32, offset=PAD)
    return cached



def _registers(sch: s_tir.Schedule, main: SBlockRV, index: int, ki: LoopRV) -> SBlockRV:
    """The thread's values of operand ``index`` for one k, loaded into registers once: contiguous in the
    ``[K, rows]`` shared tile, so 16-byte shared-memory loads (two for 8 values)."""
    reg = sch.cache_read(main, index, "local")
    sch.compute_at(reg, ki)
    *_, last = sch.get_loops(reg)
    if int(sch.get(last).extent) > 4:
        last = sch.split(last, [None, 4])[1]
    sch.vectorize(last)
    return reg
