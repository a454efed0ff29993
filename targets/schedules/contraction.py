"""Contractions: matmul, batched matmul, dense with packed weights and convolutions in any layout.

One register-tiled schedule serves them all, because after legalization each is one reduction
block ``C[s...] += A[...] * B[...]``. The rule picks two spatial axes of the output:

- the *vector* axis ``v``: the output's innermost dimension, which one operand also reads
  contiguously (matmul: the column ``n``; NHWC conv: the output channel; NCHW conv: the width);
- the *row* axis ``r``: a spatial axis that operand does not read, so one vector load of it is
  reused ``MR`` times (matmul: the row ``m``; NHWC conv: the output width; NCHW: the channel).

The loops become ``[other spatial, v/NR, r/MR] (parallel)  [reductions]  [MR (unrolled), NR
(vector lanes x unroll)]``: an ``MR x NR`` tile of accumulators stays in registers for the
whole reduction, and the epilogue (bias, activation, residual add) is applied while writing the
tile back. Producers (padding, weight reshapes) are materialised and scheduled as injective loops.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import s_tir, tirx
from tvm.ir import Expr as PrimExpr
from tvm.ir import TensorLoad
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.analysis.common_analysis import SBlockInfo
from tvm.s_tir.schedule import SBlockRV

from targets.schedules.common import dtype_bits, iterations, parallel_outer, schedule_injective, vector_lanes, walk
from targets.schedules.machine import Machine

PACK_ATTR = "effarch.packed"  # set by targets.lowering.packed on blocks that read packed weights

_UNROLL_MAX = 4  # vectors per row of the register tile
_FMA_LATENCY = 4  # cycles: a step of the tile takes at least this long


@dataclass(frozen=True)
class Tile:
    v: int  # index (among the block's iters) of the vector axis
    r: int | None  # index of the row axis (None: a single row)
    lanes: int
    nv: int  # vectors per row
    mr: int  # rows
    panels_outer: bool = False  # vector-axis tiles outermost: each weight panel read once


def _var_in(expr: PrimExpr, var: tirx.Var) -> bool:
    return any(isinstance(e, tirx.Var) and e.same_as(var) for e in walk(expr))


def is_mac(block: tirx.stmt.SBlock) -> bool:
    """``C[...] = C[...] + A[...] * B[...]`` (possibly with casts): a contraction, not a sum/max."""
    body = block.body
    if not isinstance(body, tirx.BufferStore) or not isinstance(body.value, tirx.Add):
        return False
    value = body.value
    terms = [value.a, value.b]
    for t in terms:
        while isinstance(t, tirx.Cast):
            t = t.value
        if isinstance(t, tirx.Mul):
            return True
    return False


def find_main(infos: list[SBlockInfo]) -> int | None:
    """The index of the one reduction block, if every other block is injective."""
    reductions = [i for i, b in enumerate(infos) if b.is_reduction()]
    if len(reductions) != 1 or any(not b.is_injective() for i, b in enumerate(infos) if i != reductions[0]):
        return None
    return reductions[0]


def choose_tile(sch: s_tir.Schedule, info: SBlockInfo, m: Machine) -> Tile | None:
    block = sch.get(info.block_rv)
    iters = [it.var for it in block.iter_vars]
    kinds = info.dom_kind()
    if not isinstance(block.body, tirx.BufferStore):
        return None  # several stores (ArgMax keeps a value and an index): no one output to tile
    out_idx = block.body.indices
    if not out_idx:
        return None  # a rank-0 result (a global min or sum): no axis to vectorize along
    last = out_idx[-1]
    v = next((i for i, var in enumerate(iters) if kinds[i] == "S" and last.same_as(var)), None)
    if v is None:
        return None
    ev = int(info.iters[v].dom)
    lanes = vector_lanes(ev, m.lanes(dtype_bits(sch, info.block_rv)))
    # The operands read contiguously along v; the row axis must not index them (that is the reuse).
    out_buf = block.body.buffer
    v_reads = [ld for ld in _loads(block.body.value)
               if not ld.source.same_as(out_buf) and len(ld.indices) and _var_in(ld.indices[-1], iters[v])]
    spatial = [i for i, k in enumerate(kinds) if k == "S" and i != v and int(info.iters[i].dom) > 1]
    rows = [i for i in spatial if not any(_var_in(ix, iters[i]) for ld in v_reads for ix in ld.indices)]
    r = rows[-1] if rows else None
    er = int(info.iters[r].dom) if r is not None else 1
    if not v_reads:
        return None  # nothing is contiguous along v: vectors would be gathers (softmax, layernorm rows)
    packed = int(block.annotations.get(PACK_ATTR, 0))
    nv, mr = _best_tile(ev // lanes, er, m.registers, packed // lanes if packed % lanes == 0 else 0)
    others = [i for i in spatial if i != r]
    shared = not any(_var_in(ix, iters[i]) for i in others for ld in v_reads for ix in ld.indices)
    return Tile(v, r, lanes, nv, mr, shared and _weights_larger(v_reads, _loads(block.body.value), out_buf))


def _bytes(bufs: list[tirx.Buffer]) -> int:
    """The bytes of distinct buffers (static shapes; a symbolic one counts as nothing)."""
    total, seen = 0, list[tirx.Buffer]()
    for buf in bufs:
        if any(buf.same_as(b) for b in seen) or not all(isinstance(d, tirx.IntImm) for d in buf.shape):
            continue
        seen.append(buf)
        n = max(tvm.DataType(str(buf.dtype)).bits // 8, 1)
        for d in buf.shape:
            n *= int(d)
        total += n
    return total


def _weights_larger(v_reads: list[TensorLoad], loads: list[TensorLoad], out: tirx.Buffer) -> bool:
    """Whether the operand read along the vector axis (the weights) outweighs the others (the
    input): then each weight panel is read once, for every output position in turn, instead of
    every panel once per output row (a 7x7x512 3x3 conv streamed its 9.4 MB of weights 7 times)."""
    weights = [ld.source for ld in v_reads]
    rest = [ld.source for ld in loads
            if not ld.source.same_as(out) and not any(ld.source.same_as(w) for w in weights)]
    return _bytes(weights) > _bytes(rest)



def _best_tile(vectors: int, rows: int, registers: int, panel: int = 0) -> tuple[int, int]:
    """(vectors per row, rows) of the register tile with the best estimated throughput.

    The tile must fit the vector registers beside one row of weights and one broadcast input
    (nv * mr + nv + 1 <= registers) and divide the output evenly. With weights packed in panels
    of ``panel`` vectors, a row of the tile lies within one panel or covers whole panels, so that
    every vector load is contiguous. Ties go to more accumulators (more reuse of each load)."""
    best, best_key = (1, 1), (0.0, 0)
    for nv in range(1, _UNROLL_MAX + 1):
        if vectors % nv or (panel and panel % nv and nv % panel):
            continue
        for mr in range(1, rows + 1):
            if rows % mr or nv * mr + nv + 1 > registers:
                continue
            key = (_fmas_per_cycle(nv, mr), nv * mr)
            if key > best_key:
                best, best_key = (nv, mr), key
    return best


def _fmas_per_cycle(nv: int, mr: int) -> float:
    """Vector FMAs per cycle of one reduction step of an nv x mr tile, on a core with two FMA
    and two load ports and a 4-cycle FMA latency (each accumulator is updated once per step):
    a 1 x 14 tile loads 15 values for 14 FMAs, a 2 x 4 tile 6 for 8, a 2 x 1 tile waits."""
    fmas, loads = nv * mr, nv + mr
    return round(fmas / max(fmas / 2, loads / 2, _FMA_LATENCY), 3)


def _loads(expr: PrimExpr) -> list[TensorLoad]:
    return [e for e in walk(expr) if isinstance(e, TensorLoad)]


def schedule_contraction(sch: s_tir.Schedule, m: Machine) -> bool:
    """A function whose one reduction is a multiply-accumulate (matmul, conv, dense), or a
    Winograd convolution (its GEMM with the two transforms around it)."""
    from targets.schedules.winograd import schedule_winograd, stages_of  # it builds on this module

    if stages_of(sch):
        return schedule_winograd(sch, m)
    return _schedule_single_reduction(sch, m, mac=True)


def schedule_window_reduction(sch: s_tir.Schedule, m: Machine) -> bool:
    """A function whose one reduction is not a product (pools, sums over outer axes): the same
    tiling, vectors along the output's innermost axis, the reduction loops outside them."""
    return _schedule_single_reduction(sch, m, mac=False)


