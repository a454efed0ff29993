"""Matmuls, batched matmuls and convolutions on NVIDIA tensor cores (WMMA 16x16x16), tiled by shape.

A kernel is taken when its one reduction block is a GEMM ``C[S, I, J] += A[S, I, K] * B[S, J, K]`` up to
index remapping (dlight's iter-trait analysis finds S, I, J, K; an NCHW convolution is such a GEMM with
the im2col gather inlined into the operand load), with float16 or bfloat16 operands and a float16 or
float32 accumulator (bfloat16 only with float32: WMMA has no bfloat16 accumulator). Other epilogue
blocks (cast, bias, activation) are inlined into the write-back.

Unlike dlight's ``MatmulTensorization`` (fixed 128x128x64 tiles, no GEMM with a dimension <= 64), the
block tile comes from ``choose_tiles``: the largest tile whose grid still fills every SM, down to
32x32, and a split of the reduction (split-K) when even 32x32 tiles leave SMs idle (a second kernel
adds the parts and runs the epilogue). Both the split and a software pipeline over the K steps are
options of ``TensorCoreMatmul``; the CUDA build turns the split on (H200, ``tools/gpu_tensorcore_check.py``:
the 49x512x4608 GEMM 30 -> 9 us, ResNet-18's layer-4 3x3 conv 74 -> 15 us) and pipelines long reductions
whose operands load as 16-byte vectors (``pipeline_stages``: the next K step's tiles arrive by ``cp.async``
while this one computes; the build's ``tirx.use_async_copy`` makes TVM emit them). GEMMs with
fewer than 16 rows or columns (matrix-vector) are left to dlight's GEMV rules. A thread block
holds ``warps_m x warps_n`` warps, each computing a ``(block_m / warps_m) x (block_n / warps_n)``
part of the tile as 16x16 fragments. Per ``block_k`` step both operand tiles go to shared memory
(rows padded by 8 elements against bank conflicts), each warp loads its fragments from there and
issues one ``mma_sync`` per 16x16x16 product; the accumulator goes back through shared memory, and from
there to the output along its contiguous edge (N, or M for an NCHW convolution, whose output runs along
pixels), in 4-element vectors (``vector_store``). The build allows 4 warps a block (64x64 outputs a warp
in a 128x128 tile: 10-15% faster than 8 warps on the bf16 batch-32 GEMMs, 2026-12-03).

The WMMA intrinsics are effarch's own (``targets.schedules.wmma_intrin``): TVM's set in
``tvm.s_tir.tensor_intrin.cuda`` has no bfloat16 variant and costs ~90 s to import.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_root_block
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.s_tir.schedule import LoopRV, SBlockRV
from tvm.target import Target

from targets.schedules.common import is_copy_block, is_reduction_block
from targets.schedules.wmma_intrin import register_wmma

logger = logging.getLogger(__name__)

SM_COUNT = 132  # H100/H200; smaller GPUs are filled by any grid that fills these
FRAG = 16  # WMMA fragment edge (m16n16k16)
WARP = 32
MIN_EDGE = 16  # GEMMs with fewer rows or columns are left to other rules (GEMV)
PAD = 8  # shared-memory row padding in elements: keeps 16-byte alignment and spreads banks
# (block_m, block_n) from largest to smallest; every edge a multiple of 32 so two warps split it.
BLOCK_TILES = ((128, 128), (128, 64), (64, 128), (64, 64), (64, 32), (32, 64), (32, 32))
# (operand dtype, accumulator dtype) pairs that WMMA on sm_80+ computes.
SUPPORTED = frozenset({("float16", "float16"), ("float16", "float32"), ("bfloat16", "float32")})
# Accumulators WMMA lacks, widened to float32 (rounded once when stored, as PyTorch's bf16 GEMMs do).
WIDENED = frozenset({("bfloat16", "bfloat16")})
GATHER_RUN = 8  # an operand with 2..7 elements contiguous along K (an NHWC stem's 3 channels) is copied
GATHER_WARPS = 8  # along its rows, by at least 8 warps (ResNet-18's stem, bf16 b32, H200 2026-12-03: 308 us
# with 4 warps along K, 255 along the rows; NCHW's gathers (runs of 1) along the rows made batch 1 2.4x slower)
GATHER_WAVES = 4  # a kernel with an operand not copied in 16-byte vectors (a gather) gets tiles and splits for
# 4 blocks per SM (ResNet-18 fp16 b1, H200 2026-12-03: stem 29.3 -> 8.9 us, the model 0.243 -> 0.216 ms; for
# GEMMs of vector loads, more and smaller blocks measured slower: ResNet-18 fp16 b32 0.794 -> 1.023 ms)
PIPELINE_MIN_STEPS = 16  # K steps (per part of a split) from which the operand copies are pipelined
PIPELINE_SHORT_STEPS = 4  # ... or from which they are, in a grid of at most PIPELINE_SHORT_WAVES blocks per SM
PIPELINE_SHORT_WAVES = 2


@dataclass(frozen=True)
class Tiles:
    """One thread block's share of a GEMM: a ``block_m x block_n`` output tile, ``block_k`` of the
    reduction per shared-memory step, ``warps_m x warps_n`` warps, the reduction cut in ``split_k``."""

    block_m: int
    block_n: int
    block_k: int
    warps_m: int
    warps_n: int
    split_k: int = 1

    @property
    def frags_m(self) -> int:
        return self.block_m // (self.warps_m * FRAG)

    @property
    def frags_n(self) -> int:
        return self.block_n // (self.warps_n * FRAG)

    @property
    def threads(self) -> int:
        return self.warps_m * self.warps_n * WARP


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def round_up(a: int, b: int) -> int:
    return ceil_div(a, b) * b


def _block_k(k: int) -> int:
    """The longest reduction step (64, 32 or 16) that pads ``k`` by at most 1/8 beyond 16's multiple."""
    k16 = round_up(k, FRAG)
    for step in (64, 32):
        if step <= k16 and round_up(k, step) * 8 <= k16 * 9:
            return step
    return FRAG


