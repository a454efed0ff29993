"""Compression flags of ``effarch compile`` and ``effarch quantize``: the data they share
(``--calibration``, ``--accuracy-data``, ``--max-accuracy-drop``), the quantization options
(``--calibration-method``, ``--group-size``) and each technique's own flags (``--prune``,
``--prune-flops``, ``--quantize``). The commands call the public functions here; everything else
stays in this module.

A compression pass goes after the -O2 folding (BatchNorm already in the convs) and before
``fuse-operators``, so it sees plain layers and fusion groups what is left.
"""

from __future__ import annotations

import argparse
from typing import Any

from compiler.errors import EffarchError
from compiler.ir import Graph

FUSION_PASS = "fuse-operators"
REPORTED_PASSES = ("prune-channels", "quantize-static", "quantize-dynamic", "quantize-weights", "quantize-embedding",
                   "integer-ops")
# A scheme -> the passes it runs (after pruning). compile turns static int8 into integer ops at
# once (INTEGER_OPS); `effarch quantize` stops at the QDQ form that other runtimes read.
QUANTIZE = {
    "int8": "quantize-static{{method={method}}},quantize-embedding",  # + int8 rows of embedding tables
    "int8-dynamic": "quantize-dynamic,quantize-embedding",
    "int8-weights": "quantize-weights{{bits=8}}",
    "int4-weights": "quantize-weights{{bits=4,group={group}}}",
}
INTEGER_OPS = {"int8": "integer-ops"}
SCHEME_HELP = ("int8 (static, calibrated: needs --calibration), int8-dynamic (MatMul/Gemm, run-time "
               "activation scales), int8-weights or int4-weights (weight-only MatMul/Gemm)")


def add_compression_args(p: argparse.ArgumentParser) -> None:
    g = add_data_args(p)
    g.add_argument("--quantize", choices=sorted(QUANTIZE), metavar="SCHEME", help=SCHEME_HELP)
    add_quantize_options(g)
    g.add_argument("--prune", type=float, metavar="RATIO",
                   help="structured pruning: remove this fraction of channels (per layer, or chosen per layer "
                        "by sensitivity with --accuracy-data and --max-accuracy-drop)")
    g.add_argument("--prune-flops", type=float, metavar="FRACTION",
                   help="structured pruning to a target: remove this fraction of the model's FLOPs")
    g.add_argument("--prune-importance", choices=("l1", "l2"), default="l1",
                   help="channel importance: the L1 or L2 norm of its weights (default l1)")


def add_data_args(p: argparse.ArgumentParser) -> Any:
    """The data flags every compression shares; returns their argument group for more flags."""
    g = p.add_argument_group("compression")
    g.add_argument("--calibration", metavar="DATA",
                   help="calibration samples (.npz, a folder of them, or FILE.py:FUNCTION), e.g. for "
                        "re-estimating channel statistics after --prune")
    g.add_argument("--accuracy-data", metavar="DATA",
                   help="test samples (with 'labels' for top-1; else cosine to the fp32 model) that "
                        "--max-accuracy-drop is measured on")
    g.add_argument("--max-accuracy-drop", type=float, metavar="POINTS",
                   help="the most a compression may cost, in points of top-1 (or cosine) on --accuracy-data")
    return g


def add_quantize_options(g: Any) -> None:
    g.add_argument("--calibration-method", choices=("minmax", "percentile", "entropy"), default="minmax",
                   help="how static int8 picks activation ranges from --calibration (default minmax)")
    g.add_argument("--group-size", type=int, default=32, metavar="N",
                   help="weights per scale along K for int4-weights (default 32)")


def compression_from_args(args: argparse.Namespace, graph: Graph) -> tuple[str, Any]:
    """(pass-pipeline text to insert before fusion, a CompressionData or None)."""
    passes = _prune_passes(args) + _quantize_passes(args)
    if (args.accuracy_data or args.max_accuracy_drop is not None or args.calibration) and not passes:
        raise EffarchError("--calibration, --accuracy-data and --max-accuracy-drop need a compression "
                           "flag such as --quantize, --prune or --prune-flops")
    return ",".join(passes), compression_data(args, graph)


