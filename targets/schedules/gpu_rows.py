"""Row-wise kernels on NVIDIA GPUs: one warp per row, all rows in one launch.

Softmax, log-softmax, layer norm, RMS norm and the other "reduce a row, then map it" kernels that
``LegalizeOps`` + ``FuseTIR`` produce have this shape: reduction blocks over the last axis (``S..SR``, the
same rows and the same row length ``L`` each), then one element-wise block over the rows and that axis
(``S..SS``) that reads the reductions at its own row. dlight's ``GeneralReduction`` gives each row a block
of 256 threads and reduces through shared memory; with rows of 128 most of those threads idle.

Here a warp owns a row and a thread block holds ``ROWS_PER_BLOCK`` rows (fewer where the row index split
that way leaves TVM block bindings it cannot prove affine, e.g. [8, 12, 197] rows; one at worst): lane ``t``
of 32 handles the elements ``(c * 32 + t) * V + j`` (``V`` = a 16-byte vector of the input when ``L``
allows), each reduction ends in warp shuffles (TVM's cross-thread allreduce over the 32 lanes), and an input
that several blocks read along the row is loaded once into registers (``c`` unrolled, at most
``REGISTER_ROW`` elements).

Anything else -- a row length not known at compile time, a spatial block left between reductions, a
reduction read at another row, fewer rows than one block -- is declined (``None``) for dlight's rules.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tvm import s_tir, sym, tirx
from tvm.s_tir.dlight.analysis import SBlockInfo, normalize_prim_func
from tvm.s_tir.dlight.base import ScheduleRule, try_inline_contiguous_spatial
from tvm.s_tir.schedule import LoopRV, SBlockRV
from tvm.target import Target

logger = logging.getLogger(__name__)

WARP = 32
ROWS_PER_BLOCK = 4  # warps (rows) per thread block: 128 threads; 2, then 1 when 4 does not schedule
REGISTER_ROW = 2048  # longest row cached in registers (64 fp32 values per lane)
# Shorter rows waste most lanes. Longer rows than the register cache re-read the row from global memory
# once per reduction: on the H200 (2026-12-02, tools/gpu_rows_check.py) softmax 64x4096 took 11.2 us
# against dlight's 4.8 and RMS norm 128x4096 6.8 against 4.0, so those stay with dlight.
MIN_ROW, MAX_ROW = 16, REGISTER_ROW


@dataclass(frozen=True)
class RowPlan:
    """What the schedule needs: the row blocks, the final map block, row rank and length, vector width."""

    reductions: list[SBlockRV]
    final: SBlockRV
    rank: int  # leading spatial axes (fused into the row index)
    length: int  # L, the reduced / mapped last axis
    vector: int  # V, elements per lane per step
    cached: list[int]  # read-buffer indices of the first reduction held in registers


class GpuRows(ScheduleRule):
    """effarch's rule for row-wise kernels (see the module docstring); declines anything else."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "cuda":
            return None
        for warps in (ROWS_PER_BLOCK, 2, 1):
            sch = s_tir.Schedule(func)
            plan = match_rows(sch)
            if isinstance(plan, str):
                logger.debug("gpu-rows declines: %s", plan)
                return None
            try:
                schedule_rows(sch, plan, warps)
            except s_tir.ScheduleError as exc:  # bindings of the split row index not provably affine
                logger.debug("gpu-rows: %d rows per block did not schedule (%s)", warps, str(exc).splitlines()[0])
                continue
            return sch
        return None


def _static(expr: object) -> int | None:
    if isinstance(expr, int):
        return expr
    return int(expr.value) if isinstance(expr, tirx.IntImm) else None


def _shapes_agree(infos: list[SBlockInfo], rank: int) -> str | None:
    """Why the blocks' leading axes or row lengths differ, or None when they agree."""
    analyzer = sym.Analyzer()
    first = infos[0].dom()
    for info in infos[1:]:
        pairs = zip(first[: rank + 1], info.dom()[: rank + 1], strict=True)
        if not all(analyzer.can_prove_equal(a, b) for a, b in pairs):
            return "blocks disagree on the rows or the row length"
    return None


def _at_row(indices: list[tirx.Expr], axes: list[tirx.Var], row: list[tirx.Var], col: int) -> list[tirx.Expr]:
    """``indices`` (over the block axes ``axes``) with the row axes renamed to ``row`` and the last axis ``col``."""
    index_map = tirx.IndexMap(axes, indices, None)
    return list(index_map.map_indices([*row, tirx.const(col, axes[-1].ty)]))


def _reads_own_row(sch: s_tir.Schedule, infos: list[SBlockInfo], rank: int) -> str | None:
    """Why a block reads a reduction's result at another row than its own, or None.

    A reduced value must be read at the very indices its reduction wrote for the same row coordinates (the
    consumer's first ``rank`` axes renamed to the producer's, whatever the last axis): that is what lets the
    value live in the warp that computed it."""
    analyzer = sym.Analyzer()
    written = {}
    for info in infos[:-1]:
        block = sch.get(info.block_rv)
        if len(block.writes) != 1 or len(block.iter_vars) != rank + 1:
            return "a reduction writes more than one buffer"
        written[block.writes[0].source] = ([r.min for r in block.writes[0].region],
                                           [iv.var for iv in block.iter_vars])
    for info in infos[1:]:
        block = sch.get(info.block_rv)
        axes = [iv.var for iv in block.iter_vars]
        for region in block.reads:
            if region.source not in written:
                continue
            want, producer_axes = written[region.source]
            if any(_static(r.extent) != 1 for r in region.region):
                return f"{region.source.name} is read over a range"
            mins = [r.min for r in region.region]
            for col in (0, 1):
                got = _at_row(mins, axes, producer_axes[:rank], col)
                if len(got) != len(want) or not all(
                        analyzer.can_prove_equal(a, b) for a, b in zip(got, want, strict=True)):
                    return f"{region.source.name} is read at another row"
    return None


