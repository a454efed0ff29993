"""Human-readable reports shared by the CLI commands and the demo: pass tables, graph statistics,
numeric checks and artifact manifests. Functions here return text; the CLI prints it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from compiler.driver import SourceModel
from compiler.ir import Graph
from compiler.ir.stats import graph_stats
from compiler.numerics.compare import OutputCheck, compare_outputs
from compiler.text import table


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _flops(f: int | None) -> str:
    if f is None:
        return "unknown"
    return f"{f / 1e9:.3f} GFLOP" if f >= 1e8 else f"{f / 1e6:.2f} MFLOP"


# ---- passes ---------------------------------------------------------------------------------------
def passes_table(records: Sequence[Any]) -> str:
    rows = []
    for i, r in enumerate(records, 1):
        round_ = "" if r.iteration is None else str(r.iteration)
        state = "skipped" if r.skipped else ("changed" if r.modified else "no change")
        rows.append([i, r.spec or r.name, round_, f"{r.seconds * 1e3:.1f}", state, len(r.notes)])
    total = sum(r.seconds for r in records)
    head = f"Passes ({len(records)} runs, {total * 1e3:.1f} ms)"
    return head + "\n" + table(["#", "pass", "round", "ms", "result", "notes"], rows, "rllrlr")


# ---- graph statistics -----------------------------------------------------------------------------
def inspect_graph(g: Graph) -> str:
    s = graph_stats(g)
    lines = [f"graph {g.name}: {s.summary()}"]
    lines += ["", "Inputs"] + [f"  {n}: {t}" for n, t in s.inputs]
    lines += ["", "Outputs"] + [f"  {n}: {t}" for n, t in s.outputs]
    rows = [[op, count, _flops(s.flops_by_op.get(op))] for op, count in
            sorted(s.ops.items(), key=lambda kv: (-kv[1], kv[0]))]
    lines += ["", table(["op", "count", "FLOPs"], rows)]
    if g.metadata:
        lines += ["", "Metadata"] + [f"  {k}: {v}" for k, v in sorted(g.metadata.items())]
    return "\n".join(lines)


def stats_comparison(before: Graph, after: Graph) -> str:
    a, b = graph_stats(before), graph_stats(after)
    rows: list[list[Any]] = [["nodes", a.nodes, b.nodes, _delta(a.nodes, b.nodes)],
            ["parameters", f"{a.parameters:,}", f"{b.parameters:,}", _delta(a.parameters, b.parameters)],
            ["constant bytes", _mb(a.constant_bytes), _mb(b.constant_bytes),
             _delta(a.constant_bytes, b.constant_bytes)],
            ["FLOPs", _flops(a.flops), _flops(b.flops), _delta(a.flops, b.flops)]]
    ops = sorted(set(a.ops) | set(b.ops))
    op_rows = [[f"  {op}", a.ops.get(op, 0), b.ops.get(op, 0), _delta(a.ops.get(op, 0), b.ops.get(op, 0))]
               for op in ops]
    return "Graph before -> after passes\n" + table(["", "before", "after", "change"], rows + op_rows)


def _delta(x: int | None, y: int | None) -> str:
    if x is None or y is None or x == y:
        return ""
    return f"{y - x:+,}"


# ---- numeric checks -------------------------------------------------------------------------------
def verify_artifact(source: SourceModel, artifact: Path, *, seed: int = 0,
                    inputs: dict[str, np.ndarray] | None = None) -> list[OutputCheck]:
    """Run the artifact and onnxruntime (the original model) on the same seeded inputs and compare.
    An artifact that computes in a lower precision (``--precision bf16``) is judged with that type's
    tolerance: its error against the fp32 model is what the table then reports."""
    from compiler.numerics.compare import precision_rtol
    from compiler.numerics.reference import random_inputs, run_onnxruntime
    from targets.runtime import load_artifact

    inputs = inputs if inputs is not None else random_inputs(source.graph, seed)
    reference = run_onnxruntime(source.reference_onnx, inputs)
    loaded = load_artifact(artifact)
    got = loaded.run(inputs)
    return compare_outputs(got, reference, precision_rtol(loaded.manifest.get("precision", "fp32")))


def verify_compressed(compressed: Graph, fp32: SourceModel, artifact: Path,
                      inputs: dict[str, np.ndarray]) -> tuple[list[OutputCheck], list[OutputCheck]]:
    """A compressed artifact against onnxruntime running the compressed graph (judged: the compile
    must not change what the passes decided), and the compression's own error against the fp32
    model (reported; ``--max-accuracy-drop`` is what bounds it), on the user's data."""
    from compiler.ir import ops
    from compiler.numerics.compare import QUANTIZED_RTOL
    from compiler.numerics.reference import run_onnxruntime
    from targets.runtime import load_artifact

    quantized = any(n.op in ops.QUANTIZATION for n in _all_nodes(compressed))
    got = load_artifact(artifact).run(inputs)
    same = compare_outputs(got, run_onnxruntime(compressed, inputs), QUANTIZED_RTOL if quantized else None)
    against_fp32 = compare_outputs(got, run_onnxruntime(fp32.reference_onnx, inputs))
    return same, against_fp32


