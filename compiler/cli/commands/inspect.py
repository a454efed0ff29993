"""``effarch inspect MODEL``: a model's ops by type, parameters, bytes, FLOPs and I/O, or an
artifact's manifest."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    from compiler.cli.common import add_model_args

    p = sub.add_parser("inspect", help="ops by type, parameters, bytes, FLOPs, inputs and outputs")
    add_model_args(p)
    p.set_defaults(func=cmd_inspect)


def cmd_inspect(args: argparse.Namespace) -> int:
    from compiler.cli import report
    from compiler.cli.common import load_source

    if args.model.endswith(".effarch"):
        from targets.artifact import read_manifest

        print(report.manifest_summary(read_manifest(Path(args.model))))
        return 0
    print(report.inspect_graph(load_source(args).graph))
    return 0
