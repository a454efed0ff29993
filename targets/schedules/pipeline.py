"""The Relax pipeline of the LLVM CPU targets: TVM's CPU pipeline with our schedules after fusion.

TVM's own CPU pipeline (``relax.backend.cpu_generic``) legalizes and fuses but schedules nothing:
every kernel stays one serial, scalar loop nest, 100-250x slower than onnxruntime. Ours inserts
``ScheduleKernels`` between fusion (LegalizeOps .. FuseTIR) and the lowering of dataflow.
"""

from __future__ import annotations

import tvm
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

from targets.schedules import ScheduleReport, TunedLookup, schedule_pass


def cpu_pipeline(target: tvm.target.Target, *, schedule: bool = True, report: ScheduleReport | None = None,
                 stop_after_schedules: bool = False, tuned: TunedLookup | None = None) -> tvm.transform.Pass:
    """The pipeline for ``target``; ``schedule=False`` gives TVM's unscheduled default (-O0/-O1).
    ``stop_after_schedules`` returns the module with its scheduled kernels, before VM lowering;
    ``tuned`` offers tuned schedules that beat our rules."""
    scheduling = [schedule_pass(target, report, tuned)] if schedule else []
    rest = [] if stop_after_schedules else (cpu_generic.dataflow_lower_passes(target)
                                            + cpu_generic.finalize_passes(target))

    @tvm.transform.module_pass(opt_level=0, name="effarch.CPUPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with target:
            passes = (cpu_generic.library_dispatch_passes(target) + cpu_generic.legalize_passes(target)
                      + scheduling + rest)
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline
