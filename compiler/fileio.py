"""Files: writing them so that a failure never leaves a partial one behind, and importing a user's
Python file (``FILE.py:FUNCTION`` for models and data)."""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from compiler.errors import EffarchError


@contextmanager
def atomic_write(path: Path, *, prefix: str | None = None, suffix: str = ".tmp") -> Iterator[BinaryIO]:
    """A binary file that appears at ``path`` only when the block ends without an exception.

    It is written next to ``path`` (same file system, so the final rename is atomic): a reader sees
    the old file or the whole new one, and a failure removes the temporary file. Where the file
    system allows it the temporary file has no name until it is complete (``O_TMPFILE``), so even a
    process killed while writing (SIGKILL, out of memory) leaves nothing behind; a temporary name
    holds the writer's pid, and a later write next to it removes those whose writer is dead.
    """
    prefix = prefix or f".{path.name}."
    _remove_orphans(path.parent, prefix, suffix)
    fd, tmp = _open_temp(path.parent, prefix, suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the name is: no empty file after a crash
            if tmp is None:
                tmp = _temp_name(path.parent, prefix, suffix)
                _name_unnamed(f.fileno(), tmp)
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def _open_temp(folder: Path, prefix: str, suffix: str) -> tuple[int, str | None]:
    """An unnamed file in ``folder`` (name None), or a named one where the system has no O_TMPFILE."""
    fd, tmp = _open_unnamed(folder), None
    if fd is None:
        tmp = _temp_name(folder, prefix, suffix)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.fchmod(fd, 0o644)  # whatever the umask: outputs are ordinary files
    return fd, tmp


def _name_unnamed(fd: int, name: str) -> None:
    proc = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
    try:  # a dir fd makes Python call linkat(AT_SYMLINK_FOLLOW): link() would link the /proc symlink itself
        os.link(str(fd), name, src_dir_fd=proc)
    finally:
        os.close(proc)


def _open_unnamed(folder: Path) -> int | None:
    # Naming it later goes through /proc/self/fd (linkat needs no privilege that way).
    if not hasattr(os, "O_TMPFILE") or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o644)
    except OSError:  # EOPNOTSUPP, EISDIR: this file system has no unnamed files
        if not os.path.isdir(folder):
            raise  # a missing folder is the caller's error, not the file system's limit
        return None


def _temp_name(folder: Path, prefix: str, suffix: str) -> str:
    return str(folder / f"{prefix}{os.getpid()}.{secrets.token_hex(6)}{suffix}")


def _remove_orphans(folder: Path, prefix: str, suffix: str) -> None:
    """Remove temporary files of this kind whose writer no longer runs (killed between naming and
    renaming); files of live writers (another process writing the same output now) stay."""
    for tmp in folder.glob(f"{glob.escape(prefix)}*{glob.escape(suffix)}"):
        pid = tmp.name[len(prefix):].split(".")[0]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's process
        pass
    return True


def check_output_path(path: Path, what: str) -> None:
    """Fail before any work when ``path`` cannot be written: its folder is missing, or a folder
    stands where the file would go."""
    if path.is_dir():
        raise EffarchError(f"{what} '{path}' is a directory; give a file name inside it")
    if not path.parent.is_dir():
        raise EffarchError(f"{what} folder '{path.parent}' does not exist; create it first")


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
