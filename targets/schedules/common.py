"""Loop helpers every rule shares: parallel outer loops, vector inner loops, static extents."""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.ir import Expr as PrimExpr
from tvm.ir import TensorLoad
from tvm.s_tir.dlight.analysis.common_analysis import SBlockInfo
from tvm.s_tir.schedule import LoopRV, SBlockRV

from targets.schedules.machine import Machine

# Below this many loop iterations a parallel launch (waking TVM's pool, ~5 us) costs more than it saves.
PARALLEL_MIN_WORK = 32768


def iterations(info: SBlockInfo) -> int:
    """How many times a block's body runs: the product of its iteration domains (static)."""
    work = 1
    for it in info.iters:
        work *= int(it.dom)
    return work


def extent(sch: s_tir.Schedule, loop: LoopRV) -> int | None:
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm) else None


def vector_lanes(total: int, lanes: int) -> int:
    """The largest power-of-two vector width up to ``lanes`` that divides ``total`` (1: none)."""
    v = lanes
    while v > 1 and total % v:
        v //= 2
    return v if v >= 4 or v == lanes else 1


def vectorize_last(sch: s_tir.Schedule, block: SBlockRV, lanes: int) -> None:
    """Split ``block``'s innermost loop by ``lanes`` (a multiple of it) and vectorize the inside."""
    _, inner = sch.split(sch.get_loops(block)[-1], factors=[None, lanes])
    sch.vectorize(inner)


def vectorize_inner(sch: s_tir.Schedule, block: SBlockRV, lanes: int) -> None:
    """Vectorize the innermost loop in chunks of exactly ``lanes`` (wider vectors spill)."""
    loops = sch.get_loops(block)
    if not loops:
        return
    inner = loops[-1]
    n = extent(sch, inner)
    if n is None or n < 2:
        return
    v = vector_lanes(n, lanes)
    if v == 1:
        return
    if n > v:
        inner = sch.split(inner, factors=[None, v])[1]
    sch.vectorize(inner)


def parallel_outer(sch: s_tir.Schedule, loops: list[LoopRV], m: Machine, work: int) -> LoopRV | None:
    """Fuse ``loops`` into one and run it on every core, when there is enough work for that."""
    if not loops:
        return None
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    if m.cores > 1 and work >= PARALLEL_MIN_WORK and (extent(sch, fused) or 0) > 1:
        sch.parallel(fused)
    return fused


def schedule_injective(sch: s_tir.Schedule, block: SBlockRV, m: Machine, dtype_bits: int = 32) -> None:
    """An elementwise, broadcast, pad or transpose block: all loops fused, cores over the outside,
    a vector over the inside."""
    loops = sch.get_loops(block)
    if not loops:
        return
    row = extent(sch, loops[-1]) or 0
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    n = extent(sch, fused) or 0
    lanes = _row_lanes(n, row, m.lanes(dtype_bits)) if n else 1
    if lanes > 1 and n > lanes:
        outer, inner = sch.split(fused, factors=[None, lanes])
        sch.vectorize(inner)
    else:
        outer = fused
    if m.cores > 1 and n >= PARALLEL_MIN_WORK:
        sch.parallel(outer)


def _row_lanes(n: int, row: int, lanes: int) -> int:
    """The vector width for ``n`` elements in rows of ``row``: one that divides the row where there
    is one, so no vector straddles two rows. A straddling vector indexes through ``% row``, which
    LLVM cannot turn into one load (a padded or broadcast read becomes one scalar load per lane:
    NHWC u8 with 144 channels and 32 lanes ran 10x slower)."""
    whole = vector_lanes(n, lanes)
    if row and row % whole:
        within = vector_lanes(row, lanes)
        return within if within > 1 else whole
    return whole


def dtype_bits(sch: s_tir.Schedule, block: SBlockRV) -> int:
    writes = sch.get(block).writes
    return _bits(writes[0].source.dtype) if writes else 32


def walk(expr: object) -> list[object]:
    """Every sub-expression of a TIR expression, the expression itself included (pre-order)."""
    out: list[object] = []
    stack = [expr]
    while stack:
        e = stack.pop()
        out.append(e)
        for field in ("a", "b", "value", "condition", "true_value", "false_value"):
            child = getattr(e, field, None)
            if isinstance(child, PrimExpr):
                stack.append(child)
        for field in ("args", "indices"):
            stack.extend(c for c in getattr(e, field, ()) if isinstance(c, PrimExpr))
    return out


def _bits(dtype: object) -> int:
    bits = getattr(dtype, "bits", None)
    if bits is not None:
        return int(bits)
    digits = "".join(ch for ch in str(dtype) if ch.isdigit())
    return int(digits) if digits else 32


def is_copy_block(stmt: tirx.stmt.SBlock) -> bool:
    """A block with only spatial iterators storing one element loaded from a buffer of the same dtype (a
    transpose, slice or reshape step)."""
    body = stmt.body
    return (isinstance(body, tirx.BufferStore) and isinstance(body.value, TensorLoad) and stmt.init is None
            and str(body.value.source.dtype) == str(body.buffer.dtype)
            and all(iv.iter_type == tirx.IterVar.DataPar for iv in stmt.iter_vars))


def is_reduction_block(stmt: tirx.stmt.SBlock) -> bool:
    """A block with a reduction iterator (a matmul, convolution, pool or row reduction)."""
    return any(iv.iter_type == tirx.IterVar.CommReduce for iv in stmt.iter_vars)
