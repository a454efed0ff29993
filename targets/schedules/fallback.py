"""The rule of last resort: every top-level loop nest on all cores, its innermost loop vectorised
where that is legal. It never leaves a kernel as one serial scalar loop nest, whatever its shape."""

from __future__ import annotations

import contextlib

from tvm import s_tir

from targets.schedules.common import PARALLEL_MIN_WORK, extent, vectorize_inner
from targets.schedules.machine import Machine


def schedule_generic(sch: s_tir.Schedule, m: Machine) -> bool:
    root = sch.get_sblock("root") if _has_root(sch) else None
    blocks = sch.get_child_blocks(root) if root is not None else []
    for block in blocks:
        loops = sch.get_loops(block)
        if not loops:
            continue
        # A reduction loop can be neither parallel nor vectorised; the other loops still are.
        if m.cores > 1 and (extent(sch, loops[0]) or 0) > 1 and _work(sch, loops) >= PARALLEL_MIN_WORK:
            with contextlib.suppress(s_tir.ScheduleError):
                sch.parallel(loops[0])
        with contextlib.suppress(s_tir.ScheduleError):
            vectorize_inner(sch, block, m.lanes())
    return True


def _work(sch: s_tir.Schedule, loops: list) -> int:
    total = 1
    for loop in loops:
        total *= extent(sch, loop) or 1
    return total


def _has_root(sch: s_tir.Schedule) -> bool:
    try:
        sch.get_sblock("root")
    except s_tir.ScheduleError:
        return False
    return True
