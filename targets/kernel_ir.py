"""Small pieces the kernels written directly in TIR with TVM's IR builder share (``targets.attention_kernel``,
``targets.gemm_kernel``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from tvm import tirx


def broadcast(shape: Sequence[int], index: Sequence[tirx.Expr]) -> list[tirx.Expr]:
    """``index`` into a tensor of ``shape`` broadcast to ``len(index)`` dims (numpy's rules)."""
    lead = len(index) - len(shape)
    return [tirx.IntImm("int32", 0) if n == 1 else index[lead + i] for i, n in enumerate(shape)]


def unravel(shape: Sequence[int], flat: tirx.Expr) -> list[tirx.Expr]:
    """The row-major index into ``shape`` of element ``flat``."""
    out = []
    for n in reversed(shape):
        out.append(flat % n)
        flat = flat // n
    return list(reversed(out))


@contextlib.contextmanager
def when(cond: tirx.Expr | None) -> Iterator[None]:
    """The statements built inside, under ``if cond`` (unconditional for None)."""
    from tvm.script.ir_builder import tirx as T

    if cond is None:
        yield
        return
    with T.If(cond), T.Then():
        yield
