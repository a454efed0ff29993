"""The fuzzer's checks: a random graph through every semantics-preserving pass, -O3, and x86.

For one ``FuzzCase`` (``fuzz_graphs``) the reference is onnxruntime running the generated ONNX model
with every graph optimisation off (``compiler.numerics.reference``). Then, each a *stage*:

- ``import``: the imported graph, exported back to ONNX and run by onnxruntime;
- ``pass:NAME``: each semantics-preserving pass alone on the imported graph, with honesty checks
  and the verifier on, the result run by onnxruntime again;
- ``O3``: the ``-O3`` pipeline plus what lowering requires, run by onnxruntime;
- ``x86``: ``compile_model`` at ``-O2`` (the code ``effarch compile`` runs: passes, lowering with
  effarch's schedules, LLVM build, artifact) and ``load_artifact(...).run``.

Outputs are compared by position with ``compiler.numerics.compare``'s per-dtype tolerances, and
their dtypes and shapes must match exactly. A stage that raises is a crash; a stage whose numbers
differ is a mismatch. Several graphs can share one x86 build (``check_x86`` merges them into one
model) because the build's fixed cost dominates; a crash in a shared build is retried per graph.
"""

from __future__ import annotations

import logging
import tempfile
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from compiler.debugging.fuzz_graphs import FuzzCase
from compiler.ir import Graph
from compiler.numerics.compare import compare_outputs

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]

# Passes that must not change any output: every registered pass without a declared tolerance,
# except prune-channels, which removes channels by design (it declares no tolerance because it
# reads the user's accuracy budget instead).
NOT_SEMANTICS_PRESERVING = frozenset({"prune-channels"})


@dataclass(frozen=True)
class Failure:
    seed: int
    stage: str
    kind: str  # "crash" or "mismatch"
    detail: str

    def line(self) -> str:
        return f"seed {self.seed}: {self.kind} in {self.stage}: {self.detail}"


def preserving_passes() -> list[str]:
    import passes  # noqa: F401  (registers every pass)
    from compiler.pass_manager import registered_passes

    return [name for name, cls in sorted(registered_passes().items())
            if cls.tolerance == 0 and name not in NOT_SEMANTICS_PRESERVING]


def reference(case: FuzzCase) -> Arrays:
    from compiler.numerics.reference import run_onnxruntime

    return run_onnxruntime(case.model, case.inputs)


def mismatch(got: Arrays, expected: Arrays) -> str | None:
    """Why ``got`` (by position) differs from ``expected``, or None when every output matches."""
    if len(got) != len(expected):
        return f"{len(got)} outputs, expected {len(expected)}"
    problems = []
    for (name, ref), value in zip(expected.items(), got.values(), strict=True):
        value = np.asarray(value)
        if value.dtype != ref.dtype or value.shape != ref.shape:
            problems.append(f"{name}: {value.dtype}{list(value.shape)} but expected {ref.dtype}{list(ref.shape)}")
            continue
        if value.dtype.kind == "f" and not _same_non_finite(value, ref):
            problems.append(f"{name}: NaN or infinity where the reference has none, or the other way round")
            continue
        finite = np.isfinite(ref) if ref.dtype.kind == "f" else np.ones(ref.shape, bool)
        check = compare_outputs({name: value[finite]}, {name: ref[finite]})[0]
        if not check.ok:
            problems.append(f"{name}: max abs {check.max_abs:.3g} > tolerance {check.tolerance:.3g}")
    return "; ".join(problems) or None


def _same_non_finite(got: np.ndarray, ref: np.ndarray) -> bool:
    """NaN where the reference has NaN, the same infinity where it has one: agreement, not error."""
    both_nan = np.isnan(got) == np.isnan(ref)
    inf = np.isinf(ref) | np.isinf(got)
    return bool(both_nan.all() and np.array_equal(got[inf], ref[inf]))


def check_passes(case: FuzzCase, expected: Arrays) -> tuple[Graph | None, list[Failure]]:
    """The imported graph (None if import failed) and the failures of the import, pass and O3 stages."""
    from compiler.frontends.onnx import import_onnx

    try:
        graph = import_onnx(case.model)
    except Exception as e:  # any exception is the finding
        return None, [_crash(case.seed, "import", e)]
    failures = _stage(case, expected, "import", lambda: graph)
    for name in preserving_passes():
        failures += _stage(case, expected, f"pass:{name}", lambda n=name: _run_pass(graph, n))  # type: ignore[misc]
    failures += _stage(case, expected, "O3", lambda: _run_o3(graph))
    return graph, failures


