"""Where a model's time goes: each kernel built alone and timed on random data, with its rule.

TVM 0.27 has no per-op profiler for the Relax VM, so each PrimFunc of the scheduled module is
compiled on its own, called on random buffers of its parameter shapes, and timed with
``time_evaluator`` (median). The sum comes close to the model's latency; the gap is the VM's
own work (allocation, calls) and caches that a real run shares between kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import tirx

from compiler.ir.graph import Graph
from targets.base import get_target
from targets.build import lowering_options
from targets.lowering.to_relax import lower
from targets.schedules import ScheduleReport
from targets.schedules.pipeline import cpu_pipeline
from targets.tuning.kernels import call_counts


@dataclass(frozen=True)
class KernelTime:
    name: str
    rule: str
    calls: int
    ms: float  # median time of one call
    output: tuple[int, ...] = ()  # shape of the kernel's (last) output buffer

    @property
    def total_ms(self) -> float:
        return self.ms * self.calls


def scheduled_module(g: Graph, target: str = "x86", cpu: str | None = None, opt_level: int = 2,
                     precision: str = "fp32") -> tuple[tvm.IRModule, tvm.target.Target, ScheduleReport]:
    spec = get_target(target)
    tvm_target = spec.tvm_target(cpu)
    report = ScheduleReport()
    mod = lower(g, **lowering_options(spec, cpu, opt_level, precision=precision)).mod
    with tvm_target:
        legal = cpu_pipeline(tvm_target, schedule=opt_level >= 2, report=report, stop_after_schedules=True)(mod)
    return legal, tvm_target, report


def kernel_times(g: Graph, *, target: str = "x86", cpu: str | None = None, opt_level: int = 2,
                 repeat: int = 20, precision: str = "fp32", cold: bool = False) -> list[KernelTime]:
    """Every kernel's median time, slowest in total first; ``cold``: with the caches flushed before
    each call (weights come from memory, as in a whole model whose weights outgrow the caches)."""
    mod, tvm_target, report = scheduled_module(g, target, cpu, opt_level, precision)
    calls = call_counts(mod)
    out = []
    for gv, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc):
            ms = _time_kernel(func, tvm_target, repeat, cold)
            shape = tuple(int(d) for d in func.params[-1].shape)
            out.append(KernelTime(gv.name_hint, report.rules.get(gv.name_hint, "none"), calls.get(gv.name_hint, 1),
                                  ms, shape))
    return sorted(out, key=lambda k: -k.total_ms)


COLD_FLUSH_BYTES = 64 << 20  # more than this machine kind's L2 and its share of L3


def _time_kernel(func: tirx.PrimFunc, tvm_target: tvm.target.Target, repeat: int, cold: bool = False) -> float:
    from targets.schedules.amx import enable_amx

    enable_amx()  # AMX kernels (--precision bf16) need the tile state; harmless elsewhere
    lib = tvm.tirx.build(func.with_attr("global_symbol", "kernel"), target=tvm_target)
    rng = np.random.default_rng(0)
    dev = tvm.cpu()
    args = []
    for param in func.params:
        shape = [int(d) for d in param.shape]  # a buffer parameter carries its shape
        dtype = str(param.dtype)
        data = rng.standard_normal(shape).astype(dtype) if "float" in dtype else np.zeros(shape, dtype)
        args.append(tvm.runtime.tensor(data, dev))
    flush = COLD_FLUSH_BYTES if cold else 0
    timer = lib.time_evaluator("kernel", dev, number=1 if flush else 5, repeat=repeat, cache_flush_bytes=flush,
                               f_preproc="cache_flush_cpu_non_first_arg" if flush else "")
    return float(np.median(timer(*args).results)) * 1e3