def _warps(edge: int) -> int:
    return 4 if edge >= 128 else 2


def block_tile(m: int, n: int, k: int, batch: int, tiles: tuple[tuple[int, int], ...],
               min_blocks: int = SM_COUNT) -> tuple[int, int]:
    """The largest of ``tiles`` (largest first, each no larger than the matrix rounded up to 32) whose grid
    has at least ``min_blocks`` blocks, less padding on a tie; when none has, the one with the most
    blocks."""
    if min(m, n, k, batch) < 1:
        raise ValueError(f"GEMM dimensions must be positive, got m={m} n={n} k={k} batch={batch}")
    fits = [(bm, bn) for bm, bn in tiles if bm <= round_up(m, 32) and bn <= round_up(n, 32)]

    def blocks(tile: tuple[int, int]) -> int:
        return batch * ceil_div(m, tile[0]) * ceil_div(n, tile[1])

    def padded(tile: tuple[int, int]) -> int:
        return round_up(m, tile[0]) * round_up(n, tile[1])

    filling = [t for t in fits if blocks(t) >= min_blocks]
    if filling:
        return max(filling, key=lambda t: (t[0] * t[1], -padded(t)))
    return max(fits, key=lambda t: (blocks(t), -padded(t)))


def reduction_parts(blocks: int, steps: int, min_steps: int, min_blocks: int = SM_COUNT) -> int:
    """How many parts to cut a reduction of ``steps`` K steps into: doubled while ``blocks`` thread blocks
    times the parts are fewer than ``min_blocks`` (default: one per SM) and each part keeps at least
    ``min_steps`` steps."""
    split = 1
    while blocks * split < min_blocks and steps // (split * 2) >= min_steps:
        split *= 2
    return split


