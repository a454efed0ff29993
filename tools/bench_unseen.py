"""Models effarch was never tuned on: the ONNX package's own model-zoo architectures against onnxruntime.

    python tools/bench_unseen.py [--models squeezenet,densenet121,inception_v2,vgg19] [--repeat 12] [--winograd]

The ``onnx`` package ships these architectures ("light" backend test models, opset 9) with their
weights as ConstantOfShape nodes. Each weight becomes a seeded random initializer (speed only:
the outputs mean nothing), the model is converted to opset 21 with onnx's version converter, then
effarch (-O2, x86, this CPU) and onnxruntime (all graph optimisations, same threads) are timed in
their own processes, alternating; ``--winograd`` adds a build with Winograd F(2x2,3x3) 3x3
convolutions to the same rounds. Prints a markdown table with date, machine and command.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from compiler.benchmark.onnx_light import light_model
from compiler.benchmark.runner import bench, machine_description
from compiler.driver import compile_model, load_model

MODELS = ("squeezenet", "densenet121", "inception_v2", "vgg19")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=12)
    parser.add_argument("--winograd", action="store_true", help="also time a build with Winograd 3x3 convolutions")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            print(f"benchmarking {name}", file=sys.stderr, flush=True)
            path = light_model(name, Path(tmp) / f"{name}.onnx", opset=21)
            source = load_model(str(path))
            artifact = Path(tmp) / f"{name}.effarch"
            compile_model(source, artifact, target="x86", opt_level=2)
            wino = Path(tmp) / f"{name}.winograd.effarch" if args.winograd else None
            if wino is not None:
                compile_model(source, wino, target="x86", opt_level=2, winograd=True)
            graph_inputs = onnx.load(str(path)).graph.input
            shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph_inputs}
            inputs = {n: np.random.default_rng(1).standard_normal(s).astype(np.float32) for n, s in shapes.items()}
            result = bench(path, artifact, inputs, torch_spec=None, warmup=args.warmup, repeat=args.repeat,
                           tuned_artifact=wino)  # timed in the tuned build's slot
            ours, ort = (result.row(r) for r in ("effarch", "onnxruntime"))
            if ours.median_ms is None or ort.median_ms is None:
                rows.append(f"| {name} | failed: {(ours.note or ort.note)[:200]} | | |" + " | |" * bool(wino))
                continue
            cells = ""
            if wino is not None:
                w = result.row("effarch-tuned").median_ms
                cells = " n/a | n/a |" if w is None else f" {w:.2f} | {w / ort.median_ms:.2f}x |"
            rows.append(f"| {name} | {ours.median_ms:.2f} | {ort.median_ms:.2f} | "
                        f"{ours.median_ms / ort.median_ms:.2f}x |{cells}")
            print(rows[-1], file=sys.stderr, flush=True)  # a long run's rows so far survive an interruption
    print(f"Measured {datetime.date.today()} on {machine_description()}, 2 threads per runtime, with "
          f"`python tools/bench_unseen.py {' '.join(sys.argv[1:])}` "
          f"(random weights, batch 1, medians in ms).\n")
    head = " effarch winograd | winograd / ORT |" if args.winograd else ""
    print(f"| model | effarch -O2 | onnxruntime | effarch / ORT |{head}\n" + "|---" * (4 + 2 * args.winograd) + "|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
