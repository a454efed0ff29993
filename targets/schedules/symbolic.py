"""Kernels whose loop extents depend on a symbolic input dim (``batch``, ``seq``).

effarch's static rules size register tiles and vectors from numbers, so a model compiled without
``--shape`` gets these dlight-style rules instead; none leaves a kernel as a serial scalar loop:

- ``symbolic-contraction``: kernels with reductions (matmul, dense, conv, attention's second
  product) whose innermost output axis is static: the reduction loops move outside that axis,
  which becomes the vector, the other output axes run on all cores;
- ``symbolic``: any other kernel: producers inlined where they can be, each block's outer output
  loops fused onto all cores, its innermost loop vectorised where it is static and output.
"""

from __future__ import annotations

import contextlib

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.analysis.common_analysis import SBlockInfo

from targets.schedules.common import dtype_bits, vector_lanes
from targets.schedules.machine import Machine


def is_symbolic(func: tirx.PrimFunc) -> bool:
    """Whether any buffer of ``func`` has a dim that is not a number."""
    shapes = [getattr(p.ty, "shape", None) for p in func.params]
    return any(not isinstance(d, tirx.IntImm) for shape in shapes if shape is not None for d in shape)


def schedule_symbolic_contraction(sch: s_tir.Schedule, m: Machine) -> bool:
    """Every reduction with a static innermost output axis as a contraction (attention fuses
    several), the other blocks as in ``schedule_symbolic``; declines when there is none."""
    infos = _inlined(sch)
    mains = [b for b in infos if _contracts(b)]
    if not mains:
        return False
    for info in infos:
        if info in mains:
            _schedule_contraction_block(sch, info, m)
        else:
            _schedule_block(sch, info, m)
    return True


def _contracts(info: SBlockInfo) -> bool:
    kinds = info.dom_kind()
    return (info.is_reduction() and "S" in kinds and kinds[-1] == "R"
            and isinstance(info.iters[kinds.rindex("S")].dom, int))


def _schedule_contraction_block(sch: s_tir.Schedule, main: SBlockInfo, m: Machine) -> None:
    """The reduction loops outside the innermost output axis, which becomes the vector."""
    kinds = main.dom_kind()
    loops = sch.get_loops(main.block_rv)
    s_loops = [lp for lp, k in zip(loops, kinds, strict=True) if k == "S"]
    r_loops = [lp for lp, k in zip(loops, kinds, strict=True) if k == "R"]
    inner = s_loops[-1]
    sch.reorder(*s_loops[:-1], *r_loops, inner)
    n, lanes = int(main.iters[kinds.rindex("S")].dom), m.lanes(dtype_bits(sch, main.block_rv))
    # Vector and cores while the block still has its init (TVM takes neither for the update
    # block that decomposing leaves); the init's own loop after.
    _vectorize(sch, inner, n, lanes)
    _parallel(sch, s_loops[:-1], m)
    init = sch.decompose_reduction(main.block_rv, r_loops[0])
    _vectorize(sch, sch.get_loops(init)[-1], n, lanes)


def schedule_symbolic(sch: s_tir.Schedule, m: Machine) -> bool:
    for info in _inlined(sch):
        _schedule_block(sch, info, m)
    return True


def _inlined(sch: s_tir.Schedule) -> list[SBlockInfo]:
    """The blocks left after inlining every injective one that is not an output."""
    infos = normalize_prim_func(sch)
    if infos is None:
        raise ValueError("kernel is not in a normal form dlight analysis understands")
    for info in infos[:-1]:
        if info.is_injective():
            with contextlib.suppress(s_tir.ScheduleError):
                sch.compute_inline(info.block_rv)
    infos = normalize_prim_func(sch)
    if infos is None:
        raise ValueError("kernel is not in a normal form after inlining")
    return infos


def _schedule_block(sch: s_tir.Schedule, info: SBlockInfo, m: Machine) -> None:
    """Leading output loops onto all cores; a static innermost output loop as a vector."""
    kinds = info.dom_kind()
    loops = sch.get_loops(info.block_rv)
    lead = len(kinds) - len(kinds.lstrip("S"))
    inner = None
    if kinds and kinds.endswith("S") and lead == len(kinds) and isinstance(info.iters[-1].dom, int):
        inner, lead = loops[-1], lead - 1
    if inner is not None:  # first: see schedule_symbolic_contraction
        _vectorize(sch, inner, int(info.iters[-1].dom), m.lanes(dtype_bits(sch, info.block_rv)))
    _parallel(sch, loops[:lead], m)


def _parallel(sch: s_tir.Schedule, loops: list, m: Machine) -> None:
    """The loops fused and run on every core; their extent is usually symbolic (the batch), so
    the work cannot be weighed here: one pool launch per kernel is the price."""
    if not loops or m.cores < 2:
        return
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    sch.parallel(fused)


def _vectorize(sch: s_tir.Schedule, loop: object, n: int, lanes: int) -> None:
    v = vector_lanes(n, lanes)
    if v == 1 or n < 2:
        return
    if n > v:
        loop = sch.split(loop, factors=[None, v])[1]
    sch.vectorize(loop)
