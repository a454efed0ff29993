"""The ``effarch`` command line: compile, run, inspect, passes, bench, demo, zoo, ops.

Every user error ends as one line ``effarch: error: ...`` and exit status 1; an unexpected failure
as ``effarch: internal error: ...`` and status 2 (``--debug`` shows the traceback). No command
leaves a partial output file behind.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from compiler.errors import EffarchError

log = logging.getLogger("effarch")

DEFAULT_DEMO_MODEL = "digits_cnn"


def progress(msg: str) -> None:
    print(f"effarch: {msg}", file=sys.stderr, flush=True)


# ---- helpers shared by commands ---------------------------------------------------------------
def load_source(args: argparse.Namespace):  # -> SourceModel; shared by plug-in commands
    from compiler.driver import load_model, parse_shape_args

    progress(f"loading {args.model}")
    source = load_model(_model_spec(args.model), parse_shape_args(getattr(args, "shape", None)))
    if source.graph.metadata.get("import_notes"):
        progress(source.graph.metadata["import_notes"])  # e.g. converted from an older opset
    return source


def load_source_spec(model: str):  # -> SourceModel
    from compiler.driver import load_model

    return load_model(_model_spec(model))


def _model_spec(model: str) -> str:
    """A bare zoo name (``resnet18``) is accepted where no file of that name exists."""
    from compiler import zoo

    if not Path(model).exists() and ":" not in model and model in zoo.names():
        return f"zoo:{model}"
    return model


def read_npz(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise EffarchError(f"inputs file {path} not found; give an .npz with one array per model input") from None
    except (ValueError, OSError) as e:
        raise EffarchError(f"cannot read {path} as .npz ({e}); save inputs with numpy.savez") from None


def _summary(arr: np.ndarray) -> str:
    """Mean, min and max of an output; a zero-size output has none."""
    if arr.size == 0:
        return "(empty)"
    return f"mean {float(np.mean(arr)):.6g}  min {float(np.min(arr)):.6g}  max {float(np.max(arr)):.6g}"


def _write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Write atomically: a failure leaves no partial file."""
    from compiler.fileio import atomic_write

    with atomic_write(Path(path).absolute()) as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle


def _instruments(args: argparse.Namespace) -> list:
    from compiler import pass_manager as pm
    from compiler.debugging.impact import ImpactInstrument, PrintChangedInstrument, TargetLatency

    measure = TargetLatency(target=args.target, cpu=args.cpu) if args.measure else None
    out: list = [ImpactInstrument(measure=measure)]
    if args.verify_each:
        out.append(pm.VerifyEachInstrument())
    if args.save_stages:
        out.append(pm.SaveStagesInstrument(Path(args.save_stages)))
    if args.print_changed:
        out.append(PrintChangedInstrument(lambda text: print(text, flush=True), color=sys.stdout.isatty(),
                                          quiet=True))
    return out


