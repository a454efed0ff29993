"""``effarch compile MODEL -o FILE.effarch``: load, run the pass pipeline, lower and build one artifact.

Prints the per-pass impact table and the graph before and after; ``--verify`` compares the
artifact's outputs with onnxruntime and keeps no artifact that differs. ``--reproduce FILE``
replays a reproducer that ``effarch verify --bisect`` wrote instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    from compiler.cli.common import add_model_args, add_target_args
    from compiler.cli.compression_args import add_compression_args

    p = sub.add_parser("compile", help="compile a model into one .effarch artifact")
    add_model_args(p, optional=True)
    add_target_args(p)
    p.add_argument("-o", "--output", help="artifact file to write (.effarch)")
    p.add_argument("--pipeline", default=None, help="pass pipeline text (overrides -O), e.g. "
                                                    "'fold-constants,eliminate-dead-code'")
    p.add_argument("--verify", action="store_true", help="compare the binary's outputs with onnxruntime")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs for --verify")
    p.add_argument("--verify-each", action="store_true", help="run the IR verifier after every pass")
    p.add_argument("--save-stages", metavar="DIR", help="save every stage as numbered ONNX and IR text")
    p.add_argument("--print-changed", action="store_true",
                   help="print a diff of the IR after each pass that changed it")
    p.add_argument("--measure", action="store_true",
                   help="build and time the model after each pass that changed it (per-pass latency impact)")
    p.add_argument("--reproduce", metavar="FILE", help="replay a reproducer written by 'effarch verify --bisect'")
    p.add_argument("--tuning-db", metavar="DIR", help="use the kernels 'effarch tune --db DIR' found faster than "
                                                      "effarch's own schedules (-O2 and above)")
    p.add_argument("--no-bundled-tuning", dest="bundled_tuning", action="store_false",
                   help="leave out the tuning records shipped with effarch (CUDA sm_90: applied by default "
                        "where a kernel matches one and it measured faster)")
    p.add_argument("--winograd", action="store_true",
                   help="3x3 stride-1 convolutions by Winograd F(2x2,3x3) (x86/Arm, -O2; fewer multiplies, "
                        "error measured in docs/performance.md; recorded in the manifest)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                   help="arithmetic of the kernels: fp16/bf16 put matmuls and convolutions on tensor cores "
                        "(cuda; softmax, normalizations and reductions stay fp32); bf16 on x86 puts them on "
                        "AMX tiles or AVX512-BF16's vdpbf16ps with fp32 sums; inputs and outputs stay as the "
                        "model declares them (default: fp32)")
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                   help="cuda: launch kernels one by one instead of replaying a CUDA graph (on by default for "
                        "static-shape models)")
    add_compression_args(p)
    p.set_defaults(func=cmd_compile)


def cmd_compile(args: argparse.Namespace) -> int:
    from compiler.cli import report
    from compiler.cli.common import load_source, progress
    from compiler.cli.compression_args import compression_report, pipeline_with_compression
    from compiler.debugging.impact import impact_table
    from compiler.driver import compile_model
    from compiler.errors import EffarchError
    from compiler.fileio import check_output_path

    if args.reproduce:
        from compiler.debugging.reproducer import replay_and_report

        return replay_and_report(args.reproduce, print)
    if not args.model or not args.output:
        raise EffarchError("compile needs a model and -o FILE.effarch (or --reproduce FILE)")
    check_output_path(Path(args.output), "output")
    _check_build_options(args)
    source = load_source(args)
    out = Path(args.output)
    progress(f"compiling for {args.target} at -O{args.opt_level}")
    instruments = _instruments(args)
    pipeline, data = pipeline_with_compression(args, source.graph)
    result = compile_model(source, out, target=args.target, cpu=args.cpu, opt_level=args.opt_level,
                           pipeline=pipeline, instruments=instruments,
                           tuning_db=Path(args.tuning_db) if args.tuning_db else None, data=data,
                           precision=args.precision, cuda_graphs=args.cuda_graphs, winograd=args.winograd,
                           bundled_tuning=args.bundled_tuning)
    sys.stdout.write(compression_report(result.pass_records))
    print("Per-pass impact\n" + impact_table(instruments[0].rows))
    print(report.stats_comparison(result.graph_before, result.graph_after))
    if args.verify:
        checks = _verify(args, source, result, data, out)
        if not all(c.ok for c in checks):
            out.unlink(missing_ok=True)
            raise EffarchError("outputs differ from onnxruntime beyond tolerance (see above); the artifact was "
                               "not kept; try a lower -O level or --pipeline to find the pass")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0


def _check_build_options(args: argparse.Namespace) -> None:
    """Refuse a precision or --no-cuda-graphs the target cannot build before loading the model."""
    from targets.base import get_target
    from targets.build import check_build_options

    check_build_options(get_target(args.target), args.cpu, args.precision, args.cuda_graphs, args.winograd)


def _verify(args: argparse.Namespace, source: Any, result: Any, data: Any, out: Path) -> list:
    """The artifact's outputs against onnxruntime: the model as given, on seeded random inputs; or,
    for a compressed model (quantized, pruned: lossy on purpose), onnxruntime running the compressed
    graph, on the first batch of the user's data where there is some (random inputs fall outside
    calibrated ranges), with the compression's own error against the fp32 model reported beside it."""
    from compiler.cli import report
    from compiler.cli.common import progress
    from compiler.numerics.accuracy import batch_size
    from compiler.numerics.reference import random_inputs

    if not _compressed(result):
        lower = f" ({args.precision}: its error against the fp32 model, within {args.precision}'s tolerance)" \
            if args.precision != "fp32" else ""
        progress(f"verifying against onnxruntime on seeded random inputs{lower}")
        checks = report.verify_artifact(source, out, seed=args.seed)
        print(report.checks_table(checks))
        return checks
    dataset = data and (data.accuracy or data.calibration)
    if dataset is not None:
        progress(f"verifying against onnxruntime running the compressed graph, on the first batch of {dataset.source}")
        inputs, _ = next(dataset.batches(batch_size(source.graph)))
    else:
        progress("verifying against onnxruntime running the compressed graph, on seeded random inputs")
        inputs = random_inputs(source.graph, args.seed)
    checks, fp32 = report.verify_compressed(result.graph_after, source, out, inputs)
    print(report.checks_table(checks, "onnxruntime running the compressed graph"))
    print(report.checks_table(fp32, "the fp32 model (the compression's own error)", judged=False))
    return checks


def _compressed(result: Any) -> bool:
    from compiler.cli.compression_args import REPORTED_PASSES

    return any(r.modified and r.name.split("{")[0] in REPORTED_PASSES for r in result.pass_records)


def _instruments(args: argparse.Namespace) -> list:
    from compiler import pass_manager as pm
    from compiler.debugging.impact import ImpactInstrument, PrintChangedInstrument, TargetLatency

    measure = TargetLatency(target=args.target, cpu=args.cpu) if args.measure else None
    out: list = [ImpactInstrument(measure=measure)]
    if args.verify_each:
        out.append(pm.VerifyEachInstrument())
    if args.save_stages:
        out.append(pm.SaveStagesInstrument(Path(args.save_stages)))
    if args.print_changed:
        out.append(PrintChangedInstrument(lambda text: print(text, flush=True), color=sys.stdout.isatty(),
                                          quiet=True))
    return out
