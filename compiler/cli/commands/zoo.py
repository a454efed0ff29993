"""``effarch zoo``: the bundled models."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("zoo", help="list the bundled models")
    p.set_defaults(func=cmd_zoo)


def cmd_zoo(args: argparse.Namespace) -> int:
    from compiler import zoo

    for name, description in zoo.describe().items():
        print(f"{name:<14} {description}")
    return 0
