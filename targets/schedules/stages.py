"""Kernels with several reductions in a row: attention (QK^T, softmax's max and sum, AV), or a
layer norm after a matmul. Each stage gets the schedule of its own kind, in its own loop nest:

- a contraction stage is register-tiled like a lone matmul (``contraction``);
- any other reduction runs its leading axes across cores, the reduction inside;
- elementwise stages are inlined into their consumers (the scale and mask into softmax), except
  into a contraction, where they would be recomputed for every column of its output.
"""

from __future__ import annotations

import contextlib

from tvm import s_tir
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.analysis.common_analysis import SBlockInfo, get_sblock_info
from tvm.s_tir.schedule import SBlockRV

from targets.schedules.common import dtype_bits, parallel_outer, schedule_injective
from targets.schedules.contraction import choose_tile, is_mac, tile_contraction
from targets.schedules.machine import Machine


def schedule_stages(sch: s_tir.Schedule, m: Machine) -> bool:
    infos = normalize_prim_func(sch)
    if infos is None or sum(b.is_reduction() for b in infos) < 2:
        return False
    for info in infos[:-1]:
        if info.is_injective() and not any(is_mac(sch.get(c)) for c in sch.get_consumers(info.block_rv)):
            with contextlib.suppress(s_tir.ScheduleError):
                sch.compute_inline(info.block_rv)
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        _schedule_stage(sch, block, m)
    return True


def _schedule_stage(sch: s_tir.Schedule, block: SBlockRV, m: Machine) -> None:
    info = get_sblock_info(sch, block)
    if not info.is_reduction():
        schedule_injective(sch, block, m, dtype_bits(sch, block))
        return
    tile = choose_tile(sch, info, m) if is_mac(sch.get(block)) else None
    if tile is not None:
        tile_contraction(sch, info, block, sch.cache_write(block, 0, "local"), tile, m)
    else:
        _schedule_row(sch, info, m)


def _schedule_row(sch: s_tir.Schedule, info: SBlockInfo, m: Machine) -> None:
    """Leading spatial axes on all cores; the reduction stays a serial loop inside."""
    kinds = info.dom_kind()
    leading = len(kinds) - len(kinds.lstrip("S"))
    loops = sch.get_loops(info.block_rv)[:leading]
    work = 1
    for it in info.iters:
        work *= int(it.dom)
    parallel_outer(sch, loops, m, work)
