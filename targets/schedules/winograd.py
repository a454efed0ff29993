"""Schedule of a Winograd convolution kernel (``targets.lowering.winograd``): three stages.

- input transform ``V[ab, p, c]``: per tile and vector of channels, the 16 patch combinations
  unrolled (the stage index becomes a constant, so the Select over it folds), cores over tiles;
- the 16 GEMMs: the contraction rule's register tile (vectors along output channels, rows along
  tiles), the weight panels of one GEMM shared by all its rows;
- output transform ``Y = A^T M A`` with the epilogue (bias, activation) inlined after it: per tile,
  its 2x2 outputs unrolled for a vector of channels.
"""

from __future__ import annotations

from tvm import s_tir
from tvm.s_tir.dlight.analysis.common_analysis import get_sblock_info
from tvm.s_tir.schedule import LoopRV, SBlockRV

from targets.schedules.common import PARALLEL_MIN_WORK, dtype_bits, extent, schedule_injective, vector_lanes
from targets.schedules.contraction import choose_tile, inline_epilogue, tile_contraction
from targets.schedules.machine import Machine

WINOGRAD_ATTR = "effarch.winograd"  # set by targets.lowering.winograd on its stages: input, gemm, output
STAGES = ("input", "gemm", "output")


def stages_of(sch: s_tir.Schedule) -> dict[str, SBlockRV]:
    """The kernel's Winograd stages by name (empty when it is no Winograd kernel)."""
    out = {}
    try:
        root = sch.get_sblock("root")
    except s_tir.ScheduleError:
        return {}
    for block in sch.get_child_blocks(root):
        stage = sch.get(block).annotations.get(WINOGRAD_ATTR)
        if stage is not None:
            out[str(stage)] = block
    return out if set(out) == set(STAGES) else {}


def schedule_winograd(sch: s_tir.Schedule, m: Machine) -> bool:
    stages = stages_of(sch)
    if not stages:
        return False
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    names = [sch.get(b).name_hint for b in blocks]
    at = {stage: names.index(sch.get(b).name_hint) for stage, b in stages.items()}
    consumers = [b for i, b in enumerate(blocks) if i > at["output"]]
    leftover = []
    for i, block in enumerate(blocks):  # the padding and side inputs (a bias reshape) go inline
        if i in at.values() or i > at["output"]:
            continue
        try:
            sch.compute_inline(block)
        except s_tir.ScheduleError:
            leftover.append(block)
    _input_stage(sch, stages["input"], m)
    gemm = stages["gemm"]
    info = get_sblock_info(sch, gemm)
    tile = choose_tile(sch, info, m)
    if tile is None:
        return False
    tile_contraction(sch, info, gemm, sch.cache_write(gemm, 0, "local"), tile, m)
    leftover += inline_epilogue(sch, stages["output"], consumers)
    _output_stage(sch, stages["output"], m)
    for block in leftover:
        schedule_injective(sch, block, m, dtype_bits(sch, block))
    return True


def _channels(sch: s_tir.Schedule, loop: LoopRV, m: Machine) -> tuple[LoopRV, LoopRV | None]:
    """The channel loop split into (outer, vector lanes); no vector where none divides it."""
    lanes = vector_lanes(extent(sch, loop) or 1, m.lanes(32))
    if lanes == 1:
        return loop, None
    outer, inner = sch.split(loop, factors=[None, lanes])
    return outer, inner


def _parallel(sch: s_tir.Schedule, loop: LoopRV, m: Machine, work: int) -> None:
    if m.cores > 1 and work >= PARALLEL_MIN_WORK and (extent(sch, loop) or 0) > 1:
        sch.parallel(loop)


def _input_stage(sch: s_tir.Schedule, block: SBlockRV, m: Machine) -> None:
    ab, p, c = sch.get_loops(block)
    work = 16 * (extent(sch, p) or 1) * (extent(sch, c) or 1)
    c_o, c_i = _channels(sch, c, m)
    sch.reorder(p, c_o, ab, *([c_i] if c_i is not None else []))
    sch.unroll(ab)
    if c_i is not None:
        sch.vectorize(c_i)
    _parallel(sch, p, m, work)


def _output_stage(sch: s_tir.Schedule, block: SBlockRV, m: Machine) -> None:
    b, y, x, k = sch.get_loops(block)
    work = (extent(sch, b) or 1) * (extent(sch, y) or 1) * (extent(sch, x) or 1) * (extent(sch, k) or 1)
    y_o, y_i = sch.split(y, factors=[None, 2])
    x_o, x_i = sch.split(x, factors=[None, 2])
    k_o, k_i = _channels(sch, k, m)
    sch.reorder(b, y_o, x_o, k_o, y_i, x_i, *([k_i] if k_i is not None else []))
    sch.unroll(y_i)
    sch.unroll(x_i)
    if k_i is not None:
        sch.vectorize(k_i)
    _parallel(sch, sch.fuse(b, y_o, x_o), m, work)
