"""TVM's C++ log lines ("[12:00:00] .../transform.h:1261: Warning: Fast mode segfaults ...") go
straight to file descriptor 2, past Python's logging. ``captured_native_logs`` catches them while
TVM works and hands them to this module's logger at INFO (``effarch -v`` shows them);
any other text written to the descriptor meanwhile is passed through unchanged.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import sys
import tempfile
import traceback
from collections.abc import Iterator

logger = logging.getLogger(__name__)

# "[15:49:08] /project/src/relax/ir/block_builder.cc:67: Warning: ..." (dmlc/TVM log format)
_TVM_LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] \S+\.(cc|h|cpp):\d+: ")


@contextlib.contextmanager
def captured_native_logs() -> Iterator[None]:
    """Route what native code writes to stderr through logging while the block runs."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):  # stderr replaced (pytest capture, IDEs): nothing to do
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield
        except BaseException as e:
            _release_frames(e)
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            sink.seek(0)
            _replay(sink.read().decode(errors="replace"))


def _release_frames(e: BaseException) -> None:
    """Let go of what the frames of a failure hold, while their destructors still write here: a
    Relax BlockBuilder that the failure left with open blocks warns "BlockBuilder destroyed with
    remaining blocks" when it dies, which was at exit, after the error line. The traceback keeps
    its file and line numbers; only the frames' local variables go."""
    traceback.clear_frames(e.__traceback__)
    gc.collect()  # the builder may sit in a reference cycle


def _replay(text: str) -> None:
    passthrough = []
    for line in text.splitlines():
        if _TVM_LINE.match(line):
            logger.info("tvm: %s", line)
        else:
            passthrough.append(line)
    if passthrough:
        sys.stderr.write("\n".join(passthrough) + "\n")
