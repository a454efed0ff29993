"""Contractions on a dot-product instruction (integer, or bf16 summed in fp32): the register tile of
``contraction``, the instruction tensorized at its innermost level.

The lowering (``lowering.packed_int8``, ``lowering.packed_bf16``) marks the reduction block with
``INT8_ATTR`` = the kernel's
name (``schedules.dot``) and makes its last reduction axis the instruction's depth ``G`` and its
output's last axis a multiple of the instruction's ``L`` lanes. The loops become

    [other spatial, v/(nv*L), r/MR] (parallel)  [reductions]  [MR (unrolled), nv (unrolled), L, G]

and ``L x G`` is replaced by the instruction: an ``MR x nv`` tile of int32 vectors stays in registers
for the whole reduction, each step loads ``nv`` packed weight vectors and broadcasts ``MR``
activation words. The correction and any fused epilogue (cast, scale, bias, ReLU, requantize) run
while the tile is written back; operand producers (shift, widening, padding) run once, before.
"""

from __future__ import annotations

import tvm_ffi
from tvm import s_tir, tirx
from tvm.ir import Call, Op
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.analysis.common_analysis import SBlockInfo
from tvm.s_tir.schedule import LoopRV, SBlockRV

from targets.schedules.amx import has_amx, stride_of, tile_amx
from targets.schedules.common import dtype_bits, extent, iterations, parallel_outer, schedule_injective, vectorize_last
from targets.schedules.contraction import _best_tile, find_main, inline_epilogue, inline_side_inputs
from targets.schedules.dot import KERNELS, DotKernel
from targets.schedules.elementwise import schedule_elementwise
from targets.schedules.machine import Machine
from targets.schedules.mathfun import erf_f32

INT8_ATTR = "effarch.int8"  # set by lowering.packed_int8: the DotKernel's name


def int8_kernel(sch: s_tir.Schedule, block: SBlockRV) -> DotKernel | None:
    name = sch.get(block).annotations.get(INT8_ATTR)
    return KERNELS.get(str(name)) if name is not None else None


