"""Weight-only quantized contractions: a float product whose weight is read in 8 or 4 bits.

The lowering (``lowering.weight_only``) gives the kernel two blocks: ``dequantize``, which expands a
packed integer panel ``[N/NR, K, NR]`` (int8, or two int4 per byte) times its scales into floats,
and the float reduction that reads that panel (marked ``WEIGHT_ONLY_ATTR``). Two schedules, by the
number of rows ``M`` the weight is reused for:

- many rows (a sequence of tokens): each thread expands one slice of ``NR'`` columns of the panel
  into a small buffer (``K x NR'`` floats, in L1/L2) and runs the float register tile of
  ``schedules.contraction`` over every row against it; the expansion is paid once per slice, not
  once per row block, so the kernel runs at the float kernel's speed on a quarter (or an eighth)
  of its weight bytes;
- few rows (batch-1 decoding: a matrix-vector product, memory-bound): the expansion is inlined
  into the tile, the weight goes from memory to registers in its small form.

Either way the dequantized weight never exists as a tensor of the model.
"""

from __future__ import annotations

from tvm import s_tir
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.analysis.common_analysis import SBlockInfo
from tvm.s_tir.schedule import SBlockRV

from targets.schedules.common import dtype_bits, extent, iterations, parallel_outer, schedule_injective
from targets.schedules.contraction import (
    Tile,
    choose_tile,
    find_main,
    inline_epilogue,
    inline_side_inputs,
    tile_contraction,
)
from targets.schedules.machine import Machine

WEIGHT_ONLY_ATTR = "effarch.weight_only"  # set by lowering.weight_only on the reduction: the weight's bits
DEQUANTIZE_BLOCK = "dequantize"  # the block that expands the packed weight

# With at least this many rows per weight column the expansion is staged per slice of columns;
# below it each row block would expand its weights itself, and inlining is cheaper.
STAGE_MIN_ROWS = 8


def schedule_weight_only(sch: s_tir.Schedule, m: Machine) -> bool:
    """A function whose one reduction reads a weight expanded by a ``dequantize`` block."""
    infos = normalize_prim_func(sch)
    main_i = find_main(infos) if infos is not None else None
    if infos is None or main_i is None:
        return False
    info = infos[main_i]
    main = info.block_rv
    if WEIGHT_ONLY_ATTR not in sch.get(main).annotations:
        return False
    dequant = next((b.block_rv for b in infos[:main_i] if sch.get(b.block_rv).name_hint == DEQUANTIZE_BLOCK), None)
    if dequant is None:
        return False
    tile = choose_tile(sch, info, m)
    if tile is None:
        return False
    others = [b.block_rv for b in infos[:main_i] if not b.block_rv.same_as(dequant)]
    producers = inline_side_inputs(sch, main, others)
    writeback = sch.cache_write(main, 0, "local")
    leftover = inline_epilogue(sch, writeback, [b.block_rv for b in infos[main_i + 1:]])
    if _rows(info, tile) >= STAGE_MIN_ROWS:
        _staged(sch, info, main, writeback, dequant, tile, m)
    else:
        sch.compute_inline(dequant)
        tile_contraction(sch, info, main, writeback, tile, m)
    for block in producers + leftover:
        schedule_injective(sch, block, m, dtype_bits(sch, block))
    return True


def _rows(info: SBlockInfo, t: Tile) -> int:
    """Output rows that read each weight column: every spatial extent but the column axis's."""
    rows = 1
    for i, (kind, it) in enumerate(zip(info.dom_kind(), info.iters, strict=True)):
        if kind == "S" and i != t.v:
            rows *= int(it.dom)
    return rows


def _staged(sch: s_tir.Schedule, info: SBlockInfo, main: SBlockRV, writeback: SBlockRV, dequant: SBlockRV,
            t: Tile, m: Machine) -> None:
    """[column slices (parallel)] [expand the slice] [rows / MR] [K] [MR x nv x lanes tile]."""
    loops = sch.get_loops(main)
    kinds = info.dom_kind()
    v_o, v_u, v_l = sch.split(loops[t.v], factors=[None, t.nv, t.lanes])
    rows_outer, r_i = [], None
    for i, loop in enumerate(loops):
        if kinds[i] == "S" and i != t.v:
            if i == t.r:
                r_o, r_i = sch.split(loop, factors=[None, t.mr])
                rows_outer.append(r_o)
            else:
                rows_outer.append(loop)
    reductions = [loop for i, loop in enumerate(loops) if kinds[i] == "R"]
    inner = ([r_i] if r_i is not None else []) + [v_u, v_l]
    sch.reorder(v_o, *rows_outer, *reductions, *inner)
    work = iterations(info)
    parallel_outer(sch, [v_o], m, work)
    sch.compute_at(dequant, v_o, preserve_unit_loops=True)
    _vectorize_dequant(sch, dequant, t.lanes)
    row_loop = sch.fuse(*rows_outer) if len(rows_outer) > 1 else (rows_outer[0] if rows_outer else v_o)
    if r_i is not None:
        sch.unroll(r_i)
    sch.unroll(v_u)
    if t.lanes > 1:
        sch.vectorize(v_l)
    sch.reverse_compute_at(writeback, row_loop, preserve_unit_loops=True)
    _vectorize_last(sch, writeback, t.lanes)
    if reductions:
        _vectorize_last(sch, sch.decompose_reduction(main, reductions[0]), t.lanes)


def _vectorize_dequant(sch: s_tir.Schedule, block: SBlockRV, lanes: int) -> None:
    """The slice's expansion: K rows of NR' columns, vectors of ``lanes`` columns, unrolled."""
    col = sch.get_loops(block)[-1]
    n = extent(sch, col) or 0
    if lanes > 1 and n % lanes == 0:
        outer, col = sch.split(col, factors=[None, lanes])
        sch.unroll(outer)
        sch.vectorize(col)


def _vectorize_last(sch: s_tir.Schedule, block: SBlockRV, lanes: int) -> None:
    if lanes > 1:
        _, inner = sch.split(sch.get_loops(block)[-1], factors=[None, lanes])
        sch.vectorize(inner)
