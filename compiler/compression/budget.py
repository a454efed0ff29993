"""Accuracy budgets: keep in float the fewest layers that hold the score within ``max_drop`` points.

The method of accuracy-aware quantization (NNCF's, in outline): score the fully quantized model;
if it loses more than the budget, measure each layer's sensitivity as the points regained by
keeping that layer alone in float, then return layers to float, most sensitive first, until the
score is within the budget. Each layer kept in float gets a note with its measured effect.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from compiler.ir import Graph
from compiler.pass_manager import Note

logger = logging.getLogger(__name__)


class Layer(Protocol):
    @property
    def index(self) -> int: ...  # position in the graph's node order

    @property
    def label(self) -> str: ...


L = TypeVar("L", bound=Layer)


def keep_float_within_budget(g: Graph, layers: Sequence[L], trial: Callable[[list[L]], Graph],
                             data: Any) -> tuple[list[L], list[Note]]:
    """The layers to compress (in graph order) and notes on the ones kept in float."""
    budget, base = float(data.max_drop), data.baseline()
    full = data.score(trial(list(layers)))
    drop = full.drop_from(base)
    logger.info("all %d layers compressed: %s (fp32 %s), drop %.2f points", len(layers), full, base, drop)
    summary = Note("budget", f"fp32 {base}; all {len(layers)} layers compressed {full}: drop {drop:.2f} "
                             f"points, budget {budget:g}", fired=True)
    if drop <= budget:
        return list(layers), [summary]
    gains = _sensitivities(layers, trial, data, full.percent)
    chosen, notes = list(layers), [summary]
    for layer, gain in sorted(gains, key=lambda lg: -lg[1]):
        chosen = [x for x in chosen if x.index != layer.index]
        score = data.score(trial(chosen))
        drop = score.drop_from(base)
        notes.append(Note("budget", f"kept float: compressing it alone costs {gain:.2f} points "
                                    f"(most sensitive left); with it in float: {score}, drop {drop:.2f}",
                          node=layer.label, fired=True))
        if drop <= budget:
            return chosen, notes
    return chosen, notes


def _sensitivities(layers: Sequence[L], trial: Callable[[list[L]], Graph], data: Any,
                   full: float) -> list[tuple[L, float]]:
    """Per layer, the points regained when it alone stays float."""
    out = []
    for layer in layers:
        rest = [x for x in layers if x.index != layer.index]
        regained = data.score(trial(rest)).percent - full
        logger.info("sensitivity of %s: %.2f points", layer.label, regained)
        out.append((layer, regained))
    return out
