"""Load an ``.effarch`` artifact and run it.

The shared library is unpacked once into a cache directory keyed by its sha256, so loading the
same model again (or from another process) reuses it. Weights become device tensors once, at
load; ``run`` only converts the inputs. Only ``tvm.runtime`` is used here, so TVM's runtime-only
package is enough to run an artifact.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from compiler.errors import EffarchError
from compiler.fileio import atomic_write
from targets.artifact import Artifact, TensorSpec, open_artifact, sha256_bytes
from targets.base import get_target

logger = logging.getLogger(__name__)

# TVM's check of a main-function argument: "ErrorContext(fn=main, loc=param[0], param=x,
# annotation=R.Tensor((2, 4), dtype="float32"))".
_PARAM_MISMATCH = re.compile(r"ErrorContext\(fn=main, loc=param\[\d+\], param=(\w+), "
                             r"annotation=(R\.Tensor\([^)]*\)[^)]*\))")


def default_cache_dir() -> Path:
    """``$EFFARCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/effarch``, else ``~/.cache/effarch``."""
    if os.environ.get("EFFARCH_CACHE_DIR"):
        return Path(os.environ["EFFARCH_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "effarch"


def _cached_library(art: Artifact, cache_dir: Path) -> Path:
    """The artifact's library in the cache, written there first if absent."""
    lib_dir = cache_dir / "lib"
    path = lib_dir / f"{art.library_sha256}{art.library_suffix}"
    # The artifact's own copy is hash-checked even when the cache has one: a damaged artifact is
    # reported as damaged, not run from an older good copy. Libraries are small.
    library = art.library_bytes()
    # Re-hash on reuse: a cache file damaged on disk is replaced, not loaded.
    if path.is_file() and sha256_bytes(path.read_bytes()) == art.library_sha256:
        logger.debug("reusing cached library %s", path)
        return path
    lib_dir.mkdir(parents=True, exist_ok=True)
    # Write then rename: another process loading the same model never sees half a library.
    with atomic_write(path, prefix=".lib.", suffix=art.library_suffix) as f:
        f.write(library)
    return path


def use_every_core() -> None:
    """Run TVM's kernels on every core this process may use.

    TVM's thread pool assumes two hardware threads per core on x86 and starts half as many
    workers as there are CPUs, so a 2-CPU machine ran every kernel on one. ``TVM_NUM_THREADS``,
    where the user set it, still decides."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ.setdefault("TVM_NUM_THREADS", str(cores))  # read when the pool starts: before any run


class LoadedArtifact:
    """A model ready to run: ``run(inputs)`` maps input names to arrays and returns named outputs."""

    def __init__(self, art: Artifact, cache_dir: Path) -> None:
        import tvm
        from tvm.runtime.vm import VirtualMachine

        self.path = art.path
        self.manifest = art.manifest
        self.input_specs: list[TensorSpec] = art.input_specs
        self.output_specs: list[TensorSpec] = art.output_specs
        name = self.manifest["target"].get("name")
        if not name:
            raise EffarchError(f"artifact '{self.path}' names no target in its manifest; it is damaged, rebuild it")
        self.target = get_target(name)
        self.target.check_host(self.manifest)
        self.device = self.target.device()
        use_every_core()
        module = tvm.runtime.load_module(str(_cached_library(art, cache_dir)))
        self._vm = VirtualMachine(module, self.device)
        self._main = self._vm["main"]
        self._params = [tvm.runtime.tensor(w, self.device) for w in art.weights()]

    # ---- checking -----------------------------------------------------------------------------
    def check_inputs(self, inputs: dict[str, np.ndarray]) -> None:
        check_inputs(self.input_specs, inputs)

    # ---- running ------------------------------------------------------------------------------
    def _to_device(self, inputs: dict[str, np.ndarray]) -> list[Any]:
        import tvm

        self.check_inputs(inputs)
        arrays = [np.asarray(inputs[s.name], order="C") for s in self.input_specs]  # keeps rank 0
        return [tvm.runtime.tensor(a, self.device) for a in arrays]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; outputs as numpy arrays keyed by output name, in the model's order."""
        results = self._call(*self._to_device(inputs), *self._params)
        return {s.name: r.numpy() for s, r in zip(self.output_specs, results, strict=True)}

    def time_run(self, inputs: dict[str, np.ndarray], warmup: int = 3, repeat: int = 10) -> list[float]:
        """Seconds per run for ``repeat`` runs after ``warmup``; inputs stay on the device throughout."""
        args = [*self._to_device(inputs), *self._params]
        for _ in range(warmup):
            self._call(*args)
        self.device.sync()
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            self._main(*args)
            self.device.sync()  # asynchronous devices (CUDA) must finish before the clock stops
            times.append(time.perf_counter() - t0)
        return times

    def _call(self, *args: Any) -> Any:
        """The model's main function. Inputs were checked against the manifest already, so a
        parameter the library itself refuses means the manifest and the library disagree."""
        try:
            return self._main(*args)
        except Exception as e:  # TVM raises RuntimeError/ValueError subclasses from C++
            match = _PARAM_MISMATCH.search(str(e))
            if match is None:
                raise
            raise EffarchError(f"artifact '{self.path}': its library takes '{match.group(1)}' as "
                               f"{match.group(2)}, not what its manifest says; the manifest was edited "
                               f"or the file is damaged, rebuild it") from None

    def __repr__(self) -> str:
        return f"LoadedArtifact({self.path}, target={self.target.name}, inputs={len(self.input_specs)})"


