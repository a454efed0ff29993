"""PyTorch frontend: torch.export programs go through torch.onnx (in memory) into the ONNX importer.

Going through ONNX keeps one importer and one normalisation; the exporter's per-node scope
metadata becomes each node's provenance (the PyTorch module path, e.g. ``layer1.0.conv1``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from compiler.errors import EffarchError
from compiler.fileio import import_python_file
from compiler.frontends.onnx import import_onnx
from compiler.ir import Graph
from compiler.ir.ops import IR_OPSET

logger = logging.getLogger(__name__)

# torch.onnx logs progress and registry warnings through these loggers and prints to stdout.
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch._dynamo", "onnxscript")


def import_torch(module: Any, example_inputs: tuple[Any, ...]) -> Graph:
    """Export ``module`` with torch.export on ``example_inputs`` and import the program."""
    import torch

    if not isinstance(module, torch.nn.Module):
        raise EffarchError(f"expected a torch.nn.Module, got {type(module).__name__}; pass the model object")
    if not isinstance(example_inputs, tuple):
        raise EffarchError(f"example inputs must be a tuple, got {type(example_inputs).__name__}; "
                           f"wrap a single tensor as (x,)")
    try:
        with _quiet():
            ep = torch.export.export(module.eval(), example_inputs)
    except Exception as e:  # torch.export raises many types (Unsupported, UserError, ...)
        raise EffarchError(f"torch.export failed on {type(module).__name__}: {_first_line(e)}; make the "
                           f"model exportable (see torch.export's docs on graph breaks)") from None
    return import_exported_program(ep)


def import_exported_program(ep: Any) -> Graph:
    """Import a ``torch.export.ExportedProgram`` via an in-memory opset-21 ONNX export."""
    import torch

    try:
        with _quiet():
            # Input names default to torch.export's placeholders: the forward() argument names.
            program = torch.onnx.export(ep, dynamo=True, optimize=False, opset_version=IR_OPSET)
    except Exception as e:  # the ONNX exporter wraps failures in several types
        raise EffarchError(f"torch.onnx could not export the program: {_first_line(e)}; check that every "
                           f"aten op has an ONNX translation") from None
    if program is None:  # only the legacy (dynamo=False) exporter returns None
        raise EffarchError("torch.onnx returned no program; use a torch whose exporter supports dynamo")
    model = program.model_proto
    model.producer_name, model.producer_version = "pytorch", torch.__version__
    return import_onnx(model)


def load_pt2(path: str | Path) -> Graph:
    """Load a ``torch.export.save``d ``.pt2`` program and import it."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise EffarchError(f"PyTorch program '{path}' not found; save one with torch.export.save(ep, path)")
    try:
        ep = torch.export.load(str(path))
    except Exception as e:  # a wrong or corrupt archive surfaces as zip, pickle or runtime errors
        raise EffarchError(f"cannot load '{path}' as a torch.export program: {_first_line(e)}; "
                           f"save it with torch.export.save") from None
    graph = import_exported_program(ep)
    graph.metadata["source_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return graph


def load_builder(spec: str) -> tuple[Any, tuple[Any, ...]]:
    """``"path/models.py:build"`` -> the ``(module, example_inputs)`` that ``build()`` returns."""
    file_part, sep, func_name = spec.rpartition(":")
    if not sep or not file_part or not func_name:
        raise EffarchError(f"builder '{spec}' must look like FILE.py:FUNCTION, e.g. models.py:build")
    path = Path(file_part)
    if not path.is_file():
        raise EffarchError(f"builder file '{path}' not found; check the path in '{spec}'")
    build = getattr(import_python_file(path, "effarch_builder"), func_name, None)
    if not callable(build):
        raise EffarchError(f"'{path}' has no function '{func_name}'; define {func_name}() returning "
                           f"(module, example_inputs)")
    return _check_built(build(), spec)


def _check_built(result: Any, spec: str) -> tuple[Any, tuple[Any, ...]]:
    import torch

    shape_ok = isinstance(result, tuple) and len(result) == 2
    if not shape_ok or not isinstance(result[0], torch.nn.Module) or not isinstance(result[1], tuple):
        raise EffarchError(f"builder '{spec}' returned {_describe(result)}; it must return "
                           f"(torch.nn.Module, tuple of example inputs)")
    return result[0], result[1]


def _describe(value: Any) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(type(v).__name__ for v in value) + ")"
    return type(value).__name__


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence torch's exporter: progress prints, registry warnings and deprecation warnings."""
    loggers = [logging.getLogger(n) for n in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        if sink.getvalue():
            logger.debug("torch exporter output:\n%s", sink.getvalue())
