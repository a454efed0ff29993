"""Kernels with several reductions in a row: attention (QK^T, softmax's max and sum, AV), or a
layer norm after a matmul.

Where the kernel ends in a contraction whose rows every earlier stage computes row by row
(attention: a block of query rows needs only those rows of the scores and of the softmax), the
whole kernel runs per *row block*: one parallel loop over (batch, head, rows / MR), and inside
it each stage for those MR rows only -- the scores tiled in registers, the softmax's max and sum
as vector partials (``reduction``), exp once into a small buffer, the normalised rows, then
the output tile. Every intermediate is then a few hundred bytes on the stack: no workspace
allocation per call, one thread-pool launch, and the rows stay in L1 from stage to stage.

Otherwise each stage gets the schedule of its own kind, in its own loop nest:

- a contraction stage is register-tiled like a lone matmul (``contraction``);
- any other reduction runs its leading axes across cores, the reduction inside;
- elementwise stages are inlined into their consumers (the scale and mask into softmax), except
  into a contraction, where they would be recomputed for every column of its output, and except
  a transcendental read by several stages (exp is computed once, not once per reader).
"""

from __future__ import annotations

import contextlib
import logging

from tvm import s_tir, tirx
from tvm.ir import Call
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.analysis.common_analysis import SBlockInfo, get_sblock_info
from tvm.s_tir.schedule import LoopRV, SBlockRV

from targets.schedules.common import (
    dtype_bits,
    extent,
    iterations,
    parallel_outer,
    schedule_injective,
    vectorize_inner,
    walk,
)
from targets.schedules.contraction import Tile, _best_tile, choose_tile, is_mac, tile_contraction
from targets.schedules.machine import Machine
from targets.schedules.reduction import rfactor_row, vector_partials, vectorize_partials

logger = logging.getLogger(__name__)

# The register tile's accumulators: a "local" buffer is taken from TVM's workspace pool on every
# call of the row-block loop (a call through a pointer, and memory LLVM cannot keep in registers);
# a small "global" one inside the loop is a stack array, which LLVM turns into registers.
_TILE_SCOPE = "global"


def schedule_stages(sch: s_tir.Schedule, m: Machine) -> s_tir.Schedule | bool:
    infos = normalize_prim_func(sch)
    if infos is None or sum(b.is_reduction() for b in infos) < 2:
        return False
    for info in infos[:-1]:
        consumers = sch.get_consumers(info.block_rv)
        if info.is_injective() and not any(is_mac(sch.get(c)) for c in consumers) and not (
                len(consumers) > 1 and _calls(sch.get(info.block_rv))):
            with contextlib.suppress(s_tir.ScheduleError):
                sch.compute_inline(info.block_rv)
    fused = sch.copy()
    try:
        if _schedule_row_blocks(fused, m):
            return fused
    except (RuntimeError, ValueError, AssertionError) as exc:  # TVM's errors are RuntimeErrors
        logger.debug("no row-block schedule, stage by stage instead: %s", exc)
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        _schedule_stage(sch, block, m)
    return True


def _calls(block: tirx.stmt.SBlock) -> bool:
    """Whether the block computes a function call (exp, erf): worth a buffer, not a recompute."""
    body = block.body
    return isinstance(body, tirx.BufferStore) and any(isinstance(e, Call) for e in walk(body.value))


def _schedule_row_blocks(sch: s_tir.Schedule, m: Machine) -> bool:
    """The per-row-block schedule of the module docstring; False where the kernel is not of that form."""
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    last = blocks[-1]
    info = get_sblock_info(sch, last)
    tile = choose_tile(sch, info, m) if is_mac(sch.get(last)) else None
    if tile is None or tile.r is None or info.dom_kind()[tile.r + 1:].count("S") != 1:
        return False  # the rows must be the axis just outside the output's vector axis
    partials = [rf for b in blocks[:-1] if get_sblock_info(sch, b).is_reduction() and not is_mac(sch.get(b))
                if (rf := rfactor_row(sch, b, m)) is not None]
    producers = sch.get_child_blocks(sch.get_sblock("root"))[:-1]  # the partials included
    outer = _tile_last(sch, info, tile, m)
    for block in reversed(producers):
        sch.compute_at(block, outer, preserve_unit_loops=True)
    runs = extent(sch, outer) or 0
    if not runs or any(_volume(sch, b, 1) * runs != _volume(sch, b, 0) for b in producers):
        return False  # a stage would be recomputed for every row block
    for block in producers:
        _schedule_in_row_block(sch, block, m, partials)
    return True


def _volume(sch: s_tir.Schedule, block: SBlockRV, skip: int) -> int:
    """Iterations of ``block``'s loops after the first ``skip`` (0: its whole domain)."""
    if not skip:
        n = 1
        for it in get_sblock_info(sch, block).iters:
            n *= int(it.dom)
        return n
    n = 1
    for loop in sch.get_loops(block)[skip:]:
        n *= extent(sch, loop) or 0
    return n


