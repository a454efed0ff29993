"""``effarch passes``: the registered passes (effarch's and installed plugins', with the package each
comes from) and the pipeline of every -O level."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("passes", help="list the registered passes, with their package, and the -O pipelines")
    p.set_defaults(func=cmd_passes)


def cmd_passes(args: argparse.Namespace) -> int:
    import passes  # noqa: F401  (registers every pass, plugins' too)
    from compiler.pass_manager import pass_package, registered_passes
    from passes.pipelines import default_pipeline

    for name, cls in registered_passes().items():
        print(f"{name:<32} {pass_package(name):<18} {cls.description}")
    print()
    for level in range(4):
        print(f"-O{level}: {default_pipeline(level) or '(no passes)'}")
    return 0
