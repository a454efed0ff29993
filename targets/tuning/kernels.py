"""The kernels a model's build schedules, in the form tuning and the build both key them by.

Tuning records match a kernel by structural equality, so the kernels tuned must be exactly the
PrimFuncs the build meets: this module takes them from the same lowering and the same Relax passes
(legalize and fusion, ``cpu_pipeline(..., stop_after_schedules=True)`` without our schedules).

``tuning_form`` is a small, deterministic normalisation applied on both sides: bias broadcasts that
legalization leaves as their own blocks (``T_reshape`` of a parameter, indexed ``c % C``) are inlined
into their consumer. MetaSchedule refuses such kernels otherwise (its tiling moves the epilogue under
the contraction's loops while the broadcast's block stays outside: "reverse-compute-at" fails).
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
import tvm_ffi
from tvm import relax, s_tir, tirx

ENTRY = "main"  # the symbol a tuning task's function carries (MetaSchedule's runner calls it)


@dataclass(frozen=True)
class Kernel:
    """One distinct kernel of a model: its name in the build, how often the model calls it, the
    function as the build meets it, and its tuning form and key."""

    name: str
    calls: int
    func: tirx.PrimFunc
    form: tirx.PrimFunc
    key: str

    def task_module(self) -> tvm.IRModule:
        return tvm.IRModule({ENTRY: self.form})


def tuning_form(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with its parameter broadcasts inlined and its symbol set to ``ENTRY``."""
    func = func.with_attr("global_symbol", ENTRY)
    sch = s_tir.Schedule(func)
    while _inline_one_broadcast(sch):
        pass
    return sch.mod[ENTRY]


def _inline_one_broadcast(sch: s_tir.Schedule) -> bool:
    """Inline one block that only reshapes or broadcasts parameters (no reduction, no padding
    condition, reads nothing computed in the kernel, writes no parameter); False when none is left."""
    params = {buf.name for buf in sch.mod[ENTRY].params}
    for rv in sch.get_child_blocks(sch.get_sblock("root")):
        block = sch.get(rv)
        if block.init is not None or "if_then_else" in str(block.body):
            continue
        if any(r.source.name not in params for r in block.reads) or any(w.source.name in params
                                                                       for w in block.writes):
            continue
        try:
            sch.compute_inline(rv)  # a refused inline leaves the schedule as it was
        except RuntimeError:  # ScheduleError and TVM's other errors
            continue
        return True
    return False


def workload_key(form: tirx.PrimFunc) -> str:
    """A stable name for a tuning form: its structural hash (same structure, same key, any process)."""
    return f"{tvm_ffi.structural_hash(tvm.IRModule({ENTRY: form})) & (2**64 - 1):016x}"


def model_kernels(mod: tvm.IRModule) -> list[Kernel]:
    """The distinct unscheduled kernels of a fused module, with how often ``main`` calls each."""
    calls = call_counts(mod)
    seen: dict[str, Kernel] = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or func.attrs.get("tirx.is_scheduled", False):
            continue
        form = tuning_form(func)
        key = workload_key(form)
        n = calls.get(gv.name_hint, 1)
        if key in seen:  # the same kernel twice under two names: tune it once
            old = seen[key]
            seen[key] = Kernel(old.name, old.calls + n, old.func, old.form, key)
        else:
            seen[key] = Kernel(gv.name_hint, n, func, form, key)
    return list(seen.values())


def call_counts(mod: tvm.IRModule) -> dict[str, int]:
    counts: dict[str, int] = {}
    call_tir = tvm.ir.Op.get("relax.call_tir")

    def visit(expr: relax.Expr) -> None:
        if isinstance(expr, relax.Call) and expr.op.same_as(call_tir):
            name = expr.args[0].name_hint
            counts[name] = counts.get(name, 0) + 1

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func.body, visit)
    return counts
