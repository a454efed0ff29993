"""Benchmark every zoo model: effarch (x86) against onnxruntime and PyTorch eager, one markdown table.

    python tools/bench_zoo.py [--opt 2] [--warmup 30] [--repeat 60] [--models mlp,gpt]
                              [--tuning-db DIR | --winograd] [--bf16]

Each runtime is timed in its own worker process (compiler.benchmark.runner); rounds alternate between
them and the table shows medians after warm-up, with ratios from the same run. With ``--tuning-db``
(made by ``effarch tune``) each model is also compiled with it and timed in the same rounds (column
"effarch tuned"); with ``--winograd`` the second build takes Winograd F(2x2,3x3) for 3x3 stride-1
convolutions instead (column "effarch winograd"); ``--bf16`` adds, with either, a build that
computes its matmuls and convolutions in bf16 (``--precision bf16``; column "effarch bf16").
Prints the table with the date, the machine and the command, ready for docs/.
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
import tempfile
from pathlib import Path

from compiler import zoo
from compiler.benchmark.model import reference_onnx_path
from compiler.benchmark.runner import bench, machine_description
from compiler.driver import compile_model, load_model
from compiler.ir.stats import graph_stats


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def bench_one(name: str, opt: int, warmup: int, repeat: int, folder: Path, tuning_db: Path | None,
              winograd: bool = False, bf16: bool = False) -> str:
    source = load_model(f"zoo:{name}")
    artifact = folder / f"{name}.effarch"
    compile_model(source, artifact, target="x86", opt_level=opt)
    tuned = folder / f"{name}.tuned.effarch" if tuning_db or winograd else None
    if tuned is not None and winograd:  # the Winograd build is timed in the tuned build's slot
        compile_model(source, tuned, target="x86", opt_level=opt, winograd=True)
    elif tuned is not None:
        compile_model(source, tuned, target="x86", opt_level=opt, tuning_db=tuning_db)
    low = folder / f"{name}.bf16.effarch" if bf16 else None
    if low is not None:
        compile_model(source, low, target="x86", opt_level=opt, precision="bf16")
    result = bench(reference_onnx_path(source, folder), artifact, zoo.get(name).sample_inputs(0),
                   torch_spec=f"zoo:{name}", warmup=warmup, repeat=repeat, tuned_artifact=tuned, bf16_artifact=low)
    ours, ort, eager = (result.row(r).median_ms for r in ("effarch", "onnxruntime", "pytorch-eager"))
    flops = graph_stats(source.graph).flops
    gflops = "n/a" if ours is None or not flops else f"{flops / ours / 1e6:.1f}"
    extra = ""
    for path, row in ((tuned, "effarch-tuned"), (low, "effarch-bf16")):
        if path is not None:
            t = result.row(row).median_ms
            extra += f" {_ms(t)} | {_ratio(t, ort)} |"
    return (f"| {name} | {_ms(ours)} |{extra} {_ms(ort)} | {_ms(eager)} | {_ratio(ours, ort)} "
            f"| {_ratio(ours, eager)} | {gflops} |")


def _ratio(ours: float | None, other: float | None) -> str:
    return "n/a" if ours is None or other is None else f"{ours / other:.2f}x"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--opt", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=60)
    parser.add_argument("--models", default=",".join(zoo.names()))
    second = parser.add_mutually_exclusive_group()
    second.add_argument("--tuning-db", type=Path, help="also time each model compiled with this tuning database")
    second.add_argument("--winograd", action="store_true",
                        help="also time each model compiled with Winograd 3x3 convolutions (compile --winograd)")
    parser.add_argument("--bf16", action="store_true",
                        help="also time each model compiled with --precision bf16 (needs AVX512-BF16 or AMX)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            print(f"benchmarking {name}", file=sys.stderr, flush=True)
            rows.append(bench_one(name, args.opt, args.warmup, args.repeat, Path(tmp), args.tuning_db, args.winograd,
                                  args.bf16))
    today = datetime.date.today().isoformat()
    print(f"Measured {today} on {machine_description()}, 2 threads per runtime, "
          f"with\n`python tools/bench_zoo.py {' '.join(sys.argv[1:])}`. Median latency in ms after warm-up; "
          f"the ratio columns are effarch's time divided by the peer's (above 1: the peer is faster); "
          f"GFLOP/s is the model's FLOPs over effarch's time.\n")
    extra = (" effarch winograd | winograd / ORT |" if args.winograd
             else " effarch tuned | tuned / ORT |" if args.tuning_db else "")
    extra += " effarch bf16 | bf16 / ORT fp32 |" if args.bf16 else ""
    header = (f"| model | effarch -O{args.opt} |{extra} onnxruntime | PyTorch eager | effarch / ORT "
              f"| effarch / eager | effarch GFLOP/s |")
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    print("\n".join(rows))
    col = [c.strip() for c in header.split("|")].index("effarch / ORT")
    ratios = [float(r.split("|")[col].strip().rstrip("x")) for r in rows if "n/a" not in r.split("|")[col]]
    if ratios:
        print(f"\nGeometric mean of effarch / ORT: {math.exp(sum(map(math.log, ratios)) / len(ratios)):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
