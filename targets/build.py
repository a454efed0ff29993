"""Build an effarch graph into one ``.effarch`` artifact: lower, compile, export, pack.

Weights never enter the shared library: lowering makes them parameters of the Relax ``main``
function (after the graph inputs), and they travel in the artifact as safetensors. Embedding them
made a 42 MB encoder's library 232 MB and its compile six times slower (see the TVM notes).

Manifest keys: ``format_version``, ``model``, ``inputs``/``outputs``/``params`` (name, dtype, shape),
``target`` (name, tvm_target, cpu, features, arch), ``pipeline``, ``relax_pipeline``,
``source_sha256``, ``versions``, ``members``, ``precision`` (fp32, fp16, bf16: how the kernels
compute; inputs and outputs stay as the model declares them), ``cuda_graphs`` (CUDA only), plus
``manifest_extra``. No date and no timing: the same
model, pipeline and target give the same bytes (``BuildResult.timings`` has the timings).
A model compiled with symbolic dims also has ``symbolic_dims``: name -> where (``["x[0]", ...]``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

import compiler
from compiler.errors import EffarchError
from compiler.ir.graph import Graph
from compiler.ir.types import TensorType
from targets.artifact import FORMAT_VERSION, TensorSpec, write_artifact
from targets.base import TargetSpec, get_target
from targets.native_log import captured_native_logs

logger = logging.getLogger(__name__)

# Keys the build owns; manifest_extra may add keys but not replace these.
_RESERVED = frozenset({"format_version", "inputs", "outputs", "params", "target", "members", "versions",
                       "precision", "cuda_graphs"})


class LoweredModule(Protocol):
    """What ``targets.lowering.to_relax.Lowered`` provides."""

    mod: Any  # tvm.IRModule: main(inputs..., params...) -> Tuple(outputs)
    input_names: list[str]
    output_names: list[str]
    param_names: list[str]
    params: list[np.ndarray]


@dataclass(frozen=True)
class ModelInfo:
    """What the manifest says about the model itself, independent of how it was lowered."""

    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    source_sha256: str
    pipeline: str = ""


@dataclass
class BuildResult:
    path: Path
    manifest: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)  # seconds: lower, compile, export, pack
    schedules: dict[str, str] = field(default_factory=dict)  # kernel -> schedule rule (CPU targets)


def build_artifact(g: Graph, out_path: Path, *, target: str = "x86", cpu: str | None = None,
                   manifest_extra: dict[str, Any] | None = None, opt_level: int = 2,
                   tuning_db: Path | None = None, precision: str = "fp32", cuda_graphs: bool = True,
                   winograd: bool = False, bundled_tuning: bool = True) -> Path:
    """Compile ``g`` for ``target`` (host CPU unless ``cpu``) into the artifact at ``out_path``."""
    return build(g, out_path, target=target, cpu=cpu, manifest_extra=manifest_extra, opt_level=opt_level,
                 tuning_db=tuning_db, precision=precision, cuda_graphs=cuda_graphs, winograd=winograd,
                 bundled_tuning=bundled_tuning).path


def build(g: Graph, out_path: Path, *, target: str = "x86", cpu: str | None = None,
          manifest_extra: dict[str, Any] | None = None, opt_level: int = 2,
          tuning_db: Path | None = None, precision: str = "fp32", cuda_graphs: bool = True,
          winograd: bool = False, bundled_tuning: bool = True) -> BuildResult:
    """``build_artifact`` returning the manifest and per-step timings too.

    ``precision`` fp16/bf16 computes contractions in that type where the target builds it (CUDA: on
    tensor cores; ``targets.mixed_precision``); ``cuda_graphs`` False turns CUDA graphs off; ``winograd``
    computes 3x3 stride-1 convolutions by Winograd on the CPU targets from -O2 (manifest ``winograd``)."""
    from targets.lowering.to_relax import lower

    spec = get_target(target)  # fail on a bad target name before the slow steps
    check_build_options(spec, cpu, precision, cuda_graphs, winograd)
    t0 = time.perf_counter()
    logger.info("lowering %s (%d nodes) to Relax", g.name, len(g.nodes))
    with captured_native_logs():
        lowered = lower(g, **lowering_options(spec, cpu, opt_level, winograd=winograd,
                                              channels_last=spec.channels_last_for(g, precision),
                                              precision=precision))
    if winograd and opt_level >= 2:
        manifest_extra = {**(manifest_extra or {}), "winograd": True}
    lower_s = time.perf_counter() - t0
    result = build_lowered(lowered, model_info(g, lowered), out_path, target=spec, cpu=cpu,
                           manifest_extra=manifest_extra, opt_level=opt_level, tuning_db=tuning_db,
                           precision=precision, cuda_graphs=cuda_graphs, bundled_tuning=bundled_tuning)
    result.timings = {"lower": lower_s, **result.timings}
    return result


def check_build_options(spec: TargetSpec, cpu: str | None, precision: str, cuda_graphs: bool,
                        winograd: bool = False) -> None:
    """Refuse, before lowering, a precision the target or CPU cannot build, --no-cuda-graphs off CUDA and
    --winograd where convolutions are not lowered channels-last (CUDA)."""
    spec.check_precision(precision, spec.resolve_cpu(cpu))
    if not cuda_graphs and not spec.graph_capture:
        raise EffarchError(f"--no-cuda-graphs applies to --target cuda, not {spec.name}; drop the option")
    if winograd and not spec.channels_last:
        raise EffarchError(f"--winograd applies to the CPU targets (x86, arm), not {spec.name}; drop the option")


def lowering_options(spec: TargetSpec, cpu: str | None, opt_level: int, *, winograd: bool = False,
                     channels_last: bool | None = None, precision: str = "fp32") -> dict[str, Any]:
    """How ``targets.lowering.to_relax.lower`` lays the model out for ``spec``: from -O2 the CPU targets take
    convolutions channels-last (3x3 ones by Winograd if asked), pack weights for their register tiles and
    integer weights for their dot-product instructions; ``channels_last`` (the target's
    ``channels_last_for`` the model) overrides the target's default layout. ``precision`` bf16 on a CPU
    target lowers matmuls and convolutions for its bf16 dot-product kernel (``lowering.packed_bf16``)."""
    fast = opt_level >= 2
    layout = spec.channels_last if channels_last is None else channels_last
    return {"channels_last": layout and fast, "pack": spec.pack_width(cpu) if fast else 0,
            "int8": spec.int8_isa(cpu) if fast else "", "winograd": winograd and fast and spec.channels_last,
            "bf16": spec.bf16_kernel(cpu) if precision == "bf16" else "",
            # CUDA: attention-like groups as separate kernels, so each matmul gets tensor cores; a channels-last
            # network's first strided convolution over its 2x2 patches folded into channels.
            "split_multi_stage": spec.name == "cuda", "space_to_depth": spec.name == "cuda"}


def model_info(g: Graph, lowered: LoweredModule) -> ModelInfo:
    types = {v.name: v.type for v in g.inputs}
    inputs = [TensorSpec.of(n, _typed(types.get(n), n)) for n in lowered.input_names]
    pairs = zip(lowered.output_names, g.outputs, strict=True)
    outputs = [TensorSpec.of(n, _typed(v.type, n)) for n, v in pairs]
    pipeline = g.metadata.get("pipeline", "")
    return ModelInfo(g.name, inputs, outputs, g.metadata.get("source_sha256") or graph_sha256(g), pipeline)


def _typed(t: Any, name: str) -> Any:
    if t is None:
        raise EffarchError(f"value '{name}' has no type; run shape inference before building")
    return t


def graph_sha256(g: Graph) -> str:
    """sha256 of the graph's text form (used when the source file's hash is unknown)."""
    from compiler.ir.printer import print_graph

    return hashlib.sha256(print_graph(g).encode()).hexdigest()


def build_lowered(lowered: LoweredModule, info: ModelInfo, out_path: Path, *,
                  target: str | TargetSpec = "x86", cpu: str | None = None,
                  manifest_extra: dict[str, Any] | None = None, opt_level: int = 2,
                  tuning_db: Path | None = None, precision: str = "fp32", cuda_graphs: bool = True,
                  bundled_tuning: bool = True) -> BuildResult:
    """Compile an already-lowered module and pack it with its weights into ``out_path``.

    From ``opt_level`` 2 the CPU targets schedule every kernel with effarch's schedule library, or
    with its record in ``tuning_db`` where that measured faster (``targets.tuning``); without ``tuning_db``
    the database shipped for the target and CPU, if any, unless ``bundled_tuning`` is False. The target's
    ``prepare`` may rewrite the module and its weights first (precision, weights transformed once)."""
    from targets.schedules import ScheduleReport

    spec = get_target(target) if isinstance(target, str) else target
    out_path = _check_out_path(Path(out_path), manifest_extra)
    check_build_options(spec, cpu, precision, cuda_graphs)
    cpu = spec.resolve_cpu(cpu)
    tvm_target = spec.tvm_target(cpu)
    timings: dict[str, float] = {}
    report = ScheduleReport()
    tuned = _tuned_schedules(tuning_db, spec, cpu, tvm_target, opt_level, bundled_tuning)
    pipeline = spec.relax_pipeline(tvm_target, opt_level=opt_level, report=report, tuned=tuned)
    t0 = time.perf_counter()
    with captured_native_logs():
        mod, param_names, params = spec.prepare(lowered.mod, list(lowered.param_names), list(lowered.params),
                                                precision=precision)
    timings["prepare"] = time.perf_counter() - t0
    graphs = spec.graph_capture and cuda_graphs and _static(info)
    if spec.graph_capture and cuda_graphs and not graphs:
        logger.info("CUDA graphs off: the model has symbolic dims (%s); a graph replays fixed shapes",
                    ", ".join(symbolic_dims([*info.inputs, *info.outputs])))
    with tempfile.TemporaryDirectory(prefix="effarch-build-") as tmp:
        lib = _compile_and_export(spec, tvm_target, pipeline, mod, Path(tmp), timings,
                                  spec.pass_config(cuda_graphs=graphs))
        t0 = time.perf_counter()
        manifest = _manifest(info, param_names, params, spec, cpu, tvm_target, manifest_extra)
        manifest["precision"] = precision
        if spec.graph_capture:
            manifest["cuda_graphs"] = graphs
        manifest["relax_pipeline"] = "effarch-schedules" if report.rules else "default"
        if report.rules:
            manifest["schedules"] = report.counts()
            for kernel, rule in sorted(report.rules.items()):
                logger.info("kernel %-48s scheduled by %s", kernel, rule)
        if tuned is not None:
            manifest["tuning"] = {"db": "bundled" if tuned.bundled else str(tuning_db), **tuned.result.to_json()}
            _log_tuning(tuned, tuning_db)
        write_artifact(out_path, manifest, lib, dict(zip(param_names, params, strict=True)))
        timings["pack"] = time.perf_counter() - t0
    logger.info("wrote %s (%.2f MB)", out_path, out_path.stat().st_size / 1e6)
    return BuildResult(out_path, manifest, timings, dict(report.rules))


def _tuned_schedules(tuning_db: Path | None, spec: TargetSpec, cpu: str, tvm_target: Any, opt_level: int,
                     bundled_tuning: bool) -> Any:
    """The tuning database the build consults: ``tuning_db``, else the one shipped for this target and
    CPU/arch (``TargetSpec.bundled_tuning``) unless ``bundled_tuning`` is off; None for neither."""
    if tuning_db is None:
        bundled = spec.bundled_tuning(cpu) if bundled_tuning and opt_level >= 2 else None
        if bundled is None:
            return None
        from targets.tuning import TunedSchedules

        return TunedSchedules(bundled, tvm_target, spec.name, bundled=True)
    if not spec.tunable:
        raise EffarchError(f"--tuning-db serves --target x86, arm and cuda, not {spec.name}; drop the option")
    if opt_level < 2:
        raise EffarchError(f"--tuning-db needs -O2 or -O3 (tuned kernels replace -O2's schedules); "
                           f"got -O{opt_level}")
    from targets.tuning import TunedSchedules

    return TunedSchedules(Path(tuning_db), tvm_target, spec.name)


def _log_tuning(tuned: Any, db: Path | None) -> None:
    """Say what the database gave: TVM's own database application stays silent when nothing matches."""
    r = tuned.result
    logger.info("tuning database %s: %d kernels tuned, %d kept our faster schedule, %d without a record",
                db or tuned.db.root, len(r.applied), len(r.ours_faster), len(r.missing))
    if r.stale:
        logger.info("tuning database %s: %d records were timed against a rule that no longer schedules their "
                    "kernel, ours used (%s); 'effarch tune' times them again", db or tuned.db.root, len(r.stale),
                    ", ".join(r.stale[:5]) + (" ..." if len(r.stale) > 5 else ""))
    if not r.applied and not r.ours_faster and not r.stale and not tuned.bundled:
        held = ", ".join(tuned.db.targets_held()) or "none"
        logger.warning("tuning database %s holds no record for this model's kernels on this target (%s; it has "
                       "records for: %s); nothing was applied (tune it with 'effarch tune MODEL --db %s' for the "
                       "same target and CPU)", db, tuned.db.folder.name, held, db)


