"""``effarch demo``: the whole path on a bundled model, with a report a person can read.

Load a zoo model (exported from PyTorch to ONNX and imported), run the -O2 pipeline, build an x86
artifact for this CPU, check it against onnxruntime and PyTorch, score the digits model on real
held-out data, and time it against onnxruntime and PyTorch eager.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MODEL = "digits_cnn"

STEPS = 6


class _Steps:
    """Numbered progress lines on stderr; the report itself goes to stdout."""

    def __init__(self) -> None:
        self.n = 0
        self.t0 = time.perf_counter()

    def __call__(self, what: str) -> None:
        self.n += 1
        elapsed = time.perf_counter() - self.t0
        print(f"[{self.n}/{STEPS} {elapsed:6.1f}s] {what}", file=sys.stderr, flush=True)


def _section(title: str, body: str) -> None:
    print(f"\n== {title} ==\n{body}", flush=True)


def _torch_outputs(entry: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import torch

    module, _ = entry.build()
    with torch.no_grad():
        out = module(*(torch.from_numpy(inputs[n]) for n in entry.input_names))
    outs = out if isinstance(out, tuple | list) else (out,)
    return {n: o.numpy() for n, o in zip(entry.output_names, outs, strict=True)}


def _accuracy_section(model: str, predict: Callable[[np.ndarray], np.ndarray], entry: Any) -> str | None:
    if model != "digits_cnn":
        return None
    import torch

    from compiler.zoo import digits_cnn

    module, _ = entry.build()
    with torch.no_grad():
        torch_acc = digits_cnn.test_accuracy(lambda x: module(torch.from_numpy(x)).numpy())
    ours = digits_cnn.test_accuracy(predict)
    n = len(digits_cnn.test_split()[1])
    return (f"scikit-learn digits, held-out split of {n} real images:\n"
            f"  effarch binary {ours:.4f}   PyTorch {torch_acc:.4f}")


def run_demo(model: str, out_dir: Path, *, warmup: int = 10, repeat: int = 50) -> int:
    from compiler import zoo
    from compiler.benchmark.model import bench_model_result
    from compiler.cli import report
    from compiler.driver import compile_model, load_model
    from compiler.numerics.compare import compare_outputs
    from compiler.numerics.reference import run_onnxruntime
    from compiler.pass_manager import TimingInstrument
    from targets.runtime import load_artifact

    step = _Steps()
    entry = zoo.get(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    artifact = out_dir / f"{model}.effarch"

    step(f"exporting {model} from PyTorch to ONNX and importing it ({entry.description})")
    source = load_model(f"zoo:{model}")
    _section("Model", report.inspect_graph(source.graph))

    step("running the -O2 pass pipeline and building for this CPU (TVM)")
    result = compile_model(source, artifact, target="x86", opt_level=2, instruments=[TimingInstrument()])
    _section("Passes", report.passes_table(result.pass_records))
    _section("Graph", report.stats_comparison(result.graph_before, result.graph_after))
    loaded = load_artifact(artifact)
    target = loaded.manifest.get("target", {})
    _section("Artifact", f"{artifact} ({artifact.stat().st_size / 1e6:.2f} MB), target {target.get('name')} "
                         f"cpu {target.get('cpu')}; passes {result.timings['passes']:.2f} s, "
                         f"build {result.timings['build']:.2f} s")

    step("checking the binary against onnxruntime and PyTorch on the same inputs")
    inputs = entry.sample_inputs(0)
    got = loaded.run(inputs)
    checks = compare_outputs(got, run_onnxruntime(source.reference_onnx, inputs))
    torch_checks = compare_outputs(got, _torch_outputs(entry, inputs))
    _section("Correctness", report.checks_table(checks) + "\n\n" + report.checks_table(torch_checks, "PyTorch"))

    step("scoring on real data")
    name = entry.output_names[0]
    accuracy = _accuracy_section(model, lambda x: loaded.run({entry.input_names[0]: x})[name], entry)
    if accuracy:
        _section("Accuracy", accuracy)

    step(f"timing effarch, onnxruntime and PyTorch eager ({warmup} warm-up, {repeat} timed runs each)")
    latency, timed = bench_model_result(source, out_dir, warmup=warmup, repeat=repeat, artifact=artifact)
    _section("Latency", latency)
    step("done")
    timing_ok = timed.row("effarch").ok  # a binary that cannot be timed is a failed demo, not a blank row
    if not timing_ok:
        print(f"effarch could not be timed: {timed.row('effarch').note}", file=sys.stderr)
    ok = all(c.ok for c in checks + torch_checks) and timing_ok
    print(f"\nDemo {'passed' if ok else 'FAILED'}: artifact at {artifact}")
    return 0 if ok else 1


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="compile the bundled default model for this CPU, run it, report")
    p.add_argument("--model", default=DEFAULT_MODEL, help="zoo model to use")
    p.add_argument("--out", default="out/demo", help="folder for the artifact and stages")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeat", type=int, default=50)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(args.model, Path(args.out), warmup=args.warmup, repeat=args.repeat)