def _row_inputs(sch: s_tir.Schedule, infos: list[SBlockInfo], rank: int) -> list[int]:
    """Read indices of the first reduction whose buffer is read along the whole row by it and by a later
    block: those are worth loading once into registers."""
    first = sch.get(infos[0].block_rv)
    axes = [iv.var for iv in first.iter_vars]
    later = [r.source for info in infos[1:] for r in sch.get(info.block_rv).reads]
    chosen = []
    analyzer = sym.Analyzer()
    for index, region in enumerate(first.reads):
        *lead, last = region.region
        row = [_at_row([r.min for r in lead], axes, axes[:rank], col) for col in (0, 1)]
        along_row = last.min.same_as(axes[-1]) and all(_static(r.extent) == 1 for r in region.region) and all(
            analyzer.can_prove_equal(a, b) for a, b in zip(*row, strict=True))
        if along_row and region.source in later and region.source.scope() == "global":
            chosen.append(index)
    return chosen


def _vector(length: int, dtype_bytes: int) -> int:
    """Elements per lane per step: a 16-byte load when the row divides into them and fills the warp."""
    vector = max(1, 16 // dtype_bytes)
    while vector > 1 and (length % vector or length // vector < WARP):
        vector //= 2
    return vector


def match_rows(sch: s_tir.Schedule) -> RowPlan | str:
    """The plan for a row-wise kernel, or the reason this is not one."""
    infos = try_inline_contiguous_spatial(sch, normalize_prim_func(sch))
    if not infos or len(infos) < 2:
        return "not a reduction followed by a map"
    *reductions, final = infos
    rank = len(final.dom_kind()) - 1
    if rank < 1 or final.dom_kind() != "S" * (rank + 1) or not final.is_injective():
        return f"last block is {final.dom_kind()}, not a map over rows and the row"
    if any(info.dom_kind() != "S" * rank + "R" for info in reductions):
        return "a block is not a reduction over the last axis of the rows"
    length = _static(final.dom()[-1])
    if length is None or not MIN_ROW <= length <= MAX_ROW:
        return f"row length {final.dom()[-1]} is not a constant in [{MIN_ROW}, {MAX_ROW}]"
    why = _shapes_agree(infos, rank) or _reads_own_row(sch, infos, rank)
    if why:
        return why
    rows = 1
    for extent in final.dom()[:rank]:
        rows = rows * extent
    if _static(rows) is not None and _static(rows) < ROWS_PER_BLOCK:  # type: ignore[operator]
        return "fewer rows than one thread block"  # a single row or two: nothing to spread over the GPU
    cached = _row_inputs(sch, infos, rank) if length <= REGISTER_ROW else []
    first_reads = sch.get(reductions[0].block_rv).reads
    # The vector covers the loads and the arithmetic on them: an fp16 row reduced in fp32 (a cast read
    # inside the kernel) takes 4-wide vectors, since TVM's CUDA codegen has no 8-wide float type.
    widths = [first_reads[i].source.dtype.bits // 8 for i in cached]
    widths += [sch.get(info.block_rv).writes[0].source.dtype.bits // 8 for info in reductions]
    dtype_bytes = max(widths or [4])
    return RowPlan([info.block_rv for info in reductions], final.block_rv, rank, length,
                   _vector(length, dtype_bytes), cached)


def _lanes(sch: s_tir.Schedule, loop: LoopRV, plan: RowPlan, *, unroll: bool) -> LoopRV:
    """``loop`` over the row as (lane: threadIdx.x, step, vector); the vector loop returned."""
    steps, vec = sch.split(loop, [None, plan.vector])
    step, lane = sch.split(steps, [None, WARP])
    sch.reorder(lane, step, vec)
    sch.bind(lane, "threadIdx.x")
    if unroll:
        sch.unroll(step)
    return vec


def schedule_rows(sch: s_tir.Schedule, plan: RowPlan, warps: int = ROWS_PER_BLOCK) -> None:
    """Warp per row: rows fused and split over (blockIdx.x, threadIdx.y), each block's row over lanes."""
    loops = sch.get_loops(plan.final)
    row = sch.fuse(*loops[: plan.rank])
    block_row, warp = sch.split(row, [None, warps])
    sch.bind(block_row, "blockIdx.x")
    sch.bind(warp, "threadIdx.y")
    cached = bool(plan.cached)
    sch.vectorize(_lanes(sch, loops[plan.rank], plan, unroll=cached))
    for block in reversed(plan.reductions):
        sch.compute_at(block, warp, preserve_unit_loops=True)
        vec = _lanes(sch, sch.get_loops(block)[-1], plan, unroll=cached)
        if cached:
            sch.unroll(vec)  # constant register indices
        sch.set_scope(block, 0, "local")
    if cached:
        consumers = [plan.final, *plan.reductions]
        for index in plan.cached:
            _register_row(sch, plan, index, consumers)


def _register_row(sch: s_tir.Schedule, plan: RowPlan, index: int, consumers: list[SBlockRV]) -> None:
    """The first reduction's read ``index`` loaded once per row into the lanes' registers, vectorized."""
    users = [b for b in consumers if any(r.source.same_as(sch.get(plan.reductions[0]).reads[index].source)
                                         for r in sch.get(b).reads)]
    cache = sch.cache_read(plan.reductions[0], index, "local", consumer_blocks=users)
    warp = sch.get_loops(plan.final)[1]
    sch.compute_at(cache, warp, preserve_unit_loops=True)
    vec = _lanes(sch, sch.get_loops(cache)[-1], plan, unroll=True)
    sch.vectorize(vec)
