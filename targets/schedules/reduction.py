"""Row reductions: softmax, layer normalisation, sums and maxima along the innermost axes.

Several blocks (max, exp-sum, normalise) share the same leading "row" axes and reduce the
trailing ones. The rows run across cores; inside a row every block is computed in turn (so the
row stays in cache), the elementwise blocks vectorised and the reductions left as plain loops.

With a single row (softmax over one [1, 1000] vector) there is nothing to split across cores and
each block is scheduled on its own. (TVM's dlight CPU rule takes the 1000 as rows in that case
and recomputes the whole reduction for each of them.)
"""

from __future__ import annotations

from tvm import s_tir
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.analysis.common_analysis import SBlockInfo

from targets.schedules.common import dtype_bits, parallel_outer, schedule_injective, vectorize_inner
from targets.schedules.machine import Machine


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
    work = 1
    for it in last.iters:
        work *= int(it.dom)
    loop = parallel_outer(sch, sch.get_loops(last.block_rv)[: len(rows)], m, work)
    for b in reversed(infos[:-1]):
        sch.compute_at(b.block_rv, loop, preserve_unit_loops=True)
    for b in infos:
        # Only loops inside a row: the row loop itself holds the reductions computed at it.
        if b.is_injective() and len(sch.get_loops(b.block_rv)) > 1:
            vectorize_inner(sch, b.block_rv, m.lanes(dtype_bits(sch, b.block_rv)))
    return True


def _alone(sch: s_tir.Schedule, b: SBlockInfo, m: Machine) -> None:
    if b.is_injective():
        schedule_injective(sch, b.block_rv, m, dtype_bits(sch, b.block_rv))
