"""What several commands share: progress lines, loading a model, reading and writing .npz files,
the model and target arguments, and the ``--target help`` listing."""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from compiler.errors import EffarchError


def progress(msg: str) -> None:
    print(f"effarch: {msg}", file=sys.stderr, flush=True)


def load_source(args: argparse.Namespace) -> Any:  # -> SourceModel
    from compiler.driver import load_model, parse_shape_args

    progress(f"loading {args.model}")
    source = load_model(model_spec(args.model), parse_shape_args(getattr(args, "shape", None)))
    if source.graph.metadata.get("import_notes"):
        progress(source.graph.metadata["import_notes"])  # e.g. converted from an older opset
    return source


def load_source_spec(model: str) -> Any:  # -> SourceModel
    from compiler.driver import load_model

    return load_model(model_spec(model))


def model_spec(model: str) -> str:
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
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EffarchError(f"cannot read {path} as .npz ({first}); save inputs with numpy.savez") from None


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Write atomically: a failure leaves no partial file."""
    from compiler.fileio import atomic_write

    with atomic_write(Path(path).absolute()) as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle


def add_model_args(p: argparse.ArgumentParser, *, optional: bool = False) -> None:
    p.add_argument("model", nargs="?" if optional else None,
                   help="model.onnx, program.pt2, FILE.py:FUNCTION, or a zoo name (see 'effarch zoo')")
    p.add_argument("--shape", action="append", metavar="NAME=1x3x224x224",
                   help="fix the shape of an input with symbolic dimensions (repeatable)")


def add_target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="x86", help="target to compile for ('--target help' lists them)")
    p.add_argument("--cpu", "--arch", dest="cpu", default=None,
                   help="CPU (or GPU arch for cuda, e.g. sm_90) to compile for (default: this machine's)")
    for level in range(4):
        p.add_argument(f"-O{level}", dest="opt_level", action="store_const", const=level,
                       help=f"optimisation level {level}" + (" (default)" if level == 2 else ""))
    p.set_defaults(opt_level=2)


def asks_target_help(argv: list[str]) -> bool:
    """``--target help`` lists targets without needing the rest of the command line."""
    return "--target=help" in argv or any(a == "--target" and b == "help" for a, b in zip(argv, argv[1:], strict=False))


def print_targets() -> int:
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
