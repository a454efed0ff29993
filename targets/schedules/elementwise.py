"""Injective kernels: elementwise chains, broadcasts, transposes, padding, concatenation.

Everything that is not an output is inlined into its consumer, so a fused chain reads its inputs
once and writes once; each remaining block runs over all cores with vectors inside.
"""

from __future__ import annotations

from tvm import s_tir
from tvm.s_tir.dlight.analysis import normalize_prim_func

from targets.schedules.common import dtype_bits, schedule_injective
from targets.schedules.machine import Machine


def schedule_elementwise(sch: s_tir.Schedule, m: Machine) -> bool:
    infos = normalize_prim_func(sch)
    if infos is None or not infos or not all(b.is_injective() for b in infos):
        return False
    kept = []
    for info in infos[:-1]:
        try:
            sch.compute_inline(info.block_rv)
        except s_tir.ScheduleError:
            kept.append(info.block_rv)
    for block in [*kept, infos[-1].block_rv]:
        schedule_injective(sch, block, m, dtype_bits(sch, block))
    return True
