"""Export zoo models to ONNX once and cache the files.

The cache lives in ``$EFFARCH_CACHE/zoo`` (default ``~/.cache/effarch/zoo``) as
``<name>-<version>.onnx``. Files are written to a temporary name in the same folder and renamed, so a
crashed or concurrent export never leaves a half-written model that a later run would trust.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from compiler.errors import EffarchError

if TYPE_CHECKING:
    from compiler.zoo import ZooModel

log = logging.getLogger(__name__)

OPSET = 21


def cache_dir() -> Path:
    root = os.environ.get("EFFARCH_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "effarch"
    return base / "zoo"


def cached_onnx(model: ZooModel) -> Path:
    path = cache_dir() / f"{model.name}-{model.version}.onnx"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("exporting zoo model %s to %s", model.name, path)
    fd, tmp = tempfile.mkstemp(prefix=f".{model.name}-", suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        export_onnx(model, Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def export_onnx(model: ZooModel, path: Path) -> None:
    """torch.onnx.export through torch.export (dynamo) into one self-contained file."""
    import torch

    module, example = model.build()
    chatter = io.StringIO()
    try:
        # The exporter prints progress lines and warnings on the console; keep them for the debug log.
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter), \
                warnings.catch_warnings(), _quiet_loggers():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, example, str(path), dynamo=True, optimize=False, opset_version=OPSET,
                              input_names=list(model.input_names), output_names=list(model.output_names),
                              external_data=False)
    except Exception as e:  # the exporter raises many unrelated types
        log.debug("exporter output:\n%s", chatter.getvalue())
        raise EffarchError(f"exporting zoo model '{model.name}' to ONNX failed: {type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}; run with --verbose for the "
                           f"exporter's output") from e
    log.debug("exporter output:\n%s", chatter.getvalue())


@contextlib.contextmanager
def _quiet_loggers() -> Iterator[None]:
    """The exporter and onnxscript log at INFO/WARNING through their own loggers; lower them briefly."""
    names = ("torch.onnx", "torch.export", "onnxscript", "onnx_ir", "torch._dynamo")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
