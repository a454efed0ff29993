"""``effarch run ARTIFACT``: run an artifact here or on a remote device, on inputs from an .npz or
seeded random ones; optionally compare with onnxruntime on this machine."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

Arrays = dict[str, np.ndarray]


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="run an artifact on inputs from an .npz")
    p.add_argument("artifact")
    p.add_argument("--inputs", help=".npz with one array per input (default: seeded random inputs)")
    p.add_argument("--outputs", help=".npz to write the outputs to")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape", action="append", metavar="NAME=4x16",
                   help="shape of a random input with symbolic dims (the artifact takes any size there; "
                        "repeatable)")
    p.add_argument("--device", metavar="URL", help="run on a remote device: rpc://HOST:PORT (a TVM RPC server, "
                                                   "e.g. a board or tools/arm_device.py) or tracker://HOST:PORT/KEY")
    p.add_argument("--device-timeout", type=float, default=10.0, metavar="S",
                   help="seconds to wait for the device to answer (default 10)")
    p.add_argument("--reference", metavar="MODEL",
                   help="also run MODEL (.onnx, zoo name, ...) in onnxruntime here and compare the outputs")
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from compiler.cli.common import write_npz
    from compiler.fileio import check_output_path

    if args.outputs:
        check_output_path(Path(args.outputs), "--outputs file")
    inputs, outputs = _run_remote(args) if args.device else _run_here(args)
    for name, arr in outputs.items():
        print(f"{name}: {arr.dtype}{list(arr.shape)}  {_summary(arr)}")
    if args.reference:
        _compare(args.reference, inputs, outputs)
    if args.outputs:
        write_npz(args.outputs, outputs)
        print(f"wrote {args.outputs}")
    return 0


def _summary(arr: np.ndarray) -> str:
    """Mean, min and max of an output; a zero-size output has none."""
    if arr.size == 0:
        return "(empty)"
    return f"mean {float(np.mean(arr)):.6g}  min {float(np.min(arr)):.6g}  max {float(np.max(arr)):.6g}"


def _inputs(args: argparse.Namespace, specs: Any) -> Arrays:
    from compiler.cli.common import read_npz
    from compiler.cli.report import random_inputs_for_specs
    from compiler.driver import parse_shape_args

    shapes = parse_shape_args(getattr(args, "shape", None))
    return read_npz(args.inputs) if args.inputs else random_inputs_for_specs(specs, args.seed, shapes)


def _run_remote(args: argparse.Namespace) -> tuple[Arrays, Arrays]:
    from compiler.cli.common import progress
    from targets.artifact import open_artifact
    from targets.remote import run_remote

    inputs = _inputs(args, open_artifact(Path(args.artifact)).input_specs)
    progress(f"running on {args.device}")
    return inputs, run_remote(Path(args.artifact), args.device, inputs, timeout_s=args.device_timeout)


def _run_here(args: argparse.Namespace) -> tuple[Arrays, Arrays]:
    from targets.artifact import open_artifact
    from targets.runtime import check_inputs, load_artifact

    # Inputs are checked before loading, which writes the library into the cache.
    art = open_artifact(Path(args.artifact))
    specs = art.input_specs
    art.close()
    inputs = _inputs(args, specs)
    check_inputs(specs, inputs)
    return inputs, load_artifact(Path(args.artifact)).run(inputs)


def _compare(reference: str, inputs: Arrays, outputs: Arrays) -> None:
    from compiler.cli import report
    from compiler.cli.common import load_source_spec
    from compiler.errors import EffarchError
    from compiler.numerics.compare import compare_outputs
    from compiler.numerics.reference import run_onnxruntime

    checks = compare_outputs(outputs, run_onnxruntime(load_source_spec(reference).reference_onnx, inputs))
    print(report.checks_table(checks, "onnxruntime on this machine"))
    if not all(c.ok for c in checks):
        raise EffarchError("outputs differ from onnxruntime beyond tolerance (see above)")
