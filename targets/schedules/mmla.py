"""Integer matmuls on Arm's i8mm (``smmla``): one instruction multiplies a 2 x 8 block of s8
activations by an 8 x 2 block of s8 weights into a 2 x 2 block of int32 sums.

That is a different shape from the broadcast dot products of ``schedules.dot`` (one activation
word against ``lanes`` weight columns), so the lowering (``lowering.packed_int8.dense_int8_mmla``)
blocks both operands in pairs of rows, ``[.., M/2, Kp/8, 2, 8]`` and ``[N/2, Kp/8, 2, 8]``, and
sums into ``[.., M/2, N/2, 2, 2]``: every instruction reads two contiguous 16-byte blocks and
updates one 4-lane accumulator. The rule keeps ``MB x NB`` accumulators in registers over the
whole reduction (``MB + NB`` loads per ``MB * NB`` instructions) and writes them back once; the
zero-point correction and the unblocking to ``[.., M, N]`` run after, as their own loop.
"""

from __future__ import annotations

from tvm import s_tir
from tvm.s_tir import TensorIntrin
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.schedule import LoopRV
from tvm.script import tirx as T

from targets.schedules.common import dtype_bits, iterations, parallel_outer, schedule_injective
from targets.schedules.contraction import find_main
from targets.schedules.machine import Machine

MMLA_ATTR = "effarch.mmla"  # set by the lowering on the blocked reduction
INTRIN = "effarch_neon_smmla_2x2x8"
TILE = 4  # row pairs and column pairs per register tile: 16 accumulators, 8 operand registers


@T.prim_func(s_tir=True)
def _desc(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, (2, 8), "int8", offset_factor=1)
    B = T.match_buffer(b, (2, 8), "int8", offset_factor=1)
    C = T.match_buffer(c, (2, 2), "int32", offset_factor=1, scope="local")
    with T.sblock("root"):
        T.reads(C[0:2, 0:2], A[0:2, 0:8], B[0:2, 0:8])
        T.writes(C[0:2, 0:2])
        for i, j, k in T.grid(2, 2, 8):
            with T.sblock("update"):
                vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                C[vi, vj] = C[vi, vj] + T.Cast("int32", A[vi, vk]) * T.Cast("int32", B[vj, vk])


@T.prim_func(s_tir=True)
def _impl(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, (2, 8), "int8", offset_factor=1)
    B = T.match_buffer(b, (2, 8), "int8", offset_factor=1)
    C = T.match_buffer(c, (2, 2), "int32", offset_factor=1, scope="local")
    with T.sblock("root"):
        T.reads(C[0:2, 0:2], A[0:2, 0:8], B[0:2, 0:8])
        T.writes(C[0:2, 0:2])
        C[0, T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smmla.v4i32.v16i8"), C.vload([0, 0], "int32x4"),
            A.vload([0, 0], "int8x16"), B.vload([0, 0], "int8x16"), dtype="int32x4")


TensorIntrin.register(INTRIN, _desc, _impl, override=True)


def schedule_mmla(sch: s_tir.Schedule, m: Machine) -> s_tir.Schedule | bool:
    """A function whose one reduction is a block blocked for ``smmla`` (``MMLA_ATTR``)."""
    infos = normalize_prim_func(sch)
    main_i = find_main(infos) if infos is not None else None
    if infos is None or main_i is None:
        return False
    main = infos[main_i].block_rv
    if sch.get(main).annotations.get(MMLA_ATTR) is None:
        return False
    for block in [b.block_rv for b in infos[:main_i]]:
        schedule_injective(sch, block, m, dtype_bits(sch, block))  # the blocked, shifted operand
    writeback = sch.cache_write(main, 0, "local")
    *lead, mb, nb, i, j, ko, ki = sch.get_loops(main)
    mb_o, mb_i = sch.split(mb, factors=[None, _divisor(sch, mb)])
    nb_o, nb_i = sch.split(nb, factors=[None, _divisor(sch, nb)])
    sch.reorder(*lead, nb_o, mb_o, ko, mb_i, nb_i, i, j, ki)
    work = iterations(infos[main_i])
    fused = parallel_outer(sch, [*lead, nb_o, mb_o], m, work)
    sch.unroll(mb_i)
    sch.unroll(nb_i)
    assert fused is not None
    sch.reverse_compute_at(writeback, fused, preserve_unit_loops=True)
    init = sch.decompose_reduction(main, ko)
    for block in (init, writeback):
        loops = sch.get_loops(block)
        sch.vectorize(sch.fuse(loops[-2], loops[-1]))  # a 2 x 2 block: one 4-lane vector
    sch.tensorize(i, INTRIN)
    for block in [b.block_rv for b in infos[main_i + 1:]]:
        schedule_injective(sch, block, m, dtype_bits(sch, block))  # correction and unblocking
    return sch


def _divisor(sch: s_tir.Schedule, loop: LoopRV) -> int:
    n = int(sch.get(loop).extent)
    return next(t for t in range(min(TILE, n), 0, -1) if n % t == 0)
