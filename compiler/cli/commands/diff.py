"""``effarch diff A B``: the node-level changes between two graphs, following provenance.

A and B are ONNX files, ``.pt2`` programs, IR text (``.ir``), saved stages (``STAGES/3`` or
``STAGES/fold-constants``) or ``zoo:NAME``. Prints a summary and the changes (colour on a terminal),
or the JSON described in ``compiler.debugging.diff.render_json`` with ``--json``; ``--html FILE`` also writes
a self-contained page with both graphs side by side. Exit status 0 whether or not they differ.

When B is quantized or pruned (``effarch quantize``'s ONNX, a ``--save-stages`` stage), every view
first says, per Conv/MatMul/Gemm of A, what it became: int8 (integer op or QDQ) with its weight
and activation dtypes, weight-only int8/int4, kept float and why, channels before -> after.
An ``.effarch`` artifact keeps no graph and cannot be a side.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("diff", help="node-level diff of two models or stages, following provenance")
    p.add_argument("a", help="the graph before: .onnx, .pt2, .ir, STAGES_DIR/N or zoo:NAME")
    p.add_argument("b", help="the graph after, in any of the same forms")
    p.add_argument("--json", action="store_true",
                   help="print the diff as JSON (schema in compiler.debugging.diff.render_json)")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML page of the diff")
    p.add_argument("--color", dest="color", action="store_true", default=None,
                   help="colour the output even when it is not a terminal")
    p.add_argument("--no-color", dest="color", action="store_false", help="never colour the output")
    p.add_argument("--limit", type=int, default=50, metavar="N",
                   help="list at most N entries per section (0: all; default 50)")
    p.set_defaults(func=cmd_diff)


def cmd_diff(args: argparse.Namespace) -> int:
    from compiler.debugging.diff import diff_graphs
    from compiler.debugging.diff.load import load_graph
    from compiler.debugging.diff.render_json import render_json
    from compiler.debugging.diff.render_text import render_text

    graph_a, graph_b = load_graph(args.a), load_graph(args.b)
    d = diff_graphs(graph_a, graph_b, args.a, args.b)
    if args.html:
        from compiler.debugging.diff.render_html import write_html

        write_html(d, graph_a, graph_b, args.html)
        print(f"effarch: wrote {args.html}", file=sys.stderr)
    if args.json:
        sys.stdout.write(render_json(d))
    else:
        color = sys.stdout.isatty() if args.color is None else args.color
        sys.stdout.write(render_text(d, color=color, limit=args.limit))
    return 0