# ---- commands -----------------------------------------------------------------------------------
def cmd_compile(args: argparse.Namespace) -> int:
    from compiler import report
    from compiler.debugging.impact import impact_table
    from compiler.driver import compile_model

    if args.reproduce:
        from compiler.debugging.reproducer import replay_and_report

        return replay_and_report(args.reproduce, print)
    if not args.model or not args.output:
        raise EffarchError("compile needs a model and -o FILE.effarch (or --reproduce FILE)")
    source = load_source(args)
    out = Path(args.output)
    progress(f"compiling for {args.target} at -O{args.opt_level}")
    instruments = _instruments(args)
    result = compile_model(source, out, target=args.target, cpu=args.cpu, opt_level=args.opt_level,
                           pipeline=args.pipeline, instruments=instruments,
                           tuning_db=Path(args.tuning_db) if args.tuning_db else None)
    print("Per-pass impact\n" + impact_table(instruments[0].rows))
    print(report.stats_comparison(result.graph_before, result.graph_after))
    if args.verify:
        progress("verifying against onnxruntime on seeded random inputs")
        checks = report.verify_artifact(source, out, seed=args.seed)
        print(report.checks_table(checks))
        if not all(c.ok for c in checks):
            out.unlink(missing_ok=True)
            raise EffarchError("outputs differ from onnxruntime beyond tolerance (see above); the artifact was "
                               "not kept; try a lower -O level or --pipeline to find the pass")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from compiler.report import random_inputs_for_specs
    from targets.runtime import load_artifact

    if args.device:
        from targets.artifact import open_artifact
        from targets.remote import run_remote

        specs = open_artifact(Path(args.artifact)).input_specs
        inputs = read_npz(args.inputs) if args.inputs else random_inputs_for_specs(specs, args.seed)
        progress(f"running on {args.device}")
        outputs = run_remote(Path(args.artifact), args.device, inputs, timeout_s=args.device_timeout)
    else:
        art = load_artifact(Path(args.artifact))
        inputs = read_npz(args.inputs) if args.inputs else random_inputs_for_specs(art.input_specs, args.seed)
        outputs = art.run(inputs)
    for name, arr in outputs.items():
        print(f"{name}: {arr.dtype}{list(arr.shape)}  {_summary(arr)}")
    if args.reference:
        from compiler import report
        from compiler.numerics.compare import compare_outputs
        from compiler.numerics.reference import run_onnxruntime

        checks = compare_outputs(outputs, run_onnxruntime(load_source_spec(args.reference).reference_onnx, inputs))
        print(report.checks_table(checks, "onnxruntime on this machine"))
        if not all(c.ok for c in checks):
            raise EffarchError("outputs differ from onnxruntime beyond tolerance (see above)")
    if args.outputs:
        _write_npz(args.outputs, outputs)
        print(f"wrote {args.outputs}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from compiler import report

    if args.model.endswith(".effarch"):
        from targets.artifact import read_manifest

        print(report.manifest_summary(read_manifest(Path(args.model))))
        return 0
    source = load_source(args)
    print(report.inspect_graph(source.graph))
    return 0


def cmd_passes(args: argparse.Namespace) -> int:
    import passes  # noqa: F401  (registers every pass)
    from compiler.pass_manager import registered_passes
    from passes.pipelines import default_pipeline

    for name, cls in sorted(registered_passes().items()):
        print(f"{name:<24} {cls.description}")
    print()
    for level in range(4):
        print(f"-O{level}: {default_pipeline(level) or '(no passes)'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from compiler.benchmark.model import bench_model

    source = load_source(args)
    with tempfile.TemporaryDirectory() as tmp:
        print(bench_model(source, Path(tmp), target=args.target, cpu=args.cpu, opt_level=args.opt_level,
                                 warmup=args.warmup, repeat=args.repeat, seed=args.seed,
                                 tuning_db=Path(args.tuning_db) if args.tuning_db else None))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from compiler import demo

    return demo.run_demo(args.model, Path(args.out), warmup=args.warmup, repeat=args.repeat)


def cmd_zoo(args: argparse.Namespace) -> int:
    from compiler import zoo

    for name, description in zoo.describe().items():
        print(f"{name:<14} {description}")
    return 0


def cmd_ops(args: argparse.Namespace) -> int:
    from compiler.ir.ops import IR_OPSET, SUPPORTED_OPS

    print(f"{len(SUPPORTED_OPS)} ONNX operators (opset {IR_OPSET} semantics; opsets 7-28 imported, 7-12 converted):")
    print(", ".join(sorted(SUPPORTED_OPS)))
    return 0


# ---- argument parsing ---------------------------------------------------------------------------
def add_model_args(p: argparse.ArgumentParser, *, optional: bool = False) -> None:
    p.add_argument("model", nargs="?" if optional else None,
                   help="model.onnx, program.pt2, FILE.py:FUNCTION, or a zoo name (see 'effarch zoo')")
    p.add_argument("--shape", action="append", metavar="NAME=1x3x224x224",
                   help="fix the shape of an input with symbolic dimensions (repeatable)")


def _add_target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="x86", help="target to compile for ('--target help' lists them)")
    p.add_argument("--cpu", "--arch", dest="cpu", default=None,
                   help="CPU (or GPU arch for cuda, e.g. sm_90) to compile for (default: this machine's)")
    for level in range(4):
        p.add_argument(f"-O{level}", dest="opt_level", action="store_const", const=level,
                       help=f"optimisation level {level}" + (" (default)" if level == 2 else ""))
    p.set_defaults(opt_level=2)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="effarch", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-v", "--verbose", action="store_true", help="show info logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("compile", help="compile a model into one .effarch artifact")
    add_model_args(p, optional=True)
    _add_target_args(p)
    p.add_argument("-o", "--output", help="artifact file to write (.effarch)")
    p.add_argument("--pipeline", default=None, help="pass pipeline text (overrides -O), e.g. "
                                                    "'fold-constants,eliminate-dead-code'")
    p.add_argument("--verify", action="store_true", help="compare the binary's outputs with onnxruntime")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs for --verify")
    p.add_argument("--verify-each", action="store_true", help="run the IR verifier after every pass")
    p.add_argument("--save-stages", metavar="DIR", help="save every stage as numbered ONNX and IR text")
    p.add_argument("--print-changed", action="store_true",
                   help="print a diff of the IR after each pass that changed it")
    p.add_argument("--measure", action="store_true",
                   help="build and time the model after each pass that changed it (per-pass latency impact)")
    p.add_argument("--reproduce", metavar="FILE", help="replay a reproducer written by 'effarch verify --bisect'")
    p.add_argument("--tuning-db", metavar="DIR", help="use the kernels 'effarch tune --db DIR' found faster than "
                                                      "effarch's own schedules (CPU targets, -O2 and above)")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("run", help="run an artifact on inputs from an .npz")
    p.add_argument("artifact")
    p.add_argument("--inputs", help=".npz with one array per input (default: seeded random inputs)")
    p.add_argument("--outputs", help=".npz to write the outputs to")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", metavar="URL", help="run on a remote device: rpc://HOST:PORT (a TVM RPC server, "
                                                   "e.g. a board or tools/arm_device.py) or tracker://HOST:PORT/KEY")
    p.add_argument("--device-timeout", type=float, default=10.0, metavar="S",
                   help="seconds to wait for the device to answer (default 10)")
    p.add_argument("--reference", metavar="MODEL",
                   help="also run MODEL (.onnx, zoo name, ...) in onnxruntime here and compare the outputs")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("inspect", help="ops by type, parameters, bytes, FLOPs, inputs and outputs")
    add_model_args(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("passes", help="list the registered passes and the -O pipelines")
    p.set_defaults(func=cmd_passes)

    p = sub.add_parser("bench", help="median latency of effarch vs onnxruntime vs PyTorch eager")
    add_model_args(p)
    _add_target_args(p)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tuning-db", metavar="DIR", help="also time the model compiled with this tuning database")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo", help="compile the bundled default model for this CPU, run it, report")
    p.add_argument("--model", default=DEFAULT_DEMO_MODEL, help="zoo model to use")
    p.add_argument("--out", default="out/demo", help="folder for the artifact and stages")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeat", type=int, default=50)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("zoo", help="list the bundled models")
    p.set_defaults(func=cmd_zoo)
    p = sub.add_parser("ops", help="list the supported operators")
    p.set_defaults(func=cmd_ops)
    _register_plugin_commands(sub)
    return parser


