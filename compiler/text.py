"""Plain-text tables, the one format of effarch's reports (CLI, debugging instruments, benchmarks)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """A plain aligned text table; ``align`` has one 'l' or 'r' per column (default: first left)."""
    rows = [[str(c) for c in r] for r in rows]
    cols = [list(header)] + rows
    widths = [max(len(r[i]) for r in cols) for i in range(len(header))]
    align = align or "l" + "r" * (len(header) - 1)

    def fmt(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align, strict=True))

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]).rstrip()