def pipeline_with_compression(args: argparse.Namespace, graph: Graph) -> tuple[str | None, Any]:
    """The compile pipeline (``--pipeline`` or -O's) with the compression passes inserted, and the data."""
    from compiler.driver import pipeline_for

    extra, data = compression_from_args(args, graph)
    return (insert_before_fusion(pipeline_for(args.opt_level, args.pipeline), extra) if extra
            else args.pipeline), data


def unfused_pipeline(extra: str, opt_level: int = 2) -> str:
    """-O``opt_level``'s cleanup and folding, ``extra``, then a dead-code sweep: no fusion, so the
    result is plain ONNX ops (what ``effarch quantize`` writes)."""
    from compiler.driver import pipeline_for

    parts = pipeline_for(opt_level, None).split(",")
    at = parts.index(FUSION_PASS) if FUSION_PASS in parts else len(parts)
    return ",".join([*parts[:at], *([extra] if extra else []), "eliminate-dead-code"])


def insert_before_fusion(pipeline: str, extra: str) -> str:
    """``pipeline`` with ``extra`` just before fuse-operators (at the end when there is none)."""
    if not extra:
        return pipeline
    parts = pipeline.split(",") if pipeline else []
    at = parts.index(FUSION_PASS) if FUSION_PASS in parts else len(parts)
    return ",".join([*parts[:at], extra, *parts[at:]])


def compression_report(records: list[Any]) -> str:
    """What the compression passes did, one line per note (fired first), for the compile report."""
    lines = []
    for record in records:
        if record.name.split("{")[0] in REPORTED_PASSES:
            lines += [f"  {n}" for n in sorted(record.notes, key=lambda n: not n.fired)]
    return "Compression\n" + "\n".join(lines) + "\n" if lines else ""


def _prune_passes(args: argparse.Namespace) -> list[str]:
    if args.prune is None and args.prune_flops is None:
        return []
    if args.prune is not None and args.prune_flops is not None:
        raise EffarchError("give --prune RATIO or --prune-flops FRACTION, not both")
    value = args.prune if args.prune is not None else args.prune_flops
    if not 0.0 < value < 1.0:
        raise EffarchError(f"--prune/--prune-flops takes a fraction between 0 and 1, got {value}")
    key = "ratio" if args.prune is not None else "flops"
    return [f"prune-channels{{{key}={value},importance={args.prune_importance}}}"]


def _quantize_passes(args: argparse.Namespace) -> list[str]:
    scheme = getattr(args, "quantize", None)
    if scheme is None:
        return []
    return [",".join(quantize_passes(scheme, args, integer_ops=True))]


def quantize_passes(scheme: str, args: argparse.Namespace, *, integer_ops: bool) -> list[str]:
    """The passes of a quantization ``scheme``, checked against the flags; with ``integer_ops``,
    static int8 goes on to integer ops (ConvInteger/MatMulInteger), else it stays QDQ."""
    if scheme == "int8" and not args.calibration:
        raise EffarchError("int8 needs --calibration DATA (an .npz keyed by input name); "
                           "int8-dynamic needs none")
    if args.group_size < 2:
        raise EffarchError(f"--group-size must be 2 or more, got {args.group_size}")
    passes = [QUANTIZE[scheme].format(method=args.calibration_method, group=args.group_size)]
    return passes + ([INTEGER_OPS[scheme]] if integer_ops and scheme in INTEGER_OPS else [])


def compression_data(args: argparse.Namespace, graph: Graph) -> Any:
    """The CompressionData the flags name (None without data), after checking they fit together."""
    if args.max_accuracy_drop is not None and not args.accuracy_data:
        raise EffarchError("--max-accuracy-drop needs --accuracy-data DATA to measure the drop on")
    return _data(args, graph)


def _data(args: argparse.Namespace, graph: Graph) -> Any:
    if not (args.calibration or args.accuracy_data):
        return None
    from compiler.compression import CompressionData
    from compiler.numerics.datasets import load_dataset

    calibration = load_dataset(args.calibration, graph.inputs, "--calibration") if args.calibration else None
    accuracy = load_dataset(args.accuracy_data, graph.inputs, "--accuracy-data") if args.accuracy_data else None
    from compiler.cli.common import progress

    return CompressionData(calibration, accuracy, args.max_accuracy_drop, reference=graph, progress=progress)
