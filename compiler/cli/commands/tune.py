"""``effarch tune MODEL --db DIR``: search faster schedules for a model's kernels with MetaSchedule.

The model goes through the same passes, lowering and fusion as ``effarch compile`` (same -O level
and ``--pipeline``), so the records match the kernels that build meets. Our own schedule of each
kernel is timed first; ``effarch compile --tuning-db DIR`` then uses a tuned kernel only where it
measured faster. Interrupt with Ctrl-C at any time: what was measured stays in DIR, and the same
command continues from there.

``--target cuda --arch sm_90`` tunes on that GPU. The kernels are saved in the database first, so a
machine without the GPU (or without the model's importers) lowers them and stops there, and the GPU
machine tunes them with ``effarch tune --db DIR --target cuda --arch sm_90`` (no model needed).
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smh]?)$")


def register(sub: Any) -> None:
    from compiler.cli.common import add_model_args

    p = sub.add_parser("tune", help="tune a model's kernels with MetaSchedule into a database for compile")
    add_model_args(p, optional=True)
    p.add_argument("--db", required=True, metavar="DIR", help="tuning database folder (created; reused to resume)")
    p.add_argument("--target", default="x86", help="target to tune for: x86, arm or cuda (default x86)")
    p.add_argument("--cpu", "--arch", dest="cpu", default=None,
                   help="CPU, or GPU arch for cuda (sm_90), to tune for (default: this machine's; sm_90)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                   help="tune the kernels of the build at this precision, as given to compile (default fp32)")
    p.add_argument("--trials", type=int, default=256, metavar="N",
                   help="candidates to measure in all, earlier runs included (default 256)")
    p.add_argument("--time-budget", metavar="T", type=parse_duration,
                   help="stop starting new work after T (90s, 20m, 1.5h); rerun to continue")
    p.add_argument("--rpc", metavar="URL", help="measure on devices behind a TVM RPC tracker: tracker://HOST:PORT/KEY")
    p.add_argument("--pipeline", default=None, help="pass pipeline text, as given to compile (overrides -O)")
    for level in (2, 3):
        p.add_argument(f"-O{level}", dest="opt_level", action="store_const", const=level,
                       help=f"optimisation level {level}, as given to compile" + (" (default)" if level == 2 else ""))
    p.add_argument("--chunk", type=int, default=16, metavar="N", help="candidates per MetaSchedule round (default 16)")
    p.set_defaults(func=cmd_tune, opt_level=2)


def parse_duration(text: str) -> float:
    match = _DURATION.match(text.strip().lower())
    if not match:
        raise argparse.ArgumentTypeError(f"bad duration '{text}'; write 90s, 20m or 1.5h")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]


def cmd_tune(args: argparse.Namespace) -> int:
    from pathlib import Path

    from compiler.cli.common import load_source, progress
    from compiler.driver import optimize, pipeline_for
    from compiler.errors import EffarchError
    from targets.tuning import tune_model

    if args.trials < 1 or args.chunk < 1:
        raise EffarchError("--trials and --chunk must be at least 1")
    graph = None
    if args.model is not None:
        source = load_source(args)
        graph, _ = optimize(source.graph, pipeline_for(args.opt_level, args.pipeline), opt_level=args.opt_level,
                            target=args.target)
    progress(f"tuning for {args.target}: {args.trials} trials into {args.db}")
    bar = ProgressBar(sys.stderr)
    try:
        result = tune_model(graph, Path(args.db), target=args.target, cpu=args.cpu, trials=args.trials,
                            time_budget_s=args.time_budget, rpc=args.rpc, chunk=args.chunk,
                            precision=args.precision, progress=bar.update)
    except KeyboardInterrupt:
        bar.close()
        progress(f"interrupted; what was measured is kept in {args.db}: run the same command again to continue")
        return 130
    bar.close()
    if result.saved_only:
        progress(result.saved_only)
        return 0
    print(summary_table(result))
    if result.stopped:
        progress(f"stopped early ({result.stopped}); run the same command again to continue")
    return 0


class ProgressBar:
    """One line, redrawn in place on a terminal; one line per round otherwise (logs, CI)."""

    WIDTH = 24

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.drawn = False

    def update(self, p: Any) -> None:
        filled = self.WIDTH * p.trials_done // max(p.trials_total, 1)
        best = f"{p.entry.tuned_ms:.4f}" if p.entry.tuned_ms is not None else "-"
        ours = f"{p.entry.own_ms:.4f}" if p.entry.own_ms is not None else "-"
        line = (f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {p.trials_done}/{p.trials_total} trials, "
                f"kernel {p.kernel_index}/{p.kernels} {p.kernel}: best {best} ms (ours {ours} ms), "
                f"{p.elapsed_s:.0f} s")
        self.stream.write(("\r\033[K" + line) if self.tty else line + "\n")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.drawn = False


def summary_table(result: Any) -> str:
    from targets.tuning import tuned_summary

    rows = tuned_summary(result)
    lines = [f"{'kernel':<52} {'calls':>5} {'ours ms':>9} {'tuned ms':>9} {'speed-up':>8}  used by compile",
             "-" * 110]
    ours_total = best_total = 0.0
    for name, calls, ours, tuned, used in rows:
        speedup = f"{ours / tuned:.2f}x" if ours and tuned else "-"
        lines.append(f"{name[:52]:<52} {calls:>5} {_ms(ours):>9} {_ms(tuned):>9} {speedup:>8}  {used}")
        ours_total += (ours or 0.0) * calls
        best_total += min(x for x in (ours, tuned) if x is not None) * calls if (ours or tuned) else 0.0
    lines.append(f"kernel time per run: ours {ours_total:.3f} ms, with tuned kernels {best_total:.3f} ms "
                 f"({result.trials_run} trials this run)")
    return "\n".join(lines)


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"
