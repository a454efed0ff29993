"""GPU schedule rules applied one kernel at a time, each failure contained to its kernel.

dlight's ``ApplyDefaultSchedule`` offers a kernel to its rules in order and lets any exception end
the whole build: one rule tripping over one kernel (the Transpose rule raised "Cannot use and / or /
not operator to Expr" inside a large encoder) stopped a model that every other rule could schedule.
Here a rule that raises on a kernel is logged (``effarch compile -v``) and the kernel goes to the
next rule, down to dlight's ``Fallback``; which rule took each kernel goes to the ``ScheduleReport``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import tvm
from tvm import s_tir, tirx

from compiler.errors import EffarchError

logger = logging.getLogger(__name__)

NamedRule = tuple[str, Any]  # (name, a dlight ScheduleRule)
KERNEL_ATTR = "effarch.kernel"  # on a PrimFunc built already scheduled: its name in the ScheduleReport


def schedule_kernel(kernel: str, func: tirx.PrimFunc, target: tvm.target.Target,
                    rules: Sequence[NamedRule]) -> tuple[tirx.PrimFunc, str]:
    """``func`` scheduled by the first rule that takes it without raising, and that rule's name."""
    for name, rule in rules:
        try:
            space = rule.apply(func, target, False)
        except Exception as exc:  # noqa: BLE001  (a rule's bug is any exception; the next rule decides)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
            logger.info("cuda: rule %s raised on kernel %s (%s); trying the next rule", name, kernel, first)
            continue
        if space is None:
            continue
        sch = space[0] if isinstance(space, list) else space
        if not isinstance(sch, s_tir.Schedule):
            continue
        return sch.mod["main"].with_attr("tirx.is_scheduled", True), name
    raise EffarchError(f"no GPU schedule rule could schedule kernel '{kernel}' (every rule declined or raised; "
                       f"effarch compile -v lists why); compile this model for x86 or report the kernel")


def apply_rules(rules: Sequence[NamedRule], report: Any = None, tuned: Any = None) -> tvm.transform.Pass:
    """The module pass: every unscheduled PrimFunc through ``schedule_kernel``, rules recorded in
    ``report.rules`` (kernel -> rule name) when a report is given. ``tuned`` (a
    ``targets.tuning.TunedSchedules``) is asked next: a kernel its database tuned faster than the rule
    that took it takes the tuned schedule (rule ``tuned``)."""

    @tvm.transform.module_pass(opt_level=0, name="effarch.GpuScheduleRules")
    def _apply(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        target = tvm.target.Target.current(allow_none=False)
        for gv, func in list(mod.functions_items()):
            if not isinstance(func, tirx.PrimFunc):
                continue
            if func.attrs.get("tirx.is_scheduled", False):  # a kernel written scheduled says what made it
                if report is not None and KERNEL_ATTR in func.attrs:
                    report.rules[gv.name_hint] = str(func.attrs[KERNEL_ATTR])
                continue
            mod[gv], rule = schedule_kernel(gv.name_hint, func, func.attrs.get("target", target), rules)
            scheduled = tuned.schedule(gv.name_hint, func, rule) if tuned is not None else None
            if scheduled is not None:
                mod[gv], rule = scheduled, "tuned"
            if report is not None:
                report.rules[gv.name_hint] = rule
        return mod

    return _apply


def fused_kernel(mod: tvm.IRModule) -> tirx.PrimFunc:
    """The one TIR kernel a single-op Relax module becomes after legalization and fusion, as the CUDA
    pipeline makes it (used to build single kernels for tests and the GPU check tools)."""
    from tvm import relax

    passes = [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FuseOps(),
              relax.transform.FuseTIR(), relax.transform.DeadCodeElimination()]
    fused = tvm.transform.Sequential(passes)(mod)
    (func,) = [f for _, f in fused.functions_items() if isinstance(f, tirx.PrimFunc)]
    return func
