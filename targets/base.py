"""Compilation targets: what every target provides, and the registry that finds them.

Adding a target means adding one module ``targets/<name>.py`` that defines ``TARGET``, an instance
of a ``TargetSpec`` subclass whose ``name`` is ``<name>``; nothing else needs editing.

Target modules import TVM's compiler parts (``tvm.relax``, ``tvm.target``) inside the methods that
build, so loading and checking an artifact also works with TVM's runtime-only package.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compiler.errors import EffarchError

if TYPE_CHECKING:
    import numpy as np
    import tvm

    from compiler.ir.graph import Graph

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16")

# ``platform.machine()`` spells architectures differently per OS; these are the canonical names.
_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}


def host_arch() -> str:
    """This machine's architecture in canonical form (``x86_64``, ``aarch64``)."""
    machine = platform.machine().lower()
    return _ARCH_ALIASES.get(machine, machine)


class TargetSpec:
    """One kind of machine effarch can build for. Subclasses fill in the CPU and TVM details."""

    name: str = ""
    description: str = ""
    arch: str = ""  # canonical architecture the built code runs on, as ``host_arch()`` spells it
    library_suffix: str = ".so"
    channels_last = False  # lower convolutional networks NHWC from -O2 (lowering.channels_last)

    def channels_last_for(self, g: Graph, precision: str) -> bool:
        """Whether -O2 lowers ``g``'s convolutions channels-last at ``precision`` (``lowering.channels_last``)."""
        return self.channels_last

    def pack_width(self, cpu: str | None) -> int:
        """Output columns per packed weight panel (``lowering.packed``); 0: no packing."""
        return 0

    def int8_isa(self, cpu: str | None) -> str:
        """The integer dot-product family (``schedules.dot.int8_isa``) for integer kernels; "": none."""
        return ""

    def bf16_kernel(self, cpu: str | None) -> str:
        """The CPU's bf16 dot-product kernel (``schedules.dot.bf16_kernel``) for ``--precision bf16``;
        "": none (the GPU computes bf16 through ``prepare``)."""
        return ""

    # ---- CPUs ---------------------------------------------------------------------------------
    def known_cpus(self) -> list[str]:
        """CPU (or GPU arch) names accepted by ``resolve_cpu``."""
        raise NotImplementedError

    def default_cpu(self) -> str:
        raise NotImplementedError

    def notable_cpus(self) -> dict[str, str]:
        """CPUs worth naming in ``--target help`` (name -> one line); empty: the first known ones."""
        return {}

    def resolve_cpu(self, cpu: str | None) -> str:
        """``cpu`` validated, or the default; an unknown name lists the valid ones."""
        if cpu is None:
            return self.default_cpu()
        known = self.known_cpus()
        if cpu not in known:
            raise EffarchError(f"unknown {self.name} CPU '{cpu}'; pass one of: {', '.join(known)}")
        return cpu

    # ---- building -----------------------------------------------------------------------------
    def target_dict(self, cpu: str) -> dict[str, Any]:
        """The TVM target as a JSON-able dict (recorded in the manifest)."""
        raise NotImplementedError

    def required_features(self, cpu: str) -> list[str]:
        """ISA features the built code may use; the runtime refuses hosts that lack one."""
        return []

    def tvm_target(self, cpu: str | None = None) -> tvm.target.Target:
        from tvm.target import Target

        return Target(self.target_dict(self.resolve_cpu(cpu)))

    tunable = False  # ``effarch tune`` and ``--tuning-db`` serve this target

    def kernels_pipeline(self, tvm_target: tvm.target.Target) -> tvm.transform.Pass:
        """The build's -O2 pipeline up to its schedules (legalized, fused, nothing scheduled): the
        kernels ``effarch tune`` tunes, where the target is ``tunable``."""
        raise EffarchError(f"effarch tune does not serve --target {self.name}")

    def bundled_tuning(self, cpu: str) -> Path | None:
        """The tuning database shipped with effarch that every -O2 build for ``cpu`` applies, if any."""
        return None
    precisions: tuple[str, ...] = ("fp32",)  # ``--precision`` values this target builds
    graph_capture = False  # static-shape models can run as captured device graphs (CUDA graphs)

    def check_precision(self, precision: str, cpu: str) -> None:
        """Refuse a ``--precision`` this target (or this CPU) cannot build, in one line."""
        if precision not in PRECISIONS:
            raise EffarchError(f"unknown precision '{precision}'; pass --precision one of: {', '.join(PRECISIONS)}")
        if precision not in self.precisions:
            raise EffarchError(f"--precision {precision} is not supported on --target {self.name} (it builds "
                               f"{', '.join(self.precisions)}); drop the option or use --target cuda")

    def prepare(self, mod: tvm.IRModule, param_names: list[str], params: list[np.ndarray], *,
                precision: str = "fp32") -> tuple[tvm.IRModule, list[str], list[np.ndarray]]:
        """The lowered module and its weights as this target compiles and stores them (mixed precision,
        weights transformed at build time); the CPU targets take them as lowered."""
        return mod, param_names, params

    def pass_config(self, *, cuda_graphs: bool) -> dict[str, Any]:
        """TVM ``PassContext`` options for the compile."""
        return {}

    def relax_pipeline(self, tvm_target: tvm.target.Target, *, opt_level: int = 2,
                       report: Any = None, tuned: Any = None) -> tvm.transform.Pass:
        """The Relax-to-machine-code pipeline; ``report`` (a ``ScheduleReport``) learns which
        schedule rule took each kernel, where the target schedules kernels itself; ``tuned`` (a
        ``targets.tuning.TunedSchedules``) offers tuned kernels, where the target is ``tunable``."""
        from tvm import relax

        return relax.get_default_pipeline(tvm_target)

    def export(self, executable: Any, path: Path) -> Path:
        """Write the compiled executable as a shared library at ``path``."""
        executable.export_library(str(path))
        return path

    # ---- running ------------------------------------------------------------------------------
    def device(self) -> tvm.runtime.Device:
        import tvm

        return tvm.cpu(0)

    def check_host(self, manifest: dict[str, Any]) -> None:
        """Refuse an artifact this machine cannot run, with a one-line reason."""
        arch = manifest["target"].get("arch", self.arch)
        if arch != host_arch():
            raise EffarchError(f"this artifact was built for {arch} but this machine is {host_arch()}; "
                               f"rebuild it here or run it on a {arch} machine")

    def __repr__(self) -> str:
        return f"<target {self.name}: {self.description}>"


