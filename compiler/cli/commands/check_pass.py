"""``effarch check-pass NAME``: run any registered pass (effarch's or a plugin's) on the small zoo
models and seeded random graphs, check what every pass must keep, and print a pass/fail table.

Exit status 0 when every case passes, 1 (with one error line after the table) when one fails.
"""

from __future__ import annotations

import argparse
from typing import Any

DEFAULT_RANDOM = 8


def register(sub: Any) -> None:
    p = sub.add_parser("check-pass", help="check a pass: numbers vs onnxruntime, idempotence, honest "
                                          "'modified', verifier; on zoo models and random graphs")
    p.add_argument("pass_text", metavar="NAME", help="the pass, with options if any, e.g. 'fuse-operators' "
                                                     "or 'fold-constants{size_limit=4096}'")
    models = p.add_mutually_exclusive_group()
    models.add_argument("--models", metavar="A,B", help="zoo models to check on (default: mlp,digits_cnn,gpt)")
    models.add_argument("--all-models", action="store_true", help="every zoo model (slower)")
    p.add_argument("--random", type=int, default=DEFAULT_RANDOM, metavar="N",
                   help=f"seeded random graphs to check on (default {DEFAULT_RANDOM})")
    p.add_argument("--seed", type=int, default=0, help="first seed of the random graphs and inputs")
    p.add_argument("--before", default="", metavar="PIPELINE", help="passes to run on each graph first")
    p.add_argument("--target", default="x86", help="target the pass is told about (default x86)")
    p.set_defaults(func=cmd_check_pass)


def cmd_check_pass(args: argparse.Namespace) -> int:
    import passes  # noqa: F401  (registers every pass, plugins' too)
    from compiler.debugging.check_pass import check_case, failure_details, random_cases, results_table, zoo_cases
    from compiler.errors import EffarchError
    from compiler.pass_manager import PassContext, parse_one_pass, parse_pipeline

    spec, pass_ = parse_one_pass(args.pass_text, "check-pass")
    parse_pipeline(args.before)  # a bad --before fails now, not once per case
    ctx = PassContext(target=args.target)
    cases = [*zoo_cases(_models(args), args.seed), *random_cases(args.random, args.seed)]
    results = [check_case(pass_, case, ctx, args.before) for case in cases]
    print(f"check-pass {spec}: {len(cases)} cases")
    print(results_table(results))
    failed = [r for r in results if not r.ok]
    if failed:
        print("\n" + failure_details(failed))
        raise EffarchError(f"pass '{spec}' failed {len(failed)} of {len(results)} cases (table above)")
    return 0


def _models(args: argparse.Namespace) -> list[str]:
    from compiler import zoo
    from compiler.debugging.check_pass import SMALL_ZOO
    from compiler.errors import EffarchError

    if args.all_models:
        return zoo.names()
    names = args.models.split(",") if args.models else list(SMALL_ZOO)
    unknown = [n for n in names if n not in zoo.names()]
    if unknown:
        raise EffarchError(f"unknown zoo model '{unknown[0]}'; pass some of: {', '.join(zoo.names())}")
    return names
