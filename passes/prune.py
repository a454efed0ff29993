"""prune-channels: structured pruning; removes whole output channels (and attention heads) of layers
with constant weights, and the matching inputs of every layer that reads them.

Options: ``ratio`` (the fraction of each group's channels to remove), ``flops`` (the fraction of
the model's FLOPs to remove instead), ``importance`` (``l1`` or ``l2`` norm of a channel's weights,
bias and additive constants), ``steps`` (levels of the sensitivity search), ``recalibrate``.

Which channels go together, and through which ops they are followed, is the analysis of
``passes/prune_follow.py``; a group it refuses is left whole, with its reason as a near-miss Note.
Without a budget every group loses the same ratio of its least important channels (for ``flops``,
the smallest ratio that reaches the target). With test data and a budget in ``PassContext.data``
(``--accuracy-data``, ``--max-accuracy-drop``) the per-group ratios come from measured
sensitivity (``passes/prune_search.py``). With calibration data the per-channel statistics of the
layers that lost inputs are re-estimated, and kept only if that measures better.

Pruning is lossy by design: with ``ratio=0`` and ``flops=0`` (the defaults) the pass only
analyses. A layer pruned once (its provenance says ``prune-channels:out-channels``) is not pruned
again, so a second run changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import MappingProxyType

import numpy as np

from compiler.compression import CompressionData
from compiler.errors import EffarchError
from compiler.ir import Graph
from compiler.numerics.accuracy import cosine_per_sample
from compiler.pass_manager import Note, Pass, PassContext, PassResult, register_pass
from passes.prune_apply import PASS_NAME, Layers, apply_plan, consumer_layers, importance, kept_channels
from passes.prune_calibrate import recalibrate
from passes.prune_follow import analyze
from passes.prune_groups import Analysis, Group
from passes.prune_search import Budget, Plan, for_flops, uniform, within_budget

log = logging.getLogger(__name__)
MARK = f"{PASS_NAME}:out-channels"


@register_pass
class PruneChannels(Pass):
    name = PASS_NAME
    description = "structured pruning: remove the least important output channels / heads, by ratio or FLOP target"
    option_defaults = MappingProxyType({"ratio": 0.0, "flops": 0.0, "importance": "l1", "steps": 4,
                                        "recalibrate": True})

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        if self.options["importance"] not in ("l1", "l2"):
            raise EffarchError(f"option 'importance' of pass '{self.name}' got '{self.options['importance']}'; "
                               "expected l1 or l2")
        for key in ("ratio", "flops"):
            if not 0.0 <= self.options[key] < 1.0:
                raise EffarchError(f"option '{key}' of pass '{self.name}' got {self.options[key]}; expected a "
                                   "fraction in [0, 1)")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        an = analyze(graph)
        notes = _refusals(an)
        groups = [g for g in an.roots() if not g.refusal and g.blocks > 1 and not _pruned_before(g)]
        notes += [Note.at(g.sources[0], "layer", "already pruned by prune-channels; not pruned again")
                  for g in an.roots() if not g.refusal and _pruned_before(g)]
        if not groups or (self.options["ratio"] == 0 and self.options["flops"] == 0):
            return PassResult(graph, False, notes)
        before = graph.clone()
        plan = self._plan(graph, groups, ctx)
        scores = importance(an, self.options["importance"])
        kept = {i: kept_channels(_by_index(groups, i), scores[i], n) for i, n in plan.remove.items() if n}
        layers = consumer_layers(an, kept)
        changed = apply_plan(an, kept)
        notes += _removal_notes(groups, plan, kept, self.options["importance"])
        if changed and self.options["recalibrate"]:
            graph, more = _recalibrate(ctx.data, before, graph, layers)
            notes += more
        return PassResult(graph, bool(changed), notes)

    def _plan(self, graph: Graph, groups: list[Group], ctx: PassContext) -> Plan:
        norm, ratio, flops = self.options["importance"], self.options["ratio"], self.options["flops"]
        data = ctx.data
        if data is not None and data.accuracy is not None and data.max_drop is not None:
            baseline = data.score(graph)
            recal = self.options["recalibrate"] and data.calibration is not None

            def drop(g: Graph, layers: Layers) -> float:
                """Points lost, after re-estimating statistics when that is on (the better of both)."""
                got = data.score(g).percent
                if recal:
                    trial = g.clone()
                    if recalibrate(data, graph, trial, layers):
                        got = max(got, data.score(trial).percent)
                return baseline.percent - got
            budget = Budget(drop, float(data.max_drop),
                            "FLOPs" if flops else "channels", flops or ratio, int(self.options["steps"]))
            plan = within_budget(graph, groups, budget, norm)
        elif flops:
            plan = for_flops(graph, groups, flops, norm)
        else:
            plan = Plan(uniform(groups, ratio), summary=f"uniform {ratio:.0%} of each layer's channels")
        log.info("prune-channels: %s", plan.summary)
        return plan


def _by_index(groups: list[Group], index: int) -> Group:
    return next(g for g in groups if g.index == index)


def _pruned_before(g: Group) -> bool:
    return any(MARK in s.provenance.rewrites for s in g.sources)


def _refusals(an: Analysis) -> list[Note]:
    return [Note.at(g.sources[0], "layer", f"not pruned: {g.refusal}") for g in an.roots() if g.refusal]


def _removal_notes(groups: list[Group], plan: Plan, kept: dict[int, np.ndarray], norm: str) -> list[Note]:
    notes = []
    for g in groups:
        left = len(kept[g.index]) if g.index in kept else g.channels
        unit = f" ({g.block}-channel heads)" if g.block > 1 else ""
        coupled = f", coupled with {len(g.sources) - 1} more" if len(g.sources) > 1 else ""
        why = plan.why.get(g.index) or plan.summary
        text = (f"{g.channels} -> {left} channels{unit}{coupled}; lowest {norm} importance removed; {why}")
        notes.append(Note.at(g.sources[0], "out-channels", text, fired=left < g.channels))
    return notes


def _recalibrate(data: object, before: Graph, after: Graph,
                 layers: Layers) -> tuple[Graph, list[Note]]:
    """``after`` with re-estimated statistics when calibration data is given and that scores better."""
    if not isinstance(data, CompressionData) or data.calibration is None or not layers:
        return after, []
    trial = after.clone()
    count = recalibrate(data, before, trial, layers)
    if not count:
        return after, []
    quality = _quality(data, before)
    without, with_ = quality(after), quality(trial)
    better = with_ > without
    text = (f"re-estimated the channel statistics of {count} layers on calibration data: {quality.__doc__} "
            f"{without:.2f} -> {with_:.2f}, {'kept' if better else 'discarded'}")
    return (trial if better else after), [Note("recalibrate", text, fired=better)]


def _quality(data: CompressionData, reference: Graph) -> Callable[[Graph], float]:
    """Top-1 (or cosine) on the test set when there is one, else cosine to ``reference`` on calibration."""
    if data.accuracy is not None:
        def score(g: Graph) -> float:
            """score on the test set"""
            return data.score(g).percent
        return score
    name = reference.outputs[0].name
    want = np.concatenate([b[name] for b in data.activations(reference, [name])])

    def cosine(g: Graph) -> float:
        """cosine (%) to the unpruned outputs on calibration data"""
        got = np.concatenate([b[name] for b in data.activations(g, [name])])
        return 100.0 * float(np.mean(cosine_per_sample(got, want)))
    return cosine
