"""Files: writing them so that a failure never leaves a partial one behind, and importing a user's
Python file (``FILE.py:FUNCTION`` for models and data)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from compiler.errors import EffarchError


@contextmanager
def atomic_write(path: Path, *, prefix: str | None = None, suffix: str = ".tmp") -> Iterator[BinaryIO]:
    """A binary file that appears at ``path`` only when the block ends without an exception.

    It is written next to ``path`` (same file system, so the final rename is atomic): a reader sees
    the old file or the whole new one, and a failure removes the temporary file.
    """
    fd, tmp = tempfile.mkstemp(prefix=prefix or f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.chmod(tmp, 0o644)  # mkstemp makes files private; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def import_python_file(path: Path, prefix: str) -> Any:
    """Import a user's ``.py`` file as a module; anything it raises becomes one EffarchError line."""
    name = f"{prefix}_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise EffarchError(f"cannot import '{path}' as Python; is it a .py file?")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's file may raise anything while importing
        del sys.modules[name]
        text = str(e).strip()
        first = text.splitlines()[0] if text else type(e).__name__
        raise EffarchError(f"importing '{path}' failed: {type(e).__name__}: {first}") from None
    return module
