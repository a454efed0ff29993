"""``effarch verify MODEL``: the numbers after every pass against the original model, and bisection.

Without ``--bisect`` every pass invocation is checked (``compiler.debugging.numeric_check``) and listed; with it a
binary search over the executed passes (``compiler.debugging.bisect``) names the first one that breaks
tolerance in about log2(n) onnxruntime runs. Either way a broken pass gets a reproducer zip
(``compiler.debugging.reproducer``) that ``effarch compile --reproduce FILE`` replays; the exit status is 1
when some pass breaks tolerance.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DEFAULT_REPRODUCER = "{stem}-{pass_}.repro.zip"


def register(sub: Any) -> None:
    from compiler.cli.common import add_model_args

    p = sub.add_parser("verify", help="check the numbers after every pass against onnxruntime; find the guilty pass")
    add_model_args(p)
    for level in range(4):
        p.add_argument(f"-O{level}", dest="opt_level", action="store_const", const=level,
                       help=f"check the -O{level} pipeline" + (" (default)" if level == 2 else ""))
    p.add_argument("--pipeline", default=None, help="pass pipeline text to check (overrides -O)")
    p.add_argument("--target", default="x86", help="target the passes are told about (default x86)")
    p.add_argument("--inputs", help=".npz with one array per model input (default: seeded random inputs)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    p.add_argument("--bisect", action="store_true",
                   help="binary-search the passes for the first that breaks tolerance and write a reproducer")
    p.add_argument("--reproducer-out", metavar="FILE",
                   help="where to write the reproducer (default: MODEL-PASS.repro.zip here)")
    p.set_defaults(func=cmd_verify, opt_level=2)


def cmd_verify(args: argparse.Namespace) -> int:
    from compiler.cli.common import load_source, progress, read_npz
    from compiler.debugging.numeric_check import run_graph
    from compiler.numerics.reference import random_inputs

    source = load_source(args)
    inputs = read_npz(args.inputs) if args.inputs else random_inputs(source.graph, args.seed)
    progress("running the original model in onnxruntime")
    expected = run_graph(source.reference_onnx, inputs)
    text = full_pipeline(args.opt_level, args.pipeline)
    progress(f"checking {text or '(no passes)'}")
    found = _bisect(source, text, inputs, expected, args) if args.bisect else _each(source, text, inputs,
                                                                                 expected, args)
    if found is None:
        return 0
    before, spec, step = found
    if not (args.bisect or args.reproducer_out):
        print("rerun with --bisect or --reproducer-out FILE to write a reproducer of that pass")
        return 1
    out = _write(args, before, spec, step, text, inputs, expected)
    print(f"wrote reproducer {out}; replay it with: effarch compile --reproduce {out}")
    return 1


def full_pipeline(opt_level: int, pipeline: str | None) -> str:
    """The pipeline ``effarch compile`` runs: the user's, then the passes lowering requires."""
    from compiler.driver import pipeline_for
    from passes.pipelines import REQUIRED_BEFORE_LOWERING

    return ",".join(t for t in (pipeline_for(opt_level, pipeline), REQUIRED_BEFORE_LOWERING) if t)


Found = tuple[Any, str, int] | None  # (graph or ONNX model before the guilty pass, its spec, its step)


def _each(source: Any, text: str, inputs: dict, expected: dict, args: argparse.Namespace) -> Found:
    import passes  # noqa: F401  (registers every pass)
    from compiler.debugging.numeric_check import NumericCheckInstrument, numerics_table
    from compiler.errors import PassError
    from compiler.pass_manager import PassContext, PassManager, parse_pipeline

    check = NumericCheckInstrument(inputs, expected)
    ctx = PassContext(opt_level=args.opt_level, target=args.target)
    try:
        PassManager(parse_pipeline(text), ctx, [check]).run(source.graph.clone())
    except PassError as exc:
        # A crash reproducer: the graph the pass was given, and the pass; replay shows the error.
        print(numerics_table(check.rows))
        print(f"step {len(check.rows) + 1}, '{check.running}' failed: {exc}")
        return check.last_model, check.running, len(check.rows) + 1
    print(numerics_table(check.rows))
    bad = check.first_bad
    if bad is None:
        print(f"all {len(check.rows)} pass runs within tolerance of the original")
        return None
    print(f"first pass to break tolerance: step {bad.index}, '{bad.spec}'")
    return check.bad_input, bad.spec, bad.index


def _bisect(source: Any, text: str, inputs: dict, expected: dict, args: argparse.Namespace) -> Found:
    import passes  # noqa: F401  (registers every pass)
    from compiler.debugging.bisect import bisect_pipeline
    from compiler.errors import EffarchError
    from compiler.pass_manager import PassContext

    ctx = PassContext(opt_level=args.opt_level, target=args.target)
    result = bisect_pipeline(source.graph, text, inputs, expected, ctx)
    print("\n".join(result.log))
    if result.first_bad is None:
        print(f"all {len(result.steps)} pass runs within tolerance of the original")
        return None
    if result.first_bad == 0:
        raise EffarchError("the imported graph already differs from the original in onnxruntime, before any "
                           "pass; this is an import bug, not a pass bug: check with 'effarch verify -O0'")
    print(f"first pass to break tolerance: step {result.first_bad} of {len(result.steps)}, '{result.guilty}'")
    print("\n".join(f"  {c.line()}" for c in result.checks))
    assert result.guilty is not None and result.before is not None
    return result.before, result.guilty, result.first_bad


def _write(args: argparse.Namespace, before: Any, spec: str, step: int, text: str,
           inputs: dict, expected: dict) -> Path:
    from compiler.debugging.reproducer import write_reproducer

    name = spec.split("{")[0]
    out = args.reproducer_out or DEFAULT_REPRODUCER.format(stem=Path(args.model).stem, pass_=name)
    info = {"step": step, "pipeline_text": text, "opt_level": args.opt_level, "target": args.target,
            "model": args.model, "seed": None if args.inputs else args.seed}
    return write_reproducer(out, before, spec, inputs, expected, info)