def _stage(case: FuzzCase, expected: Arrays, stage: str, make: Any) -> list[Failure]:
    from compiler.ir.verifier import verify
    from compiler.numerics.reference import run_onnxruntime

    try:
        graph = make()
        verify(graph)
        got = run_onnxruntime(graph, case.inputs)
    except Exception as e:  # any exception is the finding
        return [_crash(case.seed, stage, e)]
    problem = mismatch(got, expected)
    return [Failure(case.seed, stage, "mismatch", problem)] if problem else []


def _run_pass(graph: Graph, name: str) -> Graph:
    from compiler.pass_manager import PassContext, PassManager

    ctx = PassContext(opt_level=3, check_honesty=True)
    return PassManager(name, ctx).run(graph.clone()).graph


def _run_o3(graph: Graph) -> Graph:
    from compiler.driver import optimize, pipeline_for

    return optimize(graph, pipeline_for(3, None), opt_level=3)[0]


def _crash(seed: int, stage: str, e: BaseException) -> Failure:
    frames = traceback.extract_tb(e.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    text = str(e).strip().splitlines()
    return Failure(seed, stage, "crash", f"{type(e).__name__}{where}: {text[0] if text else ''}"[:400])


# ---- x86: several graphs per build -------------------------------------------------------------

def check_x86(cases: Sequence[FuzzCase], expected: Sequence[Arrays], workdir: Path) -> list[Failure]:
    """Build the cases as one x86 artifact, run it, compare each case's outputs with its reference."""
    if not cases:
        return []
    try:
        got = _build_and_run(merge_models([c.model for c in cases]), _merged_inputs(cases), workdir)
    except Exception as e:  # a shared build crashed: halve it until the graphs that crash are alone
        if len(cases) == 1:
            return [_crash(cases[0].seed, "x86", e)]
        half = len(cases) // 2
        return (check_x86(cases[:half], expected[:half], workdir)
                + check_x86(cases[half:], expected[half:], workdir))
    failures, values, start = [], list(got.values()), 0
    for case, ref in zip(cases, expected, strict=True):
        # by position: passes may rename outputs, never reorder them
        mine = {str(k): v for k, v in enumerate(values[start:start + len(ref)])}
        start += len(ref)
        problem = mismatch(mine, ref)
        if problem:
            failures.append(Failure(case.seed, "x86", "mismatch", problem))
    return failures


def _prefix(i: int) -> str:
    return f"g{i}_"


def merge_models(models: Sequence[onnx.ModelProto]) -> onnx.ModelProto:
    """Side-by-side union of independent models: every name gets the prefix ``g<i>_``."""
    if len(models) == 1:
        return models[0]
    parts = [onnx.compose.add_prefix(m, _prefix(i)) for i, m in enumerate(models)]
    graph = onnx.helper.make_graph(
        [n for p in parts for n in p.graph.node], "fuzz_batch",
        [v for p in parts for v in p.graph.input], [v for p in parts for v in p.graph.output],
        [t for p in parts for t in p.graph.initializer])
    merged = onnx.helper.make_model(graph, opset_imports=models[0].opset_import)
    merged.ir_version = models[0].ir_version
    return merged


def _merged_inputs(cases: Sequence[FuzzCase]) -> Arrays:
    if len(cases) == 1:
        return dict(cases[0].inputs)
    return {f"{_prefix(i)}{k}": v for i, c in enumerate(cases) for k, v in c.inputs.items()}


def _build_and_run(model: onnx.ModelProto, inputs: Arrays, workdir: Path) -> Arrays:
    from compiler.driver import SourceModel, compile_model
    from compiler.frontends.onnx import import_onnx
    from targets.runtime import load_artifact

    with tempfile.TemporaryDirectory(prefix="fuzz-", dir=workdir) as tmp:
        path = Path(tmp) / "fuzz.effarch"
        source = SourceModel(import_onnx(model), "onnx", model.graph.name, model)
        compile_model(source, path, target="x86", opt_level=2)
        return load_artifact(path, cache_dir=Path(tmp) / "cache").run(inputs)


def save_reproducer(case: FuzzCase, failures: Sequence[Failure], out_dir: Path) -> Path:
    """``out_dir/seed-N/``: the model, its inputs and what failed."""
    where = out_dir / f"seed-{case.seed}"
    where.mkdir(parents=True, exist_ok=True)
    onnx.save_model(case.model, str(where / "model.onnx"))
    np.savez(where / "inputs.npz", **case.inputs)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
    (where / "failures.txt").write_text("".join(f.line() + "\n" for f in failures))
    return where