def choose_tiles(m: int, n: int, k: int, batch: int = 1, max_warps: int = 16, waves: int = 1) -> Tiles:
    """The tiles for a ``batch x (m x k) @ (k x n)`` GEMM.

    The largest block tile whose grid has at least ``waves * SM_COUNT`` blocks (more reuse per loaded
    element), among tiles no larger than the matrix rounded up to 32; the one with less padding on a
    tie. When no tile fills the GPU, the smallest (most blocks), and the reduction split so that
    the partial products fill it, each part keeping at least four ``block_k`` steps. At most
    ``max_warps`` warps per block (fewer warps: each computes more fragments per operand load).
    """
    min_blocks = waves * SM_COUNT
    bm, bn = block_tile(m, n, k, batch, BLOCK_TILES, min_blocks)
    bk = _block_k(k)
    split = reduction_parts(batch * ceil_div(m, bm) * ceil_div(n, bn), round_up(k, bk) // bk, 4, min_blocks)
    wm, wn = _warps(bm), _warps(bn)
    while wm * wn > max_warps and max(wm, wn) > 1:
        wm, wn = (wm // 2, wn) if wm >= wn else (wm, wn // 2)
    return Tiles(bm, bn, bk, wm, wn, split)


# ---- the schedule rule --------------------------------------------------------------------------
@dataclass(frozen=True)
class Gemm:
    """The GEMM found in a kernel: its reduction block, operand and accumulator dtypes."""

    block: SBlockRV
    in_dtype: str
    acc_dtype: str


def sm_version(target: Target) -> int:
    arch = str(target.attrs.get("arch", ""))
    digits = arch.removeprefix("sm_").rstrip("a")
    return int(digits) if digits.isdigit() else 0


def find_gemm(sch: s_tir.Schedule, dtypes: frozenset[tuple[str, str]] = SUPPORTED | WIDENED) -> Gemm | None:
    """The kernel's single reduction block if it is a GEMM whose (operand, accumulator) dtypes are in
    ``dtypes`` (default: the tensor-core ones), else None."""
    from tvm.s_tir.dlight.gpu.matmul import get_index_map

    inline_copies(sch)
    blocks = sch.get_child_blocks(get_root_block(sch))
    reductions = [b for b in blocks if is_reduction_block(sch.get(b))]
    if len(reductions) != 1:
        return None
    stmt = sch.get(reductions[0])
    if len(stmt.reads) != 2 or len(stmt.writes) != 1 or get_index_map(stmt) is None:
        return None
    in_a, in_b = (str(r.source.dtype) for r in stmt.reads)
    acc = str(stmt.writes[0].source.dtype)
    if in_a != in_b or (in_a, acc) not in dtypes:
        return None
    return Gemm(reductions[0], in_a, acc)


def inline_copies(sch: s_tir.Schedule) -> None:
    """Copies (``common.is_copy_block``: a transpose, slice or reshape ``cast_fusion`` moved in front of a
    GEMM, such as attention's head split) inlined into the kernel's one reduction block, which then reads
    their source: the operand analysis sees the layout the copy to shared memory really reads."""
    while True:
        reductions = [b for b in sch.get_child_blocks(get_root_block(sch)) if is_reduction_block(sch.get(b))]
        if len(reductions) != 1:
            return
        copies = [p for p in sch.get_producers(reductions[0]) if is_copy_block(sch.get(p))]
        if not copies:
            return
        try:
            sch.compute_inline(copies[0])
        except s_tir.ScheduleError:
            return


class TensorCoreMatmul(ScheduleRule):
    """GEMM-shaped kernels (matmul, batched matmul, NCHW convolution) on WMMA tensor cores.

    ``apply`` returns None for a kernel it does not take: not CUDA or older than sm_80, no GEMM,
    operand dtypes other than float16/bfloat16 (float32 inputs stay on dlight), a symbolic shape.
    """

    def __init__(self, split_k: bool = False, pipeline: int | None = None, max_warps: int = 16,
                 vector_store: bool = False, shared_loads: bool = False, tiles: Tiles | None = None) -> None:
        self.split_k = split_k
        self.pipeline = pipeline
        self.max_warps = max_warps
        self.vector_store = vector_store
        self.shared_loads = shared_loads
        self.tiles = tiles  # every GEMM in these tiles instead of ``choose_tiles``' (kernel experiments)

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "cuda" or sm_version(target) < 80:
            return None
        if func.attrs is not None and "dlight.do_not_tensorize" in func.attrs:
            return None
        sch = s_tir.Schedule(func)
        gemm = find_gemm(sch)
        if gemm is None:
            return None
        try:
            return sch if schedule_gemm(sch, gemm, self.split_k, self.pipeline, self.max_warps,
                                        self.vector_store, self.shared_loads, self.tiles) else None
        except (s_tir.ScheduleError, ValueError) as exc:  # a shape or epilogue it does not take
            logger.info("tensor-core schedule declined (%s)", (str(exc).strip().splitlines() or ["?"])[-1])
            return None


@dataclass(frozen=True)
class Operand:
    """How one operand sits in memory: ``k_inner`` when its innermost index runs along the reduction
    (its shared tile is then ``[rows, k]``, else ``[k, rows]``); ``lanes``: the widest vector its
    global layout allows along that inner axis (1 for a gather such as a convolution's input)."""

    k_inner: bool
    lanes: int


def analyze_operand(stmt: tirx.stmt.SBlock, index: int) -> Operand:
    """``stmt``'s read ``index`` (0 = A, 1 = B) classified by the variables of its last index."""
    from tvm.tirx.analysis import undefined_vars

    iters = [iv for iv in stmt.iter_vars if not _unit(iv.dom.extent)]
    reduce = [iv.var for iv in iters if iv.iter_type == tirx.IterVar.CommReduce]
    mins = _indices(stmt, index)
    other = {v for m in _indices(stmt, 1 - index) for v in undefined_vars(m)}
    mine = {v for m in mins for v in undefined_vars(m)}
    rows = [iv.var for iv in iters if iv.var in mine and iv.var not in other and iv.var not in reduce]
    last = next((m for m in reversed(mins) if not isinstance(m, tirx.IntImm)), mins[-1])
    used = [v for v in undefined_vars(last) if any(v.same_as(iv.var) for iv in iters)]
    if used and all(any(v.same_as(r) for r in reduce) for v in used):
        return Operand(True, _lanes(stmt, index, reduce))
    if used and not any(any(v.same_as(r) for r in reduce) for v in used):
        return Operand(False, _lanes(stmt, index, rows))
    return Operand(True, 1)


def _unit(extent: tirx.PrimExpr) -> bool:
    return isinstance(extent, tirx.IntImm) and int(extent) == 1


def _indices(stmt: tirx.stmt.SBlock, index: int) -> list[tirx.PrimExpr]:
    """Read ``index``'s indices with extent-1 variables as 0 (a 1x1 kernel's ``yy + ry`` is ``yy``), simplified
    within the iterators' ranges (a reshape's ``(h * 64 + d) % 64`` is ``d``)."""
    from tvm import sym

    analyzer = sym.Analyzer()
    for iv in stmt.iter_vars:
        analyzer.bind(iv.var, tirx.IntImm(iv.dom.extent.ty, 0) if _unit(iv.dom.extent) else iv.dom)
    return [analyzer.simplify(r.min) for r in stmt.reads[index].region]


def _lanes(stmt: tirx.stmt.SBlock, index: int, group: list[tirx.Var]) -> int:
    """Elements contiguous in memory along ``group`` (fused in block order): all of them when the
    buffer's trailing indices are exactly those variables over whole dimensions, else the last one's."""
    mins = _indices(stmt, index)
    buffer = stmt.reads[index].source
    extent = {iv.var: int(iv.dom.extent) for iv in stmt.iter_vars if isinstance(iv.dom.extent, tirx.IntImm)}
    dims = [d for d, m in enumerate(mins) if not isinstance(m, tirx.IntImm)]  # a constant index breaks no run
    if not group or not dims or not isinstance(mins[dims[-1]], tirx.Var):
        return 1
    last = mins[dims[-1]]
    if not last.same_as(group[-1]):
        return 1
    tail = dims[-len(group):]
    whole = len(tail) == len(group) and all(
        isinstance(mins[d], tirx.Var) and mins[d].same_as(v)
        and int(buffer.shape[d]) == extent.get(v, -1) for d, v in zip(tail, group, strict=True))
    return math.prod(extent.get(v, 1) for v in group) if whole else extent.get(last, 1)


def output_runs_along_a(stmt: tirx.stmt.SBlock) -> bool:
    """Whether the GEMM's output is contiguous along A's rows (M) rather than B's (N): an NCHW
    convolution, whose output runs along pixels, the rows of its im2col operand."""
    from tvm.tirx.analysis import undefined_vars

    def variables(region: tirx.BufferRegion | None, last: bool = False) -> list[tirx.Var]:
        mins = [r.min for r in region.region] if region is not None else []
        return [v for m in (mins[-1:] if last else mins) for v in undefined_vars(m)]

    def among(v: tirx.Var, vs: list[tirx.Var]) -> bool:
        return any(v.same_as(u) for u in vs)

    a_vars, b_vars = variables(stmt.reads[0]), variables(stmt.reads[1])
    inner = variables(stmt.writes[0], last=True)
    return any(among(v, a_vars) and not among(v, b_vars) for v in inner)


def normalize(sch: s_tir.Schedule, block: SBlockRV, a: Operand, b: Operand) -> list[int] | None:
    """Rewrite ``block`` to ``C[S, I, J] += A[S, I, K] * B[S, J, K]`` (an operand that is not
    ``k_inner`` as ``[S, K, I]``); its static extents [S, I, J, K]."""
    from tvm.s_tir.dlight.gpu.matmul import get_index_map

    read_a = sch.reindex(block, ("read", 0))
    read_b = sch.reindex(block, ("read", 1))
    write_c = sch.reindex(block, ("write", 0))
    maps = get_index_map(sch.get(block))
    if maps is None:
        return None
    block_map, a_map, b_map, c_map = maps
    sch.transform_layout(read_a, ("write", 0), a_map if a.k_inner else _k_outer(a_map))
    sch.transform_layout(read_b, ("write", 0), b_map if b.k_inner else _k_outer(b_map))
    sch.transform_layout(write_c, ("read", 0), c_map)
    sch.transform_block_layout(block, block_map)
    extents = [sch.get(loop).extent for loop in sch.get_loops(block)]
    if not all(isinstance(e, tirx.IntImm) for e in extents):
        return None
    return [int(e) for e in extents]


def widen_accumulator(sch: s_tir.Schedule, block: SBlockRV) -> None:
    """``C += A * B`` with C a (reindexed, so intermediate) narrow buffer -> ``C32 += f32(A) * f32(B)``;
    the copy out of the intermediate rounds once."""
    sch.unsafe_set_dtype(block, 0, "float32")  # leaves C = f32(narrow(C) + A * B): the sum still rounds
    stmt = sch.get(block)
    store = stmt.body
    total = store.value.value if isinstance(store.value, tirx.Cast) else None
    if not isinstance(store, tirx.BufferStore) or not isinstance(total, tirx.Add) or not isinstance(total.b, tirx.Mul):
        raise ValueError("the reduction is not a sum of products")
    acc = tirx.BufferLoad(store.buffer, store.indices)
    product = tirx.Cast("float32", total.b.a) * tirx.Cast("float32", total.b.b)
    body = tirx.BufferStore(store.buffer, acc + product, store.indices)
    init = tirx.BufferStore(store.buffer, tirx.FloatImm("float32", 0.0), store.indices)
    widened = s_tir.SBlock(stmt.iter_vars, stmt.reads, stmt.writes, stmt.name_hint, body, init,
                           stmt.alloc_buffers, stmt.match_buffers, stmt.annotations)
    sch.state.replace(sch.get_sref(block), widened, {stmt: widened})


def _k_outer(index_map: tirx.IndexMap) -> tirx.IndexMap:
    s, rows, k = index_map.final_indices
    return tirx.IndexMap(index_map.initial_indices, [s, k, rows], None)


@dataclass(frozen=True)
class Plan:
    """What the rule does with one kernel: the GEMM's dtypes (accumulator after widening), its
    shape ``batch x (m x k) @ (k x n)`` and the tiles."""

    in_dtype: str
    acc_dtype: str
    batch: int
    m: int
    n: int
    k: int
    tiles: Tiles
    along_m: bool = False  # the output is contiguous along M (an NCHW convolution's pixels), no split
    stages: int = 1  # ``pipeline_stages``: 2 when the operand copies run a K step ahead

    def __str__(self) -> str:
        t = self.tiles
        return (f"{self.in_dtype}->{self.acc_dtype} {self.batch}x{self.m}x{self.n}x{self.k}: block "
                f"{t.block_m}x{t.block_n}x{t.block_k}, warps {t.warps_m}x{t.warps_n}, split-k {t.split_k}"
                + (", stores along M" if self.along_m else "") + (", pipelined" if self.stages > 1 else ""))


def plan_gemm(func: tirx.PrimFunc, split_k: bool = False, max_warps: int = 16,
              tiles_override: Tiles | None = None) -> Plan | None:
    """The plan for ``func`` (None when the rule would not take it); schedules nothing."""
    sch = s_tir.Schedule(func)
    gemm = find_gemm(sch)
    return None if gemm is None else _prepare(sch, gemm, split_k, max_warps, tiles_override)[0]


def _prepare(sch: s_tir.Schedule, gemm: Gemm, split_k: bool, max_warps: int = 16,
             tiles_override: Tiles | None = None) -> tuple[Plan | None, Operand, Operand]:
    """Normalize ``gemm``'s block in ``sch`` (widening a bf16 accumulator) and choose its tiles
    (``split_k`` False: never a split reduction)."""
    stmt = sch.get(gemm.block)
    along_m = output_runs_along_a(stmt)
    a, b = analyze_operand(stmt, 0), analyze_operand(stmt, 1)
    shape = normalize(sch, gemm.block, a, b)
    if shape is None:
        return None, a, b
    acc = gemm.acc_dtype
    if (gemm.in_dtype, acc) in WIDENED:
        widen_accumulator(sch, gemm.block)
        acc = "float32"
    batch, m, n, k = shape
    if min(m, n) < MIN_EDGE:  # a matrix-vector product: dlight's GEMV rules waste no 16-row fragments
        return None, a, b
    if any(_short_runs(op) for op in (a, b)):  # the copy is the work: more threads for it
        max_warps = max(max_warps, GATHER_WARPS)
    # an operand that cannot be copied in 16-byte vectors (a convolution's gathered input) makes the
    # kernel wait on its loads: more blocks resident per SM hide that latency
    waves = GATHER_WAVES if not all(_vectors(op, gemm.in_dtype) for op in (a, b)) else 1
    tiles = tiles_override or choose_tiles(m, n, k, batch, max_warps, waves)
    if not split_k and tiles.split_k > 1:
        tiles = Tiles(tiles.block_m, tiles.block_n, tiles.block_k, tiles.warps_m, tiles.warps_n)
    # the partial sums of a split reduction are laid out [part, M, N]: written along N
    plan = Plan(gemm.in_dtype, acc, batch, m, n, k, tiles, along_m and tiles.split_k == 1)
    return replace(plan, stages=pipeline_stages(plan, a, b)), a, b


def schedule_gemm(sch: s_tir.Schedule, gemm: Gemm, split_k: bool = False, pipeline: int | None = None,
                  max_warps: int = 16, vector_store: bool = False, shared_loads: bool = False,
                  tiles_override: Tiles | None = None) -> bool:
    """Schedule ``gemm`` in place; ``split_k``: cut the reduction as ``choose_tiles`` says (partial sums in
    a global buffer, added by a second kernel that also runs the epilogue), else never; ``pipeline``:
    how many K steps the operand copies (``cp.async``) run ahead, plus one (None: ``pipeline_stages``
    decides; 1: none); ``vector_store``: the write-back in 4-element vectors; ``shared_loads``: fragments
    loaded by ``wmma.load`` naming shared memory (ldmatrix in SASS; ``wmma_intrin.shared_load_source``);
    ``tiles_override``: these tiles instead of ``choose_tiles``' (``tools/gpu_tensorcore_check.py -t...``)."""
    plan, a, b = _prepare(sch, gemm, split_k, max_warps, tiles_override)
    if plan is None:
        return False
    if pipeline is None:
        pipeline = plan.stages
    gemm = Gemm(gemm.block, gemm.in_dtype, plan.acc_dtype)
    m, n, k, tiles = plan.m, plan.n, plan.k, plan.tiles
    logger.info("tensor cores: %s", plan)
    names = register_wmma(gemm.in_dtype, gemm.acc_dtype, a.k_inner, b.k_inner, shared_loads)
    sch.pad_einsum(gemm.block, [1, tiles.block_m, tiles.block_n, tiles.block_k * tiles.split_k])
    main, partial_sum = gemm.block, None
    if tiles.split_k > 1:
        main, partial_sum = split_reduction(sch, gemm.block, tiles.split_k), gemm.block
    s_loop, i, j, kk = sch.get_loops(main)
    i, i16 = sch.split(i, [None, FRAG])
    j, j16 = sch.split(j, [None, FRAG])
    kk, k16 = sch.split(kk, [None, FRAG])
    sch.reorder(i, j, kk, i16, j16, k16)
    outer = sch.blockize(i16)
    ib, iw, i_f = sch.split(i, [None, tiles.warps_m, tiles.frags_m])
    jb, jw, j_f = sch.split(j, [None, tiles.warps_n, tiles.frags_n])
    ko, ki = sch.split(kk, [None, tiles.block_k // FRAG])
    sch.reorder(ib, jb, iw, jw, ko, ki, i_f, j_f)
    sch.bind(sch.fuse(ib, jb), "blockIdx.x")
    sch.bind(s_loop, "blockIdx.y")
    warp = sch.fuse(iw, jw)
    sch.bind(warp, "threadIdx.y")

    a_sh = _stage_operand(sch, outer, 0, ko, tiles, _inner_extent(a, m, k), a)
    b_sh = _stage_operand(sch, outer, 1, ko, tiles, _inner_extent(b, n, k), b)
    a_fr = _fragments(sch, outer, 0, "wmma.matrix_a", ki)
    b_fr = _fragments(sch, outer, 1, "wmma.matrix_b", ki)
    c_sh = sch.cache_write(outer, 0, "shared.dyn")
    c_fr = sch.cache_write(outer, 0, "wmma.accumulator")
    sch.reverse_compute_at(c_fr, warp)
    sch.reverse_compute_at(c_sh, warp)
    _tile16(sch, c_fr)
    init = sch.decompose_reduction(outer, ko)
    if pipeline > 1:  # ko's body: the A copy, the B copy, the fragment loads and products (ki)
        pipeline_k_steps(sch, ko, pipeline)

    kept = [main, outer, init, a_sh, b_sh, a_fr, b_fr, c_fr, c_sh] + ([partial_sum] if partial_sum else [])
    inline_rest(sch, {sch.get(x).name_hint for x in kept})
    _write_back(sch, c_sh, plan.along_m, 4 if vector_store else 1)
    if partial_sum is not None:
        schedule_partial_sum(sch, partial_sum)

    sch.tensorize(sch.get_loops(a_fr)[-2], names["load_a"])
    sch.tensorize(sch.get_loops(b_fr)[-2], names["load_b"])
    sch.tensorize(sch.get_loops(sch.get_child_blocks(init)[0])[-2], names["fill"])
    store = sch.blockize(sch.get_loops(c_fr)[-2])
    # here: tensorize drops c_fr's annotations. Read down its columns (``along_m``), a row stride of 4 words
    # modulo 32 puts a warp's 32 reads in 8 banks instead of 4 (WMMA stores float rows 16-byte aligned)
    pad = 4 if plan.along_m and gemm.acc_dtype == "float32" else PAD
    sch.storage_align(store, 0, axis=-2, factor=32, offset=pad)
    sch.tensorize(store, names["store"])
    sch.tensorize(sch.get_loops(main)[-3], names["mma"])
    return True


def pipeline_stages(plan: Plan, a: Operand, b: Operand) -> int:
    """2 (the copies one K step ahead, as ``cp.async``) when both operands load in 16-byte vectors and each
    block runs at least ``PIPELINE_MIN_STEPS`` K steps, or at least ``PIPELINE_SHORT_STEPS`` in a grid of at
    most ``PIPELINE_SHORT_WAVES`` blocks per SM; else 1. On the H200 (2026-12-03,
    ``tools/gpu_tensorcore_check.py``) that took the 1568x512x4608 GEMM (72 steps) from 103 to 70 us in bf16
    and 67 to 48 in fp16; at 9 steps in a grid of many waves (100352x64x576) it was 4% faster in bf16 and 10%
    slower in fp16, where other blocks hide a block's load latency. With a block or two per SM nothing hides
    it: pipelining the short GEMMs of such grids (MiniLM's QKV, FFN up and attention output at 6 steps, GPT's
    at 4) took, at batch 32 in one call (fifth session), MiniLM fp16 0.386 -> 0.366 ms, bf16 0.403 -> 0.383,
    GPT fp16 0.217 -> 0.213, bf16 0.226 -> 0.215, MobileNetV2 fp16 0.596 -> 0.544, bf16 0.864 -> 0.801.
    A gathered operand (an NCHW convolution's input) cannot be copied asynchronously."""
    tiles = plan.tiles
    steps = round_up(plan.k, tiles.block_k * tiles.split_k) // (tiles.block_k * tiles.split_k)
    vectors = all(_vectors(op, plan.in_dtype) for op in (a, b))
    blocks = plan.batch * ceil_div(plan.m, tiles.block_m) * ceil_div(plan.n, tiles.block_n) * tiles.split_k
    short = steps >= PIPELINE_SHORT_STEPS and blocks <= PIPELINE_SHORT_WAVES * SM_COUNT
    return 2 if vectors and (steps >= PIPELINE_MIN_STEPS or short) else 1


def _vectors(op: Operand, dtype: str) -> bool:
    """Whether ``op``'s tile copies in 16-byte vectors."""
    return op.lanes * tirx_dtype_bytes(dtype) >= 16


def pipeline_k_steps(sch: s_tir.Schedule, ko: LoopRV, stages: int, async_copy: bool = True) -> None:
    """``ko``'s body (the A copy, the B copy, then the products) as a software pipeline of ``stages``
    steps: the copies run ``stages - 1`` K steps ahead of the products, each shared tile held ``stages``
    times; with ``async_copy`` as ``cp.async`` (the build's ``tirx.use_async_copy``; TVM 0.27 fails on a
    copy that transposes, so such a pipeline copies through registers)."""
    sch.annotate(ko, "software_pipeline_stage", [0, 0, stages - 1])
    sch.annotate(ko, "software_pipeline_order", [0, 1, 2])
    if async_copy:
        sch.annotate(ko, "software_pipeline_async_stages", [0])


def split_reduction(sch: s_tir.Schedule, block: SBlockRV, parts: int) -> SBlockRV:
    """``C[s, i, j] += A * B`` as ``P[p, s, i, j] += A * B`` over each part ``p`` of K (returned, its
    loops ``[p * s, i, j, k]``) and ``block`` left summing P over ``p``."""
    *_, k = sch.get_loops(block)
    part, _ = sch.split(k, [parts, None])
    partials = sch.rfactor(part, factor_axis=0)
    s_loop, i, j, p, kk = sch.get_loops(partials)
    sch.reorder(p, s_loop, i, j, kk)
    sch.fuse(p, s_loop)
    return partials


def schedule_partial_sum(sch: s_tir.Schedule, block: SBlockRV) -> None:
    """The sum over the K parts, one output element per thread (the parts a serial loop), with the
    epilogue (left by ``inline_rest`` as one block after it) computed right there.

    The threads run over the epilogue's (the model's) output and the sum is computed at each
    element: placing the epilogue under the sum's loops instead (``reverse_compute_at``) makes TVM
    0.27 guard a conv's un-reindexing (``[y * 7 + x, c]`` back to ``[c, y, x]``) with a wrong
    predicate, which skipped most outputs."""
    consumers = sch.get_consumers(block)
    anchor = consumers[0] if len(consumers) == 1 else block
    loops = sch.get_loops(anchor)
    bx, tx = sch.split(sch.fuse(*(loops if anchor != block else loops[:-1])), [None, 128])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    if anchor != block:
        sch.compute_at(block, tx)
    else:
        for consumer in consumers:
            sch.reverse_compute_at(consumer, tx)
    sch.set_scope(block, 0, "local")


def _inner_extent(op: Operand, rows: int, k: int) -> int:
    return k if op.k_inner else rows


def _vector(elements: int, threads: int, dtype_bytes: int) -> int:
    """The widest vector (at most 16 bytes) that splits ``elements`` evenly over ``threads``."""
    for lanes in (16 // dtype_bytes, 8 // dtype_bytes, 4 // dtype_bytes, 1):
        if lanes >= 1 and elements % (threads * lanes) == 0:
            return lanes
    return 1


def _stage_operand(sch: s_tir.Schedule, outer: SBlockRV, index: int, ko: LoopRV, tiles: Tiles,
                   inner: int, op: Operand) -> SBlockRV:
    """Operand ``index``'s tile copied to shared memory by all threads per K step, in vectors of the
    widest width that divides the tile, the operand's inner extent ``inner`` and its contiguous run
    (``op.lanes``); an operand of short runs along K (``_short_runs``) lane by lane along its rows."""
    cached = sch.cache_read(outer, index, "shared.dyn")
    sch.compute_at(cached, ko)
    rows, cols = sch.get_loops(cached)[-2:]
    width = int(sch.get(cols).extent)
    elements = int(sch.get(rows).extent) * width
    dtype_bytes = tirx_dtype_bytes(sch.get(cached).writes[0].source.dtype)
    lanes = math.gcd(_vector(elements, tiles.threads, dtype_bytes), width, inner, op.lanes)
    if _short_runs(op) and lanes == 1:
        sch.reorder(cols, rows)  # runs of 2-7 along K (an NHWC stem's channels): the lanes go along the pixels
        rows, cols = cols, rows
    fused = sch.fuse(rows, cols)
    _, ty, tx, vec = sch.split(fused, [None, tiles.warps_m * tiles.warps_n, WARP, lanes])
    sch.bind(ty, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")
    sch.vectorize(vec)
    sch.storage_align(cached, 0, axis=-2, factor=32, offset=PAD)
    return cached


def _short_runs(op: Operand) -> bool:
    return op.k_inner and 1 < op.lanes < GATHER_RUN


def tirx_dtype_bytes(dtype: str) -> int:
    return {"float16": 2, "bfloat16": 2, "float32": 4}.get(str(dtype), 4)


def _fragments(sch: s_tir.Schedule, outer: SBlockRV, index: int, scope: str, ki: LoopRV) -> SBlockRV:
    frag = sch.cache_read(outer, index, scope)
    sch.compute_at(frag, ki)
    _tile16(sch, frag)
    return frag


def _tile16(sch: s_tir.Schedule, block: SBlockRV) -> None:
    """The block's last two loops as (rows / 16, cols / 16, 16, 16), outer pair unrolled."""
    r, c = sch.get_loops(block)[-2:]
    r0, r1 = sch.split(r, [None, FRAG])
    c0, c1 = sch.split(c, [None, FRAG])
    sch.reorder(r0, c0, r1, c1)
    sch.unroll(r0)
    sch.unroll(c0)


def _write_back(sch: s_tir.Schedule, c_sh: SBlockRV, along_m: bool, lanes: int = 1) -> None:
    """Each warp's tile from shared memory to the output (epilogue inlined), 32 lanes wide, ``lanes``
    elements a lane where the tile divides: along the tile's columns (N), or its rows when the output
    is contiguous along M (an NCHW convolution: along N each lane would store to another channel plane)."""
    rows, cols = sch.get_loops(c_sh)[-2:]
    if along_m:
        sch.reorder(cols, rows)
    fused = sch.fuse(*((cols, rows) if along_m else (rows, cols)))
    if lanes > 1 and int(sch.get(fused).extent) % (WARP * lanes) == 0:
        _, tx, vec = sch.split(fused, [None, WARP, lanes])
        sch.vectorize(vec)
    else:
        _, tx = sch.split(fused, [None, WARP])
    sch.bind(tx, "threadIdx.x")


def inline_rest(sch: s_tir.Schedule, keep: set[str]) -> None:
    """Inline every other block: operand producers into the shared loads, the epilogue into the write-back."""
    progress = True
    while progress:
        progress = False
        for block in sch.get_child_blocks(get_root_block(sch)):
            if sch.get(block).name_hint in keep:
                continue
            for inline in (sch.compute_inline, sch.reverse_compute_inline):
                try:
                    inline(block)
                except s_tir.ScheduleError:
                    continue
                progress = True
                break