def _all_nodes(g: Graph) -> list[Any]:
    return [m for n in g.nodes for m in ([n] if n.body is None else [n, *_all_nodes(n.body)])]


def checks_table(checks: Sequence[OutputCheck], against: str = "onnxruntime", *, judged: bool = True) -> str:
    """One row per output; ``judged=False`` reports the errors without a verdict or tolerance."""
    rows = [[c.name, c.dtype, f"{c.max_abs:.3g}", f"{c.max_rel:.3g}", f"{c.cosine:.7f}",
             f"{c.tolerance:.3g}" if judged else "-", ("ok" if c.ok else "MISMATCH") if judged else "-"]
            for c in checks]
    return (f"Check against {against}\n"
            + table(["output", "dtype", "max abs err", "max rel err", "cosine", "tolerance", "result"], rows,
                    "llrrrrl"))


def random_inputs_for_specs(specs: Sequence[Any], seed: int = 0,
                            shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
    """Seeded random inputs for an artifact's input specs (same rules as for a graph); ``shapes``
    gives the inputs with symbolic dims their size."""
    from compiler.ir import DType, TensorType
    from compiler.numerics.reference import random_inputs

    g = Graph()
    for spec in specs:
        g.add_input(spec.name, TensorType(DType.from_short(spec.dtype), tuple(spec.shape)))
    return random_inputs(g, seed, shapes)


# ---- artifacts --------------------------------------------------------------------------------------
def _graphs_note(m: dict[str, Any]) -> str:
    return "" if "cuda_graphs" not in m else f" (CUDA graphs {'on' if m['cuda_graphs'] else 'off'})"


def manifest_summary(m: dict[str, Any]) -> str:
    target = m.get("target", {})
    lines = [f"effarch artifact (format {m.get('format_version')})",
             f"  target:   {target.get('name')} cpu={target.get('cpu')} ({target.get('arch', '')})",
             f"  precision: {m.get('precision', 'fp32')}" + _graphs_note(m),
             f"  pipeline: {m.get('pipeline') or '(none)'}",
             f"  source:   {m.get('source', {}).get('spec', '')} sha256 {m.get('source_sha256', '')[:16]}",
             "  versions: " + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())]
    for role in ("inputs", "outputs"):
        lines.append(f"  {role}:")
        lines += [f"    {t['name']}: {t['dtype']}{t['shape']}" for t in m.get(role, [])]
    symbolic = m.get("symbolic_dims", {})
    if symbolic:
        lines.append("  symbolic dims (any size at run time, equal wherever a name occurs):")
        lines += [f"    {name}: {', '.join(where)}" for name, where in symbolic.items()]
    params = m.get("params", [])
    lines.append(f"  weights: {len(params)} tensors")
    rules = m.get("schedules", {})
    if rules:
        lines.append("  kernels by schedule rule: " + ", ".join(f"{r} {n}" for r, n in sorted(rules.items())))
    tuning = m.get("tuning")
    if tuning:
        lines.append(f"  tuning:   {tuning.get('db')} database: {tuning.get('applied', 0)} kernels tuned, "
                     f"{tuning.get('ours_faster', 0)} kept our faster schedule, "
                     f"{tuning.get('stale', 0)} tuned against an older rule of ours, "
                     f"{tuning.get('missing', 0)} without a record")
    return "\n".join(lines)
