"""``effarch quantize MODEL --calibration DATA -o m.int8.onnx``: a quantized model as a standard ONNX file.

Runs -O2's cleanup and folding (no fusion), then the passes of ``--scheme`` (as ``compile
--quantize``, but static int8 stays in ONNX's QDQ form instead of becoming integer ops, so any
ONNX runtime can run and optimise it) and writes ONNX. Prints what each pass did to each layer and
the size of the weights before and after. The compression notes ride in the file's metadata,
where ``effarch diff`` finds why a layer stayed float.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    from compiler.cli.common import add_model_args
    from compiler.cli.compression_args import QUANTIZE, SCHEME_HELP, add_data_args, add_quantize_options

    p = sub.add_parser("quantize", help="quantize a model and write it as ONNX (QDQ form)")
    add_model_args(p)
    p.add_argument("-o", "--output", required=True, help="ONNX file to write, e.g. model.int8.onnx")
    g = add_data_args(p)
    g.add_argument("--scheme", choices=sorted(QUANTIZE), default="int8", help=SCHEME_HELP + " (default int8)")
    add_quantize_options(g)
    p.set_defaults(func=cmd_quantize)


def cmd_quantize(args: argparse.Namespace) -> int:
    from compiler.cli.common import load_source, progress
    from compiler.cli.compression_args import compression_data, compression_report, quantize_passes, unfused_pipeline
    from compiler.compression.notes import NOTES_KEY, layer_notes, to_metadata
    from compiler.driver import optimize
    from compiler.errors import EffarchError
    from compiler.frontends.onnx_export import save_onnx

    out = Path(args.output)
    if out.suffix != ".onnx":
        raise EffarchError(f"effarch quantize writes ONNX; name the output FILE.onnx, not {out}")
    pipeline = unfused_pipeline(",".join(quantize_passes(args.scheme, args, integer_ops=False)))
    source = load_source(args)
    data = compression_data(args, source.graph)
    progress(f"quantizing ({args.scheme}): {pipeline}")
    graph, records = optimize(source.graph, pipeline, data=data)
    notes = layer_notes(records, graph)
    if not any(n.fired and n.pass_name.startswith("quantize") for n in notes):
        raise EffarchError(f"{args.scheme} quantized no layer of {args.model}; nothing written:\n"
                           + compression_report(records).rstrip())
    graph.metadata[NOTES_KEY] = to_metadata(notes)
    sys.stdout.write(compression_report(records))
    save_onnx(graph, out)
    print(_sizes(source.graph, graph, out))
    return 0


def _sizes(before: Any, after: Any, out: Path) -> str:
    from compiler.ir.stats import graph_stats

    a, b = graph_stats(before).constant_bytes, graph_stats(after).constant_bytes
    ratio = f" ({a / b:.1f}x smaller)" if b else ""
    return f"weights {_kb(a)} -> {_kb(b)}{ratio}\nwrote {out} ({_kb(out.stat().st_size)})"


def _kb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} KB"
