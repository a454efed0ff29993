"""effarch's CPU schedule library: every kernel after fusion gets a schedule, none runs as a plain loop.

A kernel (a PrimFunc after LegalizeOps, FuseOps and FuseTIR) is offered to the rules in ``RULES``
in order; the first that accepts it schedules it. The rules read only the kernel's structure and
the machine (vector width, registers, cores), so they serve x86 (AVX2, AVX-512) and Arm (NEON) alike:

| kind             | kernels                                   | module          |
|------------------|-------------------------------------------|-----------------|
| int8-contraction | MatMulInteger / ConvInteger on packed weights (+ epilogue): dot-product instructions | int8 |
| int8-mmla        | MatMulInteger on Arm i8mm: 2 x 2 x 8 ``smmla`` blocks in a register tile | mmla |
| bf16-amx         | ``--precision bf16`` matmuls and convs on packed bf16 weights: AMX tiles, fp32 sums | amx |
| bf16-contraction | the same on vdpbf16ps (no AMX, or a shape that does not fill its tiles) | int8 |
| weight-only      | MatMul/Gemm on 8-bit or 4-bit packed weights, expanded in the kernel | weight_only |
| contraction      | matmul, batched matmul, dense, conv (+ epilogue) | contraction |
| window-reduction | pools, sums over outer axes               | contraction     |
| row-reduction    | softmax, layer norm, sums along the last axis | reduction       |
| stages           | attention, matmul + layer norm: several reductions, each its own way | stages |
| quantize         | elementwise kernels that round (quantizers), rounding as one vector instruction | int8 |
| row-peak         | max (of abs) along the last axis as the output: a dynamic quantizer's scale | int8 |
| elementwise      | elementwise chains, broadcasts, transposes, pads | elementwise |
| generic          | anything else: outer loop on all cores, inner loop vectorised where legal | fallback |
| symbolic(-contraction) | kernels of a model compiled with symbolic dims (no ``--shape``) | symbolic |

With a tuning database (``effarch compile --tuning-db``), a kernel whose MetaSchedule record measured
faster than these rules takes the record instead (rule ``tuned``; ``targets.tuning``).

``ScheduleKernels`` is the Relax module pass; it records which rule took each kernel, which
``effarch compile -v`` prints.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import tvm
from tvm import s_tir, tirx
from tvm.target import Target

from targets.schedules import mathfun as _mathfun  # noqa: F401  (registers vector exp/erf/tanh/sigmoid)
from targets.schedules.contraction import schedule_contraction, schedule_window_reduction
from targets.schedules.elementwise import schedule_elementwise
from targets.schedules.fallback import schedule_generic
from targets.schedules.int8 import (
    schedule_bf16_amx,
    schedule_bf16_contraction,
    schedule_int8_contraction,
    schedule_quantize,
    schedule_row_peak,
)
from targets.schedules.machine import Machine, machine_of
from targets.schedules.mmla import schedule_mmla
from targets.schedules.reduction import schedule_row_reduction
from targets.schedules.stages import schedule_stages
from targets.schedules.symbolic import is_symbolic, schedule_symbolic, schedule_symbolic_contraction
from targets.schedules.weight_only import schedule_weight_only

logger = logging.getLogger(__name__)

# A rule schedules ``sch`` in place and says whether it applied; on False or an error the
# kernel goes to the next rule with a fresh schedule.
Rule = Callable[[s_tir.Schedule, Machine, Target], "s_tir.Schedule | bool"]

RULES: list[tuple[str, Rule]] = [
    ("int8-contraction", lambda sch, m, t: schedule_int8_contraction(sch, m)),
    ("int8-mmla", lambda sch, m, t: schedule_mmla(sch, m)),
    ("bf16-amx", lambda sch, m, t: schedule_bf16_amx(sch, m)),
    ("bf16-contraction", lambda sch, m, t: schedule_bf16_contraction(sch, m)),
    ("weight-only", lambda sch, m, t: schedule_weight_only(sch, m)),
    ("contraction", lambda sch, m, t: schedule_contraction(sch, m)),
    ("window-reduction", lambda sch, m, t: schedule_window_reduction(sch, m)),
    ("row-reduction", lambda sch, m, t: schedule_row_reduction(sch, m)),
    ("stages", lambda sch, m, t: schedule_stages(sch, m)),
    ("quantize", lambda sch, m, t: schedule_quantize(sch, m)),
    ("row-peak", lambda sch, m, t: schedule_row_peak(sch, m)),
    ("elementwise", lambda sch, m, t: schedule_elementwise(sch, m)),
    ("generic", lambda sch, m, t: schedule_generic(sch, m)),
]

# Kernels with symbolic extents (a model compiled without --shape): the rules above size tiles
# and vectors from numbers, these do not (``schedules.symbolic``).
SYMBOLIC_RULES: list[tuple[str, Rule]] = [
    ("symbolic-contraction", lambda sch, m, t: schedule_symbolic_contraction(sch, m)),
    ("symbolic", lambda sch, m, t: schedule_symbolic(sch, m)),
]


@dataclass
class ScheduleReport:
    """Which rule scheduled each kernel (name -> rule), filled in as the pass runs."""

    rules: dict[str, str] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for rule in self.rules.values():
            out[rule] = out.get(rule, 0) + 1
        return out


def schedule_kernel(func: tirx.PrimFunc, target: Target, m: Machine) -> tuple[tirx.PrimFunc, str]:
    """``func`` scheduled by the first rule that takes it, and that rule's name."""
    for name, rule in SYMBOLIC_RULES if is_symbolic(func) else RULES:
        sch = s_tir.Schedule(func)
        try:
            result = rule(sch, m, target)
        except (RuntimeError, ValueError, AssertionError) as exc:  # TVM raises RuntimeError subclasses
            logger.debug("rule %s failed on %s: %s", name, func.attrs.get("global_symbol", "?"), exc)
            continue
        if result is False:
            continue
        done = result if isinstance(result, s_tir.Schedule) else sch
        return done.mod["main"].with_attr("tirx.is_scheduled", True), name
    return func, "none"


class TunedLookup(Protocol):
    """A tuning database as the schedule pass sees it (``targets.tuning.TunedSchedules``)."""

    def schedule(self, name: str, func: tirx.PrimFunc, rule: str) -> tirx.PrimFunc | None: ...


def schedule_pass(target: Target, report: ScheduleReport | None = None,
                  tuned: TunedLookup | None = None) -> tvm.transform.Pass:
    """The module pass that schedules every unscheduled PrimFunc for ``target``: by its tuned
    record where ``tuned`` has one that beat our rules, else by the first rule that takes it."""
    m = machine_of(target)

    @tvm.transform.module_pass(opt_level=0, name="effarch.ScheduleKernels")
    def _schedule(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        for gv, func in list(mod.functions_items()):
            if not isinstance(func, tirx.PrimFunc) or func.attrs.get("tirx.is_scheduled", False):
                continue
            scheduled, rule = schedule_kernel(func, target, m)
            best = tuned.schedule(gv.name_hint, func, rule) if tuned is not None else None
            if best is not None:
                scheduled, rule = best, "tuned"
            mod[gv] = scheduled
            if report is not None:
                report.rules[gv.name_hint] = rule
            logger.debug("kernel %s: %s", gv.name_hint, rule)
        return mod

    return _schedule


__all__ = ["RULES", "SYMBOLIC_RULES", "Machine", "ScheduleReport", "TunedLookup", "machine_of", "schedule_kernel",
           "schedule_pass"]
