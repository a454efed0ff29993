"""Integer contractions on a dot-product instruction: the register tile of ``contraction``, the
instruction tensorized at its innermost level.

The lowering (``lowering.packed_int8``) marks the reduction block with ``INT8_ATTR`` = the kernel's
name (``schedules.dot``) and makes its last reduction axis the instruction's depth ``G`` and its
output's last axis a multiple of the instruction's ``L`` lanes. The loops become

    [other spatial, v/(nv*L), r/MR] (parallel)  [reductions]  [MR (unrolled), nv (unrolled), L, G]

and ``L x G`` is replaced by the instruction: an ``MR x nv`` tile of int32 vectors stays in registers
for the whole reduction, each step loads ``nv`` packed weight vectors and broadcasts ``MR``
activation words. The correction and any fused epilogue (cast, scale, bias, ReLU, requantize) run
while the tile is written back; operand producers (shift, widening, padding) run once, before.
"""

from __future__ import annotations

from tvm import s_tir
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.analysis.common_analysis import SBlockInfo
from tvm.s_tir.schedule import LoopRV, SBlockRV

from targets.schedules.common import dtype_bits, parallel_outer, schedule_injective
from targets.schedules.contraction import _best_tile, find_main, inline_epilogue, inline_side_inputs
from targets.schedules.dot import KERNELS, DotKernel
from targets.schedules.machine import Machine

INT8_ATTR = "effarch.int8"  # set by lowering.packed_int8: the DotKernel's name


def int8_kernel(sch: s_tir.Schedule, block: SBlockRV) -> DotKernel | None:
    name = sch.get(block).annotations.get(INT8_ATTR)
    return KERNELS.get(str(name)) if name is not None else None


def schedule_int8_contraction(sch: s_tir.Schedule, m: Machine) -> bool:
    """A function whose one reduction is a block marked for an integer dot-product kernel."""
    infos = normalize_prim_func(sch)
    main_i = find_main(infos) if infos is not None else None
    if infos is None or main_i is None:
        return False
    kernel = int8_kernel(sch, infos[main_i].block_rv)
    if kernel is None:
        return False
    main = infos[main_i].block_rv
    producers = inline_side_inputs(sch, main, [b.block_rv for b in infos[:main_i]])
    writeback = sch.cache_write(main, 0, "local")
    leftover = inline_epilogue(sch, writeback, [b.block_rv for b in infos[main_i + 1:]])
    _tile(sch, infos[main_i], main, writeback, kernel, m)
    for block in producers + leftover:
        schedule_injective(sch, block, m, dtype_bits(sch, block))
    return True


def _tile(sch: s_tir.Schedule, info: SBlockInfo, main: SBlockRV, writeback: SBlockRV, k: DotKernel,
          m: Machine) -> None:
    kinds, loops = info.dom_kind(), sch.get_loops(main)
    spatial = [i for i, kind in enumerate(kinds) if kind == "S"]
    v, r = spatial[-1], (spatial[-2] if len(spatial) > 1 else None)
    rows = int(info.iters[r].dom) if r is not None else 1
    nv, mr = _best_tile(int(info.iters[v].dom) // k.lanes, rows, m.registers - k.temporaries)
    v_o, v_u, v_l = sch.split(loops[v], factors=[None, nv, k.lanes])
    r_o, r_i = sch.split(loops[r], factors=[None, mr]) if r is not None else (None, None)
    outer = [loops[i] for i in spatial[:-2 if r is not None else -1]] + [v_o] + ([r_o] if r_o else [])
    *reductions, depth = [loops[i] for i, kind in enumerate(kinds) if kind == "R"]
    inner: list[LoopRV] = ([r_i] if r_i else []) + [v_u, v_l, depth]
    sch.reorder(*outer, *reductions, *inner)
    fused = parallel_outer(sch, outer, m, _work(info))
    if r_i is not None:
        sch.unroll(r_i)
    sch.unroll(v_u)
    sch.reverse_compute_at(writeback, fused, preserve_unit_loops=True)
    _vectorize_last(sch, writeback, k.lanes)
    if reductions:
        _vectorize_last(sch, sch.decompose_reduction(main, reductions[0]), k.lanes)
    sch.tensorize(sch.get_loops(main)[-2], k.name)


def _work(info: SBlockInfo) -> int:
    work = 1
    for it in info.iters:
        work *= int(it.dom)
    return work


def _vectorize_last(sch: s_tir.Schedule, block: SBlockRV, lanes: int) -> None:
    _, inner = sch.split(sch.get_loops(block)[-1], factors=[None, lanes])
    sch.vectorize(inner)
