"""``effarch explain MODEL --pass NAME``: why a pass's rules fired, or did not, on this model.

The pass runs once (after ``--before PIPELINE``, if given) and its Notes are listed, grouped by
rule: first what fired, then the near misses, each with the node, its provenance and the check
that failed ("weight is not constant", "shape of %x is not static"); see ``compiler.debugging.explain``.
"""

from __future__ import annotations

import argparse
from typing import Any

from compiler.debugging.explain import DEFAULT_LIMIT


def register(sub: Any) -> None:
    from compiler.cli.common import add_model_args
    from compiler.cli.compression_args import add_data_args

    p = sub.add_parser("explain", help="why a pass's rules fired or not: its rewrites and near misses")
    add_model_args(p)
    p.add_argument("--pass", dest="pass_text", required=True, metavar="NAME",
                   help="the pass to explain, with options if any, e.g. 'fold-constants{size_limit=4096}'")
    p.add_argument("--before", default="", metavar="PIPELINE", help="passes to run first, as pipeline text")
    p.add_argument("--target", default="x86", help="target the passes are told about (default x86)")
    p.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="nodes listed per rule (default 20)")
    add_data_args(p)  # quantize-static reads calibration data; a budget reads test data
    p.set_defaults(func=cmd_explain)


def cmd_explain(args: argparse.Namespace) -> int:
    from compiler.cli.common import load_source
    from compiler.cli.compression_args import compression_data
    from compiler.debugging.explain import explain_pass, format_explanation
    from compiler.pass_manager import PassContext

    source = load_source(args)
    ctx = PassContext(target=args.target, data=compression_data(args, source.graph))
    explanation = explain_pass(source.graph, args.pass_text, args.before, ctx)
    print(format_explanation(explanation, args.limit))
    return 0