def vector_math(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with the float32 ``erf`` and ``nearbyint`` calls written as operations that TVM's
    vectoriser accepts. Neither op is marked vectorisable in TVM 0.27, so one such call in a
    ``vectorize``d loop scalarises the whole loop (an int8 GELU write-back ran 2x the product's
    time; a quantizer 4x). ``erf`` becomes its float32 polynomial (what the LLVM lowering in
    ``schedules.mathfun`` emits for it anyway), ``nearbyint`` LLVM's ``roundeven``, the same
    rounding (half to even) as one vector instruction."""
    return tvm_ffi.structural_map(func, (Call, _vector_call), order="post")


_ERF, _NEARBYINT = Op.get("tirx.erf"), Op.get("tirx.nearbyint")


def _vector_call(call: Call) -> tirx.PrimExpr:
    if str(call.ty) != "float32":
        return call
    if call.op.same_as(_ERF):
        return erf_f32(call.args[0])
    if call.op.same_as(_NEARBYINT):
        return tirx.call_llvm_pure_intrin("float32", "llvm.roundeven", call.args[0])
    return call


def rounds(func: tirx.PrimFunc) -> bool:
    """Whether ``func`` rounds half to even (``nearbyint``): a quantizer."""
    found: list[Call] = []

    def visit(call: Call) -> Call:
        if call.op.same_as(_NEARBYINT):
            found.append(call)
        return call

    tvm_ffi.structural_map(func, (Call, visit), order="post")
    return bool(found)


def schedule_quantize(sch: s_tir.Schedule, m: Machine) -> s_tir.Schedule | bool:
    """An elementwise kernel that rounds (a quantizer: ``round(x / s) + z`` cast to 8 bits): the
    elementwise rule on the vectorisable form of its rounding."""
    if not rounds(sch.mod["main"]):
        return False
    rewritten = s_tir.Schedule(vector_math(sch.mod["main"]))
    return rewritten if schedule_elementwise(rewritten, m) else False


def schedule_int8_contraction(sch: s_tir.Schedule, m: Machine) -> s_tir.Schedule | bool:
    """A function whose one reduction is a block marked for an integer dot-product kernel."""
    return _schedule_dot_contraction(sch, m, "int32")


def schedule_bf16_contraction(sch: s_tir.Schedule, m: Machine) -> s_tir.Schedule | bool:
    """A function whose one reduction is a block marked for a bf16 dot-product kernel (fp32 sums)."""
    return _schedule_dot_contraction(sch, m, "float32")


def schedule_bf16_amx(sch: s_tir.Schedule, m: Machine) -> s_tir.Schedule | bool:
    """The same on AMX tiles, where the CPU has them and the shape fills them (``schedules.amx``)."""
    if not has_amx(m.features):
        return False
    return _schedule_dot_contraction(sch, m, "float32", amx=True)


def _schedule_dot_contraction(sch: s_tir.Schedule, m: Machine, acc_dtype: str,
                              amx: bool = False) -> s_tir.Schedule | bool:
    infos = normalize_prim_func(sch)
    main_i = find_main(infos) if infos is not None else None
    if infos is None or main_i is None:
        return False
    marked = int8_kernel(sch, infos[main_i].block_rv)
    if marked is None or marked.acc_dtype != acc_dtype or (amx and not marked.k_multiple):
        return False
    sch = s_tir.Schedule(vector_math(sch.mod["main"]))
    infos = normalize_prim_func(sch)
    assert infos is not None and main_i is not None
    kernel = int8_kernel(sch, infos[main_i].block_rv)
    assert kernel is not None
    main = infos[main_i].block_rv
    producers = inline_side_inputs(sch, main, [b.block_rv for b in infos[:main_i]])
    writeback = sch.cache_write(main, 0, "local")
    leftover = inline_epilogue(sch, writeback, [b.block_rv for b in infos[main_i + 1:]])
    if amx:
        if not tile_amx(sch, infos[main_i], main, writeback, m, stride_of(sch.get(main))):
            return False
    else:
        _tile(sch, infos[main_i], main, writeback, kernel, m)
    for block in producers + leftover:
        schedule_injective(sch, block, m, dtype_bits(sch, block))
    return sch


def _tile(sch: s_tir.Schedule, info: SBlockInfo, main: SBlockRV, writeback: SBlockRV, k: DotKernel,
          m: Machine) -> None:
    kinds, loops = info.dom_kind(), sch.get_loops(main)
    spatial = [i for i, kind in enumerate(kinds) if kind == "S"]
    v, r = spatial[-1], (spatial[-2] if len(spatial) > 1 else None)
    rows = int(info.iters[r].dom) if r is not None else 1
    nv, mr = _best_tile(int(info.iters[v].dom) // k.lanes, rows, m.registers - k.temporaries)
    v_o, v_u, v_l = sch.split(loops[v], factors=[None, nv, k.lanes])
    r_o, r_i = sch.split(loops[r], factors=[None, mr]) if r is not None else (None, None)
    outer = [loops[i] for i in spatial[:-2 if r is not None else -1]] + [v_o]
    *reductions, depth = [loops[i] for i, kind in enumerate(kinds) if kind == "R"]
    inner: list[LoopRV] = ([r_i] if r_i else []) + [v_u, v_l, depth]
    sch.reorder(*outer, *([r_o] if r_o else []), *reductions, *inner)
    fused = parallel_outer(sch, outer, m, iterations(info))
    if k.llvm_import and fused is not None:  # once per function, around the loop nest the instruction runs in
        sch.annotate(fused, "pragma_import_llvm", k.llvm_import)
    if r_i is not None:
        sch.unroll(r_i)
    sch.unroll(v_u)
    # The write-back runs once per task after all its row tiles: the accumulator is one
    # [rows, nv * lanes] accumulator region per task, allocated once per task (TVM 0.27 takes every
    # local buffer from the workspace pool, a call pair per allocation).
    sch.reverse_compute_at(writeback, fused, preserve_unit_loops=True)
    vectorize_last(sch, writeback, k.lanes)
    if reductions:
        vectorize_last(sch, sch.decompose_reduction(main, reductions[0]), k.lanes)
    sch.tensorize(sch.get_loops(main)[-2], k.name)


# Independent vector accumulators of a row peak: max takes 3 cycles and two issue per cycle.
PEAK_ACCUMULATORS = 4


def schedule_row_peak(sch: s_tir.Schedule, m: Machine) -> bool:
    """A dynamic quantizer's scale: elementwise producers (``abs``) and one max along the last
    axis, which is the kernel's output (``max |x|`` per row; TVM's fused ``abs``+``max``). The
    producers are inlined, each row is reduced into ``lanes x PEAK_ACCUMULATORS`` partial results
    (independent vectors), then the partials; rows across cores."""
    infos = normalize_prim_func(sch)
    if not infos or not infos[-1].is_reduction() or not all(b.is_injective() for b in infos[:-1]):
        return False
    red = infos[-1]
    if red.dom_kind().rstrip("R") != red.dom_kind()[:-1] or "R" in red.dom_kind()[:-1]:
        return False  # one reduction axis, the last
    if not isinstance(sch.get(red.block_rv).body.value, tirx.Max):
        return False  # a max is exact in any order; a float sum's partials would change its rounding
    for b in infos[:-1]:
        sch.compute_inline(b.block_rv)
    *rows, k = sch.get_loops(red.block_rv)
    n, lanes = extent(sch, k) or 0, m.lanes(dtype_bits(sch, red.block_rv))
    width = next((lanes * a for a in (PEAK_ACCUMULATORS, 2, 1) if n % (lanes * a) == 0 and n >= 2 * lanes * a), 0)
    if width == 0 or not rows:
        return False
    _, partial = sch.split(k, factors=[None, width])
    rf = sch.rfactor(partial, factor_axis=len(sch.get(red.block_rv).writes[0].source.shape))
    *rf_rows, steps, across = sch.get_loops(rf)
    acc, vec = sch.split(across, factors=[None, lanes])
    sch.unroll(acc)
    sch.vectorize(vec)
    # The partials of all rows stay one buffer at the root, allocated once per call, and the
    # short pass over them runs after all rows (under the row loop it would be one workspace
    # allocation per row).
    parallel_outer(sch, rf_rows, m, n * _extent_product(sch, rf_rows))
    vectorize_init = sch.decompose_reduction(rf, steps)
    sch.vectorize(sch.split(sch.get_loops(vectorize_init)[-1], factors=[None, lanes])[1])
    return True


def _extent_product(sch: s_tir.Schedule, loops: list[LoopRV]) -> int:
    total = 1
    for loop in loops:
        total *= extent(sch, loop) or 1
    return total
