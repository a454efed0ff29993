"""One benchmark measurement in a process of its own: ``python -m compiler.benchmark.worker RUNTIME ...``.

It loads one runtime, times ``repeat`` runs after ``warmup`` and prints one JSON line on stdout:
``{"runtime": ..., "times_s": [...]}`` or ``{"runtime": ..., "error": "..."}``. Only one runtime is ever
loaded here because TVM's spinning worker threads slow down any other runtime in the same process.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from compiler.errors import EffarchError

ZOO_PREFIX = "zoo:"
Inputs = dict[str, np.ndarray]


def _load_inputs(path: Path) -> Inputs:
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}  # npz keeps the graph's input order


def _clock(fn: Callable[[], Any], warmup: int, repeat: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def time_effarch(model: str, inputs: Inputs, warmup: int, repeat: int, threads: int) -> list[float]:
    import os

    os.environ.setdefault("TVM_NUM_THREADS", str(threads))  # read when TVM's thread pool starts
    from targets.runtime import load_artifact

    return list(load_artifact(model).time_run(inputs, warmup=warmup, repeat=repeat))


def time_onnxruntime(model: str, inputs: Inputs, warmup: int, repeat: int, threads: int) -> list[float]:
    import onnxruntime as ort

    opts = ort.SessionOptions()  # default graph optimisation level: all of ORT's fusions
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    return _clock(lambda: session.run(None, inputs), warmup, repeat)


def load_torch(spec: str) -> tuple[Any, list[str] | None]:
    """(callable module, input names in call order or None for the .npz order) for a torch spec."""
    if spec.startswith(ZOO_PREFIX):
        from compiler import zoo

        entry = zoo.get(spec[len(ZOO_PREFIX):])
        return entry.build()[0], list(entry.input_names)
    if spec.endswith(".pt2"):
        import torch

        return torch.export.load(spec).module(), None
    if ".py:" in spec:
        from compiler.frontends.torch import load_builder

        return load_builder(spec)[0], None
    raise EffarchError(f"don't know how to run '{spec}' in PyTorch; give zoo:NAME, FILE.py:FUNCTION "
                       f"or a .pt2 file")


def time_pytorch(model: str, inputs: Inputs, warmup: int, repeat: int, threads: int) -> list[float]:
    import torch

    torch.set_num_threads(threads)
    module, order = load_torch(model)
    args = [torch.from_numpy(inputs[n]) for n in (order or list(inputs))]

    def run() -> None:
        with torch.inference_mode():
            module(*args)

    return _clock(run, warmup, repeat)


TIMERS: dict[str, Callable[[str, Inputs, int, int, int], list[float]]] = {
    "effarch": time_effarch,
    "effarch-tuned": time_effarch,  # an artifact compiled with --tuning-db
    "effarch-bf16": time_effarch,  # an artifact compiled with --precision bf16
    "onnxruntime": time_onnxruntime,
    "pytorch-eager": time_pytorch,
}


def measure(runtime: str, model: str, inputs_path: Path, warmup: int, repeat: int,
            threads: int) -> dict[str, Any]:
    try:
        times = TIMERS[runtime](model, _load_inputs(inputs_path), warmup, repeat, threads)
    except Exception as e:  # any failure of the runtime under test is a result to report, not a crash
        first_line = str(e).splitlines()[0] if str(e) else ""
        return {"runtime": runtime, "error": f"{type(e).__name__}: {first_line}"}
    return {"runtime": runtime, "times_s": times}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compiler.benchmark.worker",
                                     description="time one runtime and print the latencies as JSON")
    parser.add_argument("runtime", choices=sorted(TIMERS))
    parser.add_argument("model", help="artifact, .onnx file, or PyTorch spec (zoo:NAME, FILE.py:FUNC, .pt2)")
    parser.add_argument("inputs", type=Path, help=".npz of the inputs, in the graph's input order")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    result = measure(args.runtime, args.model, args.inputs, args.warmup, args.repeat, args.threads)
    # Libraries may have printed to stdout already; the result is always the last line.
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    return 0 if "times_s" in result else 1


if __name__ == "__main__":
    sys.exit(main())
