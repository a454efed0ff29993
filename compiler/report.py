"""Human-readable reports shared by the CLI commands and the demo: pass tables, graph statistics,
numeric checks, artifact manifests and benchmarks. Functions here return text; the CLI prints it."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from compiler.driver import SourceModel
from compiler.ir import Graph
from compiler.stats import graph_stats
from compiler.verify import OutputCheck, compare_outputs


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """A plain aligned text table; ``align`` has one 'l' or 'r' per column (default: first left)."""
    rows = [[str(c) for c in r] for r in rows]
    cols = [list(header)] + rows
    widths = [max(len(r[i]) for r in cols) for i in range(len(header))]
    align = align or "l" + "r" * (len(header) - 1)

    def fmt(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align, strict=True))

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]).rstrip()


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
    """Run the artifact and onnxruntime (the original model) on the same seeded inputs and compare."""
    from compiler.reference import random_inputs, run_onnxruntime
    from targets.runtime import load_artifact

    inputs = inputs if inputs is not None else random_inputs(source.graph, seed)
    reference = run_onnxruntime(source.reference_onnx, inputs)
    got = load_artifact(artifact).run(inputs)
    return compare_outputs(got, reference)


def checks_table(checks: Sequence[OutputCheck], against: str = "onnxruntime") -> str:
    rows = [[c.name, c.dtype, f"{c.max_abs:.3g}", f"{c.max_rel:.3g}", f"{c.cosine:.7f}", f"{c.tolerance:.3g}",
             "ok" if c.ok else "MISMATCH"] for c in checks]
    return (f"Check against {against}\n"
            + table(["output", "dtype", "max abs err", "max rel err", "cosine", "tolerance", "result"], rows,
                    "llrrrrl"))


def random_inputs_for_specs(specs: Sequence[Any], seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random inputs for an artifact's input specs (same rules as for a graph)."""
    from compiler.ir import DType, TensorType
    from compiler.reference import random_inputs

    g = Graph()
    for spec in specs:
        g.add_input(spec.name, TensorType(DType.from_short(spec.dtype), tuple(spec.shape)))
    return random_inputs(g, seed)


# ---- artifacts --------------------------------------------------------------------------------------
def manifest_summary(m: dict[str, Any]) -> str:
    target = m.get("target", {})
    lines = [f"effarch artifact (format {m.get('format_version')})",
             f"  target:   {target.get('name')} cpu={target.get('cpu')} ({target.get('arch', '')})",
             f"  pipeline: {m.get('pipeline') or '(none)'}",
             f"  source:   {m.get('source', {}).get('spec', '')} sha256 {m.get('source_sha256', '')[:16]}",
             "  versions: " + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())]
    for role in ("inputs", "outputs"):
        lines.append(f"  {role}:")
        lines += [f"    {t['name']}: {t['dtype']}{t['shape']}" for t in m.get(role, [])]
    params = m.get("params", [])
    lines.append(f"  weights: {len(params)} tensors")
    return "\n".join(lines)


# ---- benchmark ----------------------------------------------------------------------------------------
def bench_inputs(source: SourceModel, seed: int) -> dict[str, np.ndarray]:
    from compiler.reference import random_inputs

    if source.kind == "zoo":
        from compiler import zoo

        return zoo.get(source.spec.split(":", 1)[1]).sample_inputs(seed)
    return random_inputs(source.graph, seed)


def reference_onnx_path(source: SourceModel, folder: Path) -> Path:
    """The original model as a file, for the onnxruntime worker process."""
    import onnx

    if isinstance(source.reference_onnx, Path | str):
        return Path(source.reference_onnx)
    path = folder / "reference.onnx"
    onnx.save(source.reference_onnx, str(path))
    return path


def bench_model(source: SourceModel, folder: Path, *, target: str = "x86", cpu: str | None = None,
                opt_level: int = 2, warmup: int = 10, repeat: int = 50, seed: int = 0,
                artifact: Path | None = None) -> str:
    from compiler.bench import bench, format_bench
    from compiler.driver import compile_model

    if artifact is None:
        artifact = folder / "model.effarch"
        compile_model(source, artifact, target=target, cpu=cpu, opt_level=opt_level)
    inputs = bench_inputs(source, seed)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        onnx_path = reference_onnx_path(source, Path(tmp))
        result = bench(onnx_path, artifact, inputs, torch_spec=source.torch_spec, warmup=warmup, repeat=repeat)
    return format_bench(result) + _throughput(source, result)


def _throughput(source: SourceModel, result: Any) -> str:
    """The model's FLOPs over each runtime's median: how much of the machine each one uses."""
    from compiler.stats import graph_stats

    flops = graph_stats(source.graph).flops
    if not flops:
        return ""
    rates = [f"{row.runtime} {flops / row.median_ms / 1e6:.1f}" for row in result.rows if row.median_ms]
    return f"\nGFLOP/s ({flops / 1e9:.3f} GFLOP per run): " + ", ".join(rates) if rates else ""
