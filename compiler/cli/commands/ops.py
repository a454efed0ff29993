"""``effarch ops``: the operators effarch's IR supports."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("ops", help="list the supported operators")
    p.set_defaults(func=cmd_ops)


def cmd_ops(args: argparse.Namespace) -> int:
    from compiler.ir.ops import IR_OPSET, SUPPORTED_OPS

    print(f"{len(SUPPORTED_OPS)} ONNX operators (opset {IR_OPSET} semantics; opsets 7-28 imported, 7-12 converted):")
    print(", ".join(sorted(SUPPORTED_OPS)))
    return 0