class LLVMTarget(TargetSpec):
    """A CPU reached through TVM's LLVM backend (x86, Arm): effarch's schedule library from -O2."""

    channels_last = True
    triple = ""  # LLVM target triple of the CPUs this target builds for

    def known_cpus(self) -> list[str]:
        from targets.llvm import llvm_cpus

        return list(llvm_cpus(self.triple))

    def pack_width(self, cpu: str | None) -> int:
        """Output columns per packed weight panel: two vectors, the register tile's usual width."""
        from targets.schedules.machine import machine_of

        return 2 * machine_of(self.tvm_target(cpu)).lanes()

    def int8_isa(self, cpu: str | None) -> str:
        from targets.schedules.dot import int8_isa
        from targets.schedules.machine import machine_of

        return int8_isa(machine_of(self.tvm_target(cpu)).features)

    def bf16_kernel(self, cpu: str | None) -> str:
        from targets.schedules.dot import bf16_kernel
        from targets.schedules.machine import machine_of

        kernel = bf16_kernel(machine_of(self.tvm_target(cpu)).features)
        return kernel.name if kernel is not None else ""

    tunable = True

    def check_precision(self, precision: str, cpu: str) -> None:
        """x86 bf16 needs AVX512-BF16 (``vdpbf16ps``); fp16: no fp16 arithmetic."""
        if self.name == "x86" and precision == "bf16":
            if not self.bf16_kernel(cpu):
                raise EffarchError(f"--precision bf16 on x86 needs AVX512-BF16, which CPU '{cpu}' lacks; build "
                                   f"with --cpu sapphirerapids (or another AVX512-BF16 CPU) or --precision fp32")
            return
        if self.name == "x86" and precision == "fp16":
            raise EffarchError("--precision fp16 is not supported on x86 (no fp16 arithmetic); use --precision "
                               "bf16 on an AVX512-BF16 CPU, fp32, or --target cuda")
        super().check_precision(precision, cpu)

    def relax_pipeline(self, tvm_target: tvm.target.Target, *, opt_level: int = 2,
                       report: Any = None, tuned: Any = None) -> tvm.transform.Pass:
        from targets.schedules.pipeline import cpu_pipeline

        return cpu_pipeline(tvm_target, schedule=opt_level >= 2, report=report, tuned=tuned)

    def kernels_pipeline(self, tvm_target: tvm.target.Target) -> tvm.transform.Pass:
        from targets.schedules.pipeline import cpu_pipeline

        return cpu_pipeline(tvm_target, schedule=False, stop_after_schedules=True)


def _candidate_modules() -> list[str]:
    # This file's folder, not ``targets.__path__``: a test package named ``targets`` can shadow it.
    here = str(Path(__file__).parent)
    return sorted(m.name for m in pkgutil.iter_modules([here]) if not m.name.startswith("_"))


def _spec_in(module_name: str) -> TargetSpec | None:
    """The ``TARGET`` a ``targets.<module_name>`` module defines, or None for helper modules."""
    try:
        module = importlib.import_module(f"targets.{module_name}")
    except ImportError as exc:  # a target whose optional dependencies are missing is not offered
        logger.debug("targets.%s not importable: %s", module_name, exc)
        return None
    spec = getattr(module, "TARGET", None)
    return spec if isinstance(spec, TargetSpec) and spec.name == module_name else None


def list_targets() -> list[TargetSpec]:
    """Every available target, sorted by name."""
    found = (_spec_in(m) for m in _candidate_modules())
    return [s for s in found if s is not None]


def get_target(name: str) -> TargetSpec:
    spec = _spec_in(name) if name in _candidate_modules() else None
    if spec is None:
        valid = ", ".join(s.name for s in list_targets())
        raise EffarchError(f"unknown target '{name}'; pass one of: {valid}")
    return spec
