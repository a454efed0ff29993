"""Run the effarch command line and SIGKILL it at a chosen moment, to test what a killed process
leaves behind: ``python killed_cli.py MOMENT ARGS...``. Nothing is cleaned up, as with ``kill -9``.

MOMENT is ``zip-member:NAME``, when the artifact's zip member NAME is about to be written (its
temporary file holds the members before it: the middle of the write), or ``rename:TEXT``, when a
finished file is about to be renamed onto a path that contains TEXT (written, not yet in place).
"""

from __future__ import annotations

import os
import signal
import sys
import zipfile
from typing import Any

from compiler.cli.main import main


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(moment: str) -> None:
    kind, _, arg = moment.partition(":")
    if kind == "zip-member":
        write = zipfile.ZipFile.writestr

        def writestr(self: zipfile.ZipFile, info: Any, data: Any, *rest: Any, **kw: Any) -> None:
            if getattr(info, "filename", info) == arg:
                _die()
            write(self, info, data, *rest, **kw)

        setattr(zipfile.ZipFile, "writestr", writestr)  # noqa: B010  # a plain assignment is a mypy error
    elif kind == "rename":
        replace = os.replace

        def replace_then(src: Any, dst: Any, *rest: Any, **kw: Any) -> None:
            if arg in os.fspath(dst):
                _die()
            replace(src, dst, *rest, **kw)

        os.replace = replace_then
    else:
        raise SystemExit(f"unknown moment '{moment}': zip-member:NAME or rename:TEXT")


if __name__ == "__main__":
    _arm(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