def _tile_last(sch: s_tir.Schedule, info: SBlockInfo, t: Tile, m: Machine) -> LoopRV:
    """Tile the final contraction with its row blocks outermost (fused with the leading axes,
    across cores) and the column tiles inside them; the loop that holds one row block."""
    block = info.block_rv
    kinds = info.dom_kind()
    loops = sch.get_loops(block)
    writeback = sch.cache_write(block, 0, _TILE_SCOPE)
    assert t.r is not None
    r_o, r_i = sch.split(loops[t.r], factors=[None, t.mr])
    v_o, v_u, v_l = sch.split(loops[t.v], factors=[None, t.nv, t.lanes])
    lead = [lp for i, lp in enumerate(loops) if kinds[i] == "S" and i < t.r]
    reductions = [lp for i, lp in enumerate(loops) if kinds[i] == "R"]
    sch.reorder(*lead, r_o, v_o, *reductions, r_i, v_u, v_l)
    outer = parallel_outer(sch, [*lead, r_o], m, _volume(sch, block, 0))
    assert outer is not None
    _register_tile(sch, block, writeback, (v_o, r_i, v_u, v_l), reductions[0], t.lanes)
    return outer


def _register_tile(sch: s_tir.Schedule, block: SBlockRV, writeback: SBlockRV, loops: tuple[LoopRV, ...],
                   first_reduction: LoopRV, lanes: int) -> None:
    """The register tile's inner loops (``v_o, r_i, v_u, v_l``: rows and vector groups unrolled, lanes
    vectorised), its write-back under ``v_o`` and its initialisation, both vectorised."""
    v_o, r_i, v_u, v_l = loops
    sch.unroll(r_i)
    sch.unroll(v_u)
    sch.vectorize(v_l)
    sch.reverse_compute_at(writeback, v_o, preserve_unit_loops=True)
    vectorize_inner(sch, writeback, lanes)
    init = sch.decompose_reduction(block, first_reduction)
    vectorize_inner(sch, init, lanes)


def _schedule_in_row_block(sch: s_tir.Schedule, block: SBlockRV, m: Machine, partials: list[SBlockRV]) -> None:
    """One stage under the row-block loop: a contraction register-tiled, a vector partial
    reduction vectorised, elementwise rows vectorised; the partials' final reduction (a few
    scalars per row) stays a loop."""
    if any(sch.get(block).same_as(sch.get(p)) for p in partials):
        vector_partials(sch, block, m.lanes(dtype_bits(sch, block)))
        return
    info = get_sblock_info(sch, block)
    if info.is_injective():
        vectorize_inner(sch, block, m.lanes(dtype_bits(sch, block)))
    elif is_mac(sch.get(block)):
        _tile_in_row_block(sch, info, m)


def _tile_in_row_block(sch: s_tir.Schedule, info: SBlockInfo, m: Machine) -> None:
    """A contraction stage (attention's scores) over the rows of one row block: the columns in
    vectors, the block's rows unrolled, accumulators in registers for the whole reduction."""
    block = info.block_rv
    tile = choose_tile(sch, info, m)
    loops = sch.get_loops(block)[1:]  # compute_at made one loop per block axis, in their order
    kinds = info.dom_kind()
    if tile is None or tile.r is None or len(loops) != len(kinds):
        return
    rows = extent(sch, loops[tile.r]) or 1
    ev = extent(sch, loops[tile.v]) or 1
    nv, mr = _best_tile(ev // tile.lanes, rows, m.registers)
    writeback = sch.cache_write(block, 0, _TILE_SCOPE)
    r_o, r_i = sch.split(loops[tile.r], factors=[None, mr])
    v_o, v_u, v_l = sch.split(loops[tile.v], factors=[None, nv, tile.lanes])
    reductions = [lp for i, lp in enumerate(loops) if kinds[i] == "R"]
    sch.reorder(r_o, v_o, *reductions, r_i, v_u, v_l)
    _register_tile(sch, block, writeback, (v_o, r_i, v_u, v_l), reductions[0], tile.lanes)


def _schedule_stage(sch: s_tir.Schedule, block: SBlockRV, m: Machine) -> None:
    info = get_sblock_info(sch, block)
    if not info.is_reduction():
        schedule_injective(sch, block, m, dtype_bits(sch, block))
        return
    tile = choose_tile(sch, info, m) if is_mac(sch.get(block)) else None
    if tile is not None:
        tile_contraction(sch, info, block, sch.cache_write(block, 0, _TILE_SCOPE), tile, m)
    else:
        _schedule_row(sch, info, m)


def _schedule_row(sch: s_tir.Schedule, info: SBlockInfo, m: Machine) -> None:
    """Leading spatial axes on all cores; the reduction inside, in vector partials where it
    splits evenly into them (``reduction.rfactor_row``), else a serial loop."""
    kinds = info.dom_kind()
    leading = len(kinds) - len(kinds.lstrip("S"))
    work = iterations(info)
    rf = rfactor_row(sch, info.block_rv, m)
    parallel_outer(sch, sch.get_loops(info.block_rv)[:leading], m, work)
    if rf is not None:
        loops = sch.get_loops(rf)  # the block's own nest: rows, then the steps along a row, then the partials
        parallel_outer(sch, loops[:leading], m, work)
        vectorize_partials(sch, rf, loops[-2], loops[-1], m.lanes(dtype_bits(sch, rf)))
