"""How many blocks each group of prune-channels loses: a uniform ratio, a uniform ratio found for
a FLOP target, or per-layer ratios chosen by measured sensitivity to stay within an accuracy budget.

The budget search measures, on the user's test set, each group pruned alone at ``steps`` levels
(1/steps, 2/steps, ...), then grows the plan greedily: the next step is the one that costs the
fewest points per unit of saving (channels or FLOPs), measured again on the combined plan; a step
that breaks the budget is undone and its group stops there. It ends when the target is met or no
step fits the budget, and says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from compiler.ir import Graph
from compiler.ir.stats import graph_stats
from passes.prune_apply import Layers, pruned_copy
from passes.prune_groups import Group

log = logging.getLogger(__name__)

BISECTION_STEPS = 12
# A step that costs nothing still costs this much, so savings decide among free steps.
MIN_COST = 1e-3


@dataclass
class Plan:
    remove: dict[int, int]  # group index -> blocks removed
    why: dict[int, str] = field(default_factory=dict)
    summary: str = ""


def uniform(groups: list[Group], ratio: float) -> dict[int, int]:
    """``ratio`` of each group's blocks (rounded down), always keeping one."""
    return {g.index: min(int(ratio * g.blocks + 1e-9), g.blocks - 1) for g in groups}


def flops(g: Graph) -> int:
    return graph_stats(g).known_flops


def for_flops(graph: Graph, groups: list[Group], target: float, norm: str) -> Plan:
    """The smallest uniform ratio that removes ``target`` of the FLOPs (bisection)."""
    base = flops(graph)
    lo, hi = 0.0, 1.0
    if _saved(graph, uniform(groups, hi), norm, base) < target:
        plan = uniform(groups, hi)
        return Plan(plan, summary=f"even keeping one block per layer removes only "
                                  f"{_saved(graph, plan, norm, base):.1%} of the FLOPs, short of {target:.0%}")
    for _ in range(BISECTION_STEPS):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _saved(graph, uniform(groups, mid), norm, base) < target else (lo, mid)
    plan = uniform(groups, hi)
    return Plan(plan, summary=f"uniform {hi:.1%} of each layer's channels removes "
                              f"{_saved(graph, plan, norm, base):.1%} of the FLOPs (target {target:.0%})")


def _saved(graph: Graph, remove: dict[int, int], norm: str, base: int) -> float:
    return 1.0 - flops(pruned_copy(graph, remove, norm)[0]) / base if base else 0.0


Drop = Callable[[Graph, Layers], float]  # points a pruned graph (and its changed layers) lost


@dataclass
class Budget:
    drop: Drop
    max_drop: float
    metric: str  # "channels" or "FLOPs"
    target: float
    steps: int = 4


def within_budget(graph: Graph, groups: list[Group], budget: Budget, norm: str) -> Plan:
    """Per-group block counts by measured sensitivity; see the module docstring."""
    base, total = flops(graph), sum(g.channels for g in groups)
    levels = {g.index: _levels(g, budget.steps) for g in groups}
    by_index = {g.index: g for g in groups}

    def saving(remove: dict[int, int], copy: Graph) -> float:
        if budget.metric == "FLOPs":
            return 1.0 - flops(copy) / base if base else 0.0
        return sum(by_index[i].block * n for i, n in remove.items()) / total if total else 0.0

    sens: dict[int, list[tuple[float, float]]] = {}
    for g in groups:
        sens[g.index] = [(0.0, 0.0)]
        for n in levels[g.index][1:]:
            copy, layers = pruned_copy(graph, {g.index: n}, norm)
            sens[g.index].append((budget.drop(copy, layers), saving({g.index: n}, copy)))
    state = dict.fromkeys(levels, 0)
    stopped: dict[int, str] = {}
    saved, drop = 0.0, 0.0
    while saved < budget.target:
        step = _cheapest(state, sens, stopped)
        if step is None:
            break
        trial = {**state, step: state[step] + 1}
        remove = {i: levels[i][lv] for i, lv in trial.items()}
        copy, layers = pruned_copy(graph, remove, norm)
        got = budget.drop(copy, layers)
        if got > budget.max_drop:
            stopped[step] = f"going to {levels[step][trial[step]]} of {by_index[step].blocks} blocks " \
                            f"cost {got:.2f} points together, over the budget of {budget.max_drop:g}"
            continue
        state, saved, drop = trial, saving(remove, copy), got
    remove = {i: levels[i][lv] for i, lv in state.items()}
    why = {i: _why(by_index[i], sens[i], levels[i], state[i], stopped.get(i)) for i in state}
    met = "met" if saved >= budget.target else "not met within the budget"
    summary = (f"removed {saved:.1%} of the {budget.metric} (target {budget.target:.0%}, {met}) for a "
               f"measured drop of {drop:.2f} points (budget {budget.max_drop:g})")
    return Plan(remove, why, summary)


def _levels(g: Group, steps: int) -> list[int]:
    """Distinct block counts at 0, 1/steps, 2/steps, ... of the group, keeping one block."""
    counts = sorted({min(int(k * g.blocks / steps), g.blocks - 1) for k in range(steps)})
    return counts


def _cheapest(state: dict[int, int], sens: dict[int, list[tuple[float, float]]],
              stopped: dict[int, str]) -> int | None:
    best, best_cost = None, float("inf")
    for i, lv in state.items():
        if i in stopped or lv + 1 >= len(sens[i]):
            continue
        (d0, s0), (d1, s1) = sens[i][lv], sens[i][lv + 1]
        cost = max(d1 - d0, 0.0) + MIN_COST
        gain = max(s1 - s0, 1e-12)
        if cost / gain < best_cost:
            best, best_cost = i, cost / gain
    return best


def _why(g: Group, sens: list[tuple[float, float]], levels: list[int], level: int, stopped: str | None) -> str:
    measured = ", ".join(f"{levels[k] * g.block}ch: {d:+.2f}" for k, (d, _) in enumerate(sens) if k)
    reason = f"; stopped: {stopped}" if stopped else ""
    return f"sensitivity alone (points lost) {measured or 'not measured'}{reason}"