def _register_plugin_commands(sub: argparse._SubParsersAction) -> None:
    """Commands contributed by modules in ``compiler.commands``: each defines ``register(sub)``, which adds
    its parser with ``set_defaults(func=...)``; func takes the parsed args and returns the exit status."""
    import importlib
    import pkgutil

    from compiler import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"compiler.commands.{info.name}").register(sub)


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
    if _asks_target_help(argv):
        return cmd_target_help(argparse.Namespace())
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="effarch: %(levelname)s: %(name)s: %(message)s")
    return _guarded(args.func, args)


def _asks_target_help(argv: list[str]) -> bool:
    """``--target help`` lists targets without needing the rest of the command line."""
    return "--target=help" in argv or any(a == "--target" and b == "help" for a, b in zip(argv, argv[1:], strict=False))


def cmd_target_help(args: argparse.Namespace) -> int:
    from targets.base import list_targets

    for spec in list_targets():
        print(f"{spec.name:<6} {spec.description}\n       default cpu: {spec.default_cpu()}")
        notable = spec.notable_cpus()
        for cpu, what in notable.items():
            print(f"       {cpu:<14} {what}")
        cpus = spec.known_cpus()
        if not notable or len(cpus) > len(notable):
            shown = ", ".join(cpus[:14]) + (f", ... ({len(cpus) - 14} more)" if len(cpus) > 14 else "")
            print(f"       {'all' if not notable else 'also'}: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
