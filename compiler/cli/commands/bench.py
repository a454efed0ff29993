"""``effarch bench MODEL``: median latency of effarch against onnxruntime and PyTorch eager."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    from compiler.cli.common import add_model_args, add_target_args

    p = sub.add_parser("bench", help="median latency of effarch vs onnxruntime vs PyTorch eager")
    add_model_args(p)
    add_target_args(p)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tuning-db", metavar="DIR", help="also time the model compiled with this tuning database")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: also time the model compiled with --precision bf16 (x86 with AVX512-BF16 or AMX)")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from compiler.benchmark.model import bench_model
    from compiler.cli.common import load_source

    if args.precision != "fp32":
        from targets.base import get_target
        from targets.build import check_build_options

        check_build_options(get_target(args.target), args.cpu, args.precision, True)
    source = load_source(args)
    with tempfile.TemporaryDirectory() as tmp:
        print(bench_model(source, Path(tmp), target=args.target, cpu=args.cpu, opt_level=args.opt_level,
                          warmup=args.warmup, repeat=args.repeat, seed=args.seed,
                          tuning_db=Path(args.tuning_db) if args.tuning_db else None,
                          bf16=args.precision == "bf16"))
    return 0
