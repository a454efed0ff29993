"""Row reductions: softmax, layer normalisation, sums and maxima along the innermost axes.

Several blocks (max, exp-sum, normalise) share the same leading "row" axes and reduce the
trailing ones. The rows run across cores; inside a row every block is computed in turn (so the
row stays in cache), the elementwise blocks vectorised.

A reduction along a row is a chain of dependent adds: one scalar add per element, each waiting
for the last (a 384-wide layer norm spent 30 us on 32 rows). ``vectorize_reduction`` splits it
into ``lanes x ACCUMULATORS`` partial results (``rfactor``): independent vector accumulators over
the row, then one short scalar pass over the partials.

With a single row (softmax over one [1, 1000] vector) there is nothing to split across cores and
each block is scheduled on its own. (TVM's dlight CPU rule takes the 1000 as rows in that case
and recomputes the whole reduction for each of them.)
"""

from __future__ import annotations

from tvm import s_tir
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.analysis.common_analysis import SBlockInfo, get_sblock_info
from tvm.s_tir.schedule import LoopRV, SBlockRV

from targets.schedules.common import dtype_bits, extent, iterations, parallel_outer, schedule_injective, vectorize_inner
from targets.schedules.machine import Machine

# Independent vector accumulators of a row reduction: two hide most of an add's latency (3-4
# cycles) while the final scalar pass over lanes x ACCUMULATORS partials stays short.
ACCUMULATORS = 2


def _leading_rows(info: SBlockInfo) -> list[int]:
    kinds = info.dom_kind()
    n = len(kinds) - len(kinds.lstrip("S"))
    return [int(it.dom) for it in info.iters[:n]]


def schedule_row_reduction(sch: s_tir.Schedule, m: Machine) -> bool:
    infos = normalize_prim_func(sch)
    if infos is None or len(infos) < 2 or not infos[-1].is_injective():
        return False
    reductions = [b for b in infos if b.is_reduction()]
    if not reductions or any(not (b.is_reduction() or b.is_injective()) for b in infos):
        return False
    rows = _leading_rows(reductions[0])
    if any(_leading_rows(b)[: len(rows)] != rows for b in infos) or any(
            "S" in b.dom_kind()[len(rows):] for b in reductions):
        return False  # not one set of rows: a reduction keeps spatial axes after its row axes
    if not rows:
        for b in infos:
            _alone(sch, b, m)
        return True
    last = infos[-1]
    work = iterations(last)
    partials = [rf for b in reductions if (rf := rfactor_row(sch, b.block_rv, m)) is not None]
    loop = parallel_outer(sch, sch.get_loops(last.block_rv)[: len(rows)], m, work)
    for block in reversed(sch.get_child_blocks(sch.get_sblock("root"))[:-1]):
        sch.compute_at(block, loop, preserve_unit_loops=True)
    for b in infos:
        # Only loops inside a row: the row loop itself holds the reductions computed at it.
        if b.is_injective() and len(sch.get_loops(b.block_rv)) > 1:
            vectorize_inner(sch, b.block_rv, m.lanes(dtype_bits(sch, b.block_rv)))
    for rf in partials:
        vector_partials(sch, rf, m.lanes(dtype_bits(sch, rf)))
    return True


def rfactor_row(sch: s_tir.Schedule, block: SBlockRV, m: Machine) -> SBlockRV | None:
    """Split the trailing reduction of ``block`` (a loop nest of its own: rows, then reductions)
    into ``lanes x ACCUMULATORS`` partial results; the block that computes them, or None where the
    reduction is too short or not a multiple of the vector (it stays a scalar loop)."""
    loops = sch.get_loops(block)
    kinds = get_sblock_info(sch, block).dom_kind()
    if len(loops) != len(kinds) or "S" in kinds.lstrip("S"):
        return None  # loops and axes do not pair up, or a spatial axis lies inside the reduction
    reduce = [lp for k, lp in zip(kinds, loops, strict=True) if k == "R"]
    sizes = [extent(sch, lp) for lp in reduce]
    lanes = m.lanes(dtype_bits(sch, block))
    if not reduce or lanes < 2 or any(s is None for s in sizes):
        return None
    n = 1
    for s in sizes:
        n *= s or 1
    width = next((lanes * a for a in (ACCUMULATORS, 1) if n % (lanes * a) == 0 and n >= 2 * lanes * a), 0)
    if width == 0:
        return None
    fused = sch.fuse(*reduce) if len(reduce) > 1 else reduce[0]
    _, partial = sch.split(fused, factors=[None, width])
    try:
        return sch.rfactor(partial, factor_axis=len(sch.get(block).writes[0].source.shape))
    except s_tir.ScheduleError:
        return None  # not a reducer TVM can split (argmax keeps two values): a serial loop, as before


def vector_partials(sch: s_tir.Schedule, rf: SBlockRV, lanes: int) -> None:
    """The partial results' loop (the one spatial loop of ``width`` under the row) innermost,
    in vectors of ``lanes`` with the accumulators unrolled; their zeroing hoisted out."""
    kinds = get_sblock_info(sch, rf).dom_kind()
    loops = sch.get_loops(rf)[1:]  # compute_at made one loop per block axis, in their order
    partial = loops[0]  # rfactor makes the partials' axis the block's first
    steps = loops[kinds.index("R")]
    sch.reorder(steps, partial)
    vectorize_partials(sch, rf, steps, partial, lanes)


def vectorize_partials(sch: s_tir.Schedule, rf: SBlockRV, steps: LoopRV, partial: LoopRV, lanes: int) -> None:
    """``partial`` (inside ``steps``, the loop along the row) in vectors of ``lanes``, the
    accumulators unrolled, their zeroing hoisted out of ``steps``."""
    acc, vec = sch.split(partial, factors=[None, lanes])
    sch.unroll(acc)
    sch.vectorize(vec)
    init = sch.decompose_reduction(rf, steps)
    vectorize_inner(sch, init, lanes)


def _alone(sch: s_tir.Schedule, b: SBlockInfo, m: Machine) -> None:
    if b.is_injective():
        schedule_injective(sch, b.block_rv, m, dtype_bits(sch, b.block_rv))
        return
    rf = rfactor_row(sch, b.block_rv, m)
    if rf is not None:  # its own nest: the steps along the row, then the partials
        loops = sch.get_loops(rf)
        vectorize_partials(sch, rf, loops[-2], loops[-1], m.lanes(dtype_bits(sch, rf)))