def _check_out_path(out_path: Path, extra: dict[str, Any] | None) -> Path:
    if not out_path.parent.is_dir():
        raise EffarchError(f"output directory '{out_path.parent}' does not exist; create it first")
    clash = sorted(_RESERVED & set(extra or {}))
    if clash:
        raise EffarchError(f"manifest_extra may not set {', '.join(clash)}: the build writes those keys")
    return out_path


def _static(info: ModelInfo) -> bool:
    return not symbolic_dims([*info.inputs, *info.outputs])


def _compile_and_export(spec: TargetSpec, tvm_target: Any, pipeline: Any, mod: Any, tmp: Path,
                        timings: dict[str, float], config: dict[str, Any] | None = None) -> Path:
    import tvm

    t0 = time.perf_counter()
    logger.info("compiling for %s (this can take a while for large models)", tvm_target)
    with captured_native_logs(), contextlib.ExitStack() as stack:
        if config:  # else whatever context the caller set (tuning's) stays in force
            stack.enter_context(tvm.transform.PassContext(config=config))
        executable = tvm.compile(mod, target=tvm_target, relax_pipeline=pipeline)
    t1 = time.perf_counter()
    logger.info("compiled in %.1f s; exporting the shared library", t1 - t0)
    lib = spec.export(executable, tmp / f"model{spec.library_suffix}")
    timings.update(compile=t1 - t0, export=time.perf_counter() - t1)
    return lib