def _schedule_single_reduction(sch: s_tir.Schedule, m: Machine, *, mac: bool) -> bool:
    infos = normalize_prim_func(sch)
    if infos is None:
        return False
    main_i = find_main(infos)
    if main_i is None or is_mac(sch.get(infos[main_i].block_rv)) != mac:
        return False
    info = infos[main_i]
    tile = choose_tile(sch, info, m)
    if tile is None:
        return False
    main = info.block_rv
    consumers = [b.block_rv for b in infos[main_i + 1:]]
    producers = inline_side_inputs(sch, main, [b.block_rv for b in infos[:main_i]])
    writeback = sch.cache_write(main, 0, "local")
    leftover = inline_epilogue(sch, writeback, consumers)
    tile_contraction(sch, info, main, writeback, tile, m)
    for block in producers + leftover:
        schedule_injective(sch, block, m, dtype_bits(sch, block))
    return True


def inline_side_inputs(sch: s_tir.Schedule, main: SBlockRV, producers: list[SBlockRV]) -> list[SBlockRV]:
    """Inline producers the contraction does not read (a zero point's reshape, a bias transpose)
    into the epilogue that reads them; return the rest (operand padding, shifts), which stay
    materialised. A side input left as its own buffer would stop the epilogue's reverse inlining
    into the tile's write-back: TVM allows the inlined block one intermediate input only."""
    read = [r.source for r in sch.get(main).reads]
    kept = []
    for block in producers:
        writes = sch.get(block).writes
        if len(writes) == 1 and not any(writes[0].source.same_as(b) for b in read):
            try:
                sch.compute_inline(block)
                continue
            except s_tir.ScheduleError:
                pass
        kept.append(block)
    return kept


