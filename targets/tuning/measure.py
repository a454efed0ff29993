"""How tuning builds and times candidates: here (local processes) or on devices behind an RPC tracker.

Our own schedules are timed through the same builder and runner as MetaSchedule's candidates, so
"tuned beats ours" compares like with like.

Two TVM behaviours are worked around here:
- MetaSchedule registers the tensor intrinsics of every target on first use, and its builder does so
  again in every worker process it starts (one pool per batch): 88 s on this machine, 64 s of it
  CUDA's. CPU tuning needs only the x86 and Arm ones, so the others are not loaded
  (``load_cpu_intrinsics``) and the builder runs ``effarch.tuning.build``, which skips that import.
- Worker processes must lower ``exp``/``erf``/``tanh``/``sigmoid`` to our vector code as the build
  does, or a tuned GELU is timed with scalar libm calls; the worker initializer registers them.
"""

from __future__ import annotations

import logging
import sys
import types
from collections.abc import Iterator
from typing import Any

import tvm
from tvm.s_tir import meta_schedule as ms

from compiler.errors import EffarchError
from targets.remote import DeviceAddress, connect, parse_device

logger = logging.getLogger(__name__)

BUILD_FUNC = "effarch.tuning.build"
_NOT_CPU_INTRINSICS = ("cuda", "rocm", "hexagon", "riscv_cpu")


def load_cpu_intrinsics() -> None:
    """Register the x86 and Arm tensor intrinsics only (see the module note)."""
    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    for name in _NOT_CPU_INTRINSICS:
        sys.modules.setdefault(f"tvm.s_tir.tensor_intrin.{name}", types.ModuleType(name))
    import tvm.s_tir.tensor_intrin  # noqa: F401  (registers x86 and arm_cpu)


def _build(mod: tvm.IRModule, target: tvm.target.Target, _params: Any) -> tvm.runtime.Module:
    from tvm.driver import build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return build(mod, target=target)


def worker_init() -> None:
    """Runs in every builder process: our math lowering and the build function, nothing more."""
    from targets.schedules import mathfun  # noqa: F401  (vector exp/erf/tanh/sigmoid, as in the build)

    tvm.register_global_func(BUILD_FUNC, _build, override=True)


def runner_init() -> None:
    """Runs in every runner process: the AMX tile state that the artifact's loader asks Linux for
    (``X86Target.check_host``); without it a bf16 kernel's first tile instruction kills the process."""
    from targets.schedules.amx import enable_amx

    enable_amx()


def parse_rpc(url: str | None) -> DeviceAddress | None:
    """``tracker://HOST:PORT/KEY`` -> its DeviceAddress; None for local measuring."""
    if url is None:
        return None
    addr = parse_device(url)
    if addr.scheme != "tracker":
        raise EffarchError(f"tuning measures through a tracker; write --rpc tracker://HOST:PORT/KEY (got '{url}')")
    return addr


def check_tracker(tracker: DeviceAddress) -> None:
    """Fail at once, in one line, where the tracker is unreachable or has no device under the key
    (MetaSchedule's runner would wait for one forever)."""
    connect(tracker)


def _evaluator() -> ms.runner.EvaluatorConfig:
    # Medians of 5 repeats of >= 20 ms each: kernels here run 10 us - 5 ms.
    return ms.runner.EvaluatorConfig(number=1, repeat=5, min_repeat_ms=20, enable_cpu_cache_flush=False)


def make_builder(target: tvm.target.Target) -> ms.builder.Builder:
    # A CUDA candidate is compiled to device code in the builder (TVM's NVRTC/nvcc callback): give it time.
    return ms.builder.LocalBuilder(f_build=BUILD_FUNC, initializer=worker_init,
                                   timeout_sec=120 if target.kind.name == "cuda" else 60)


def measuring_device(target: tvm.target.Target) -> str:
    """Why candidates for ``target`` cannot be measured here ("" when they can): a CUDA target needs a
    GPU of exactly its architecture (a tuning record is only as good as the chip it was timed on)."""
    if target.kind.name != "cuda":
        return ""
    from targets.cuda import TARGET as CUDA

    try:
        device = CUDA.device()
        if not device.exist:
            return "no NVIDIA GPU is visible here"
        major, minor = device.compute_version.split(".")
    except (EffarchError, RuntimeError, OSError):
        return "no NVIDIA GPU or driver here"
    arch, here = str(target.attrs["arch"]), f"sm_{major}{minor}"
    return "" if here == arch else f"the GPU here is {here}, not {arch}"


def make_runner(tracker: DeviceAddress | None) -> ms.runner.Runner:
    from targets.runtime import use_every_core

    if tracker is None:
        use_every_core()  # runner processes inherit TVM_NUM_THREADS, as a run of the artifact does
        return ms.runner.LocalRunner(evaluator_config=_evaluator(), timeout_sec=60, initializer=runner_init)
    config = ms.runner.RPCConfig(tracker_host=tracker.host, tracker_port=tracker.port, tracker_key=tracker.key,
                                 session_timeout_sec=120)
    return ms.runner.RPCRunner(rpc_config=config, evaluator_config=_evaluator(), max_workers=1)


def time_functions(funcs: list[tvm.tirx.PrimFunc], target: tvm.target.Target, builder: ms.builder.Builder,
                   runner: ms.runner.Runner) -> list[float | None]:
    """Median milliseconds of each already-scheduled function, measured like a tuning candidate
    (None where it failed to build or run)."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    mods = [tvm.IRModule({"main": f.with_attr("global_symbol", "main")}) for f in funcs]
    built = builder.build([ms.builder.BuilderInput(m, target) for m in mods])
    device = "cuda" if target.kind.name == "cuda" else "cpu"
    inputs = [ms.runner.RunnerInput(b.artifact_path, device, ArgInfo.from_prim_func(m["main"]))
              for b, m in zip(built, mods, strict=True) if b.error_msg is None]
    results: Iterator[Any] = iter([f.result() for f in runner.run(inputs)] if inputs else [])
    out: list[float | None] = []
    for b, f in zip(built, funcs, strict=True):
        r = next(results) if b.error_msg is None else None
        ok = r is not None and r.error_msg is None and r.run_secs
        out.append(median_ms(r.run_secs) if ok and r is not None else None)
        if not ok:
            why = b.error_msg or (r.error_msg if r is not None else "") or "no time measured"
            logger.warning("could not time %s: %s", f.attrs.get("global_symbol", "a kernel") if f.attrs else "a kernel",
                           _last_line(why))
    return out


def _last_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "?"


def median_ms(run_secs: Any) -> float:
    """The median of MetaSchedule's measured seconds (FloatImm values), in milliseconds."""
    secs = sorted(float(getattr(s, "value", s)) for s in run_secs)
    return secs[len(secs) // 2] * 1e3