def _manifest(info: ModelInfo, param_names: list[str], param_arrays: list[np.ndarray], spec: TargetSpec, cpu: str,
              tvm_target: Any, extra: dict[str, Any] | None) -> dict[str, Any]:
    pairs = zip(param_names, param_arrays, strict=True)
    params = [TensorSpec.of(n, TensorType.of(a)) for n, a in pairs]
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "model": info.name,
        "inputs": [s.to_json() for s in info.inputs],
        "outputs": [s.to_json() for s in info.outputs],
        "params": [s.to_json() for s in params],
        "target": {"name": spec.name, "tvm_target": _target_json(tvm_target), "cpu": cpu,
                   "features": spec.required_features(cpu), "arch": spec.arch},
        "pipeline": info.pipeline,
        "relax_pipeline": "default",
        "source_sha256": info.source_sha256,
        "versions": _versions(),
    }
    symbolic = symbolic_dims([*info.inputs, *info.outputs])
    if symbolic:
        manifest["symbolic_dims"] = symbolic
    manifest.update(extra or {})
    return manifest


def symbolic_dims(specs: list[TensorSpec]) -> dict[str, list[str]]:
    """Each symbolic dim's name -> where it occurs (``x[0]``): the sizes the model takes at run time,
    equal wherever one name occurs."""
    where: dict[str, list[str]] = {}
    for spec in specs:
        for axis, d in enumerate(spec.shape):
            if isinstance(d, str):
                where.setdefault(d, []).append(f"{spec.name}[{axis}]")
    return where


def _target_json(tvm_target: Any) -> dict[str, Any]:
    """The TVM target as plain JSON (its export() holds TVM containers)."""
    import json

    return dict(json.loads(str(tvm_target)))


def _versions() -> dict[str, str]:
    import tvm
    import tvm_ffi

    return {"effarch": compiler.__version__, "tvm": tvm.__version__, "tvm_ffi": tvm_ffi.__version__,
            "numpy": np.__version__, "python": platform.python_version()}