def inline_epilogue(sch: s_tir.Schedule, writeback: SBlockRV, consumers: list[SBlockRV]) -> list[SBlockRV]:
    """Fold bias, activation and residual blocks into the tile's write-back; return the rest.

    The chain is first inlined forwards into its last block (GELU reads its input twice, which
    block-by-block reverse inlining gets wrong), then that block into the write-back."""
    rest = []
    for block in consumers[:-1]:
        try:
            sch.compute_inline(block)
        except s_tir.ScheduleError:
            rest.append(block)
    if consumers:
        try:
            sch.reverse_compute_inline(consumers[-1])
        except s_tir.ScheduleError:
            rest.append(consumers[-1])
    return rest


def tile_contraction(sch: s_tir.Schedule, info: SBlockInfo, main: SBlockRV, writeback: SBlockRV, t: Tile,
               m: Machine) -> None:
    loops = sch.get_loops(main)
    kinds = info.dom_kind()
    v_o, v_u, v_l = sch.split(loops[t.v], factors=[None, t.nv, t.lanes])
    outer, inner = [], []
    r_i = None
    if t.r is not None:
        r_o, r_i = sch.split(loops[t.r], factors=[None, t.mr])
    for i, loop in enumerate(loops):
        if kinds[i] == "S" and i not in (t.v, t.r):
            outer.append(loop)
    outer = ([v_o] + outer if t.panels_outer else outer + [v_o]) + ([r_o] if t.r is not None else [])
    reductions = [loop for i, loop in enumerate(loops) if kinds[i] == "R"]
    inner = ([r_i] if r_i is not None else []) + [v_u, v_l]
    sch.reorder(*outer, *reductions, *inner)
    work = iterations(info)
    fused = parallel_outer(sch, outer, m, work)
    if r_i is not None:
        sch.unroll(r_i)
    sch.unroll(v_u)
    if t.lanes > 1:
        sch.vectorize(v_l)
    sch.reverse_compute_at(writeback, fused, preserve_unit_loops=True)
    _vectorize_writeback(sch, writeback, t)
    if reductions:
        init = sch.decompose_reduction(main, reductions[0])
        _vectorize_writeback(sch, init, t)


def _vectorize_writeback(sch: s_tir.Schedule, block: SBlockRV, t: Tile) -> None:
    """The write-back (and init) loops under the tile: rows unrolled, the row vectorized."""
    loops = sch.get_loops(block)
    inner = loops[-1]
    if t.lanes > 1:
        _, inner = sch.split(inner, factors=[None, t.lanes])
        sch.vectorize(inner)
