"""The ``effarch`` command line: compile models, run and inspect them, and see what every pass does.

The commands are the modules of ``compiler.cli.commands``, one each (``effarch --help`` lists them).

Every user error ends as one line ``effarch: error: ...`` and exit status 1; an unexpected failure
as ``effarch: internal error: ...`` and status 2 (``--debug`` shows the traceback). No command
leaves a partial output file behind.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Callable, Sequence

from compiler.cli import commands
from compiler.cli.common import asks_target_help, print_targets
from compiler.errors import EffarchError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="effarch", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-v", "--verbose", action="store_true", help="show info logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{info.name}").register(sub)
    return parser


def _guarded(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return func(args)
    except EffarchError as e:
        if args.debug:
            raise
        print(f"effarch: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("effarch: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"effarch: internal error: {type(e).__name__}: {msg} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if asks_target_help(argv):
        return print_targets()
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="effarch: %(levelname)s: %(name)s: %(message)s")
    return _guarded(args.func, args)
