"""Where a model's time goes on this CPU: every kernel after fusion and scheduling, timed alone.

    python tools/profile_kernels.py resnet18 [--top 15] [--opt 2]
    python tools/profile_kernels.py light:squeezenet      # an unseen model (tools/bench_unseen.py)
    python tools/profile_kernels.py minilm --quantize int8-dynamic   # a scheme that needs no calibration
    python tools/profile_kernels.py resnet18 --precision bf16        # AVX512-BF16 CPUs
    python tools/profile_kernels.py minilm --cold                    # caches flushed before each call

Prints a markdown table (kernel, schedule rule, calls, ms per call, ms in total, share) with the
date, the machine and the command, ready for docs/performance.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
from pathlib import Path

from compiler.benchmark.onnx_light import light_model
from compiler.benchmark.runner import machine_description
from compiler.cli.compression_args import QUANTIZE, insert_before_fusion
from compiler.driver import load_model, optimize, pipeline_for


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="zoo name, .onnx, .pt2 or FILE.py:func")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--opt", type=int, default=2)
    parser.add_argument("--quantize", choices=("int8-dynamic", "int8-weights", "int4-weights"),
                        help="profile the model compressed so (passes inserted before fusion, as compile does)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--cold", action="store_true",
                        help="flush the caches before each call (weights from memory, as in the whole model)")
    args = parser.parse_args()
    os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))
    from targets.profile import kernel_times  # after the thread count is set

    spec = args.model if ":" in args.model or "." in args.model else f"zoo:{args.model}"
    if spec.startswith("light:"):  # the onnx package's model-zoo architectures, as bench_unseen runs them
        spec = str(light_model(spec[6:], Path(tempfile.mkdtemp()) / f"{spec[6:]}.onnx", opset=21))
    pipeline = pipeline_for(args.opt, None)
    if args.quantize:
        pipeline = insert_before_fusion(pipeline, QUANTIZE[args.quantize].format(group=32))
    graph, _ = optimize(load_model(spec).graph, pipeline)
    kernels = kernel_times(graph, opt_level=args.opt, precision=args.precision, cold=args.cold)
    total = sum(k.total_ms for k in kernels)
    print(f"Measured {datetime.date.today()} on {machine_description()} ({os.environ['TVM_NUM_THREADS']} threads) with "
          f"`python tools/profile_kernels.py {' '.join(sys.argv[1:])}`: {len(kernels)} kernels, "
          f"{total:.2f} ms in all (each kernel timed alone, median).\n")
    print("| kernel | output | rule | calls | ms / call | ms | share |\n|---|---|---|---|---|---|---|")
    for k in kernels[: args.top]:
        shape = "x".join(map(str, k.output))
        print(f"| {k.name} | {shape} | {k.rule} | {k.calls} | {k.ms:.3f} | {k.total_ms:.3f} "
              f"| {k.total_ms / total:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