def check_inputs(specs: list[TensorSpec], inputs: dict[str, np.ndarray]) -> None:
    """One-line EffarchError for the first wrong input: missing, unexpected, dtype or shape."""
    expected = [s.name for s in specs]
    missing = [n for n in expected if n not in inputs]
    if missing:
        raise EffarchError(f"missing input(s) {', '.join(map(repr, missing))}; the model takes "
                           f"{', '.join(str(s) for s in specs)}")
    unexpected = [n for n in inputs if n not in expected]
    if unexpected:
        raise EffarchError(f"unexpected input(s) {', '.join(map(repr, unexpected))}; "
                           f"the model takes only {', '.join(map(repr, expected))}")
    symbols: dict[str, int] = {}
    for spec in specs:
        check_input(spec, inputs[spec.name], symbols)


def check_input(spec: TensorSpec, given: Any, symbols: dict[str, int]) -> None:
    if not isinstance(given, np.ndarray):
        raise EffarchError(f"input '{spec.name}' is a {type(given).__name__}; pass a numpy array of "
                           f"{spec.dtype}{list(spec.shape)}")
    if given.dtype != spec.numpy_dtype:
        raise EffarchError(f"input '{spec.name}' has dtype {given.dtype} but the model expects "
                           f"{spec.numpy_dtype} ({spec.dtype}); convert it with "
                           f".astype('{spec.numpy_dtype}')")
    bound = dict(symbols)  # symbolic sizes fixed by earlier inputs, for the message
    if not _shape_matches(spec.shape, given.shape, symbols):
        want = "(" + ", ".join("?" if d is None else str(d) for d in spec.shape) + ")"
        earlier = [f"{d}={bound[d]}" for d in spec.shape if isinstance(d, str) and d in bound]
        where = f" with {', '.join(earlier)} from earlier inputs" if earlier else ""
        raise EffarchError(f"input '{spec.name}' has shape {tuple(given.shape)} but the model expects "
                           f"{want}{where}; pass an array of that shape")


def _shape_matches(want: tuple[Any, ...], got: tuple[int, ...], symbols: dict[str, int]) -> bool:
    """Static dims must be equal; a symbolic dim must take the same size in every input."""
    if len(want) != len(got):
        return False
    for w, g in zip(want, got, strict=True):
        if isinstance(w, int) and w != g:
            return False
        if isinstance(w, str) and symbols.setdefault(w, g) != g:
            return False
    return True


def load_artifact(path: str | Path, *, cache_dir: Path | None = None) -> LoadedArtifact:
    """Open, validate and load an artifact, refusing one this machine cannot run."""
    art = open_artifact(path)
    try:
        return LoadedArtifact(art, cache_dir or default_cache_dir())
    finally:
        art.close()
