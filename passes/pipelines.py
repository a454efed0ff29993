"""The pipelines effarch runs: the passes of each -O level, and what lowering needs first.

Pipelines are data about passes, so they live with the passes; the pass manager never imports
this module. Every name in these tables must be a registered pass: a misspelt name fails when
``passes`` is imported (``check_tables``), never silently at compile time. Plugin passes with a
``Placement`` join the levels in the stage they name, after effarch's passes of that stage.
"""

from __future__ import annotations

from compiler.errors import EffarchError
from compiler.pass_manager import Placement, registered_passes
from compiler.pass_manager.registry import unknown_pass_message

# Run by the driver after the user's pipeline, even at -O0: TVM's Relax ops (reshape, expand,
# broadcast_to, ...) need shape arguments that are constants, and exporters compute shapes with
# Shape -> Gather -> Concat chains that only folding turns into constants.
REQUIRED_BEFORE_LOWERING = "fold-constants"

FIXPOINT_ROUNDS = 8

# -O1 cleans up; -O2 adds folding (BatchNorm into convs, canonical forms of exporter patterns) and
# fusion; -O3 adds everything else. Constants are folded between canonicalisation and
# fold-batchnorm: canonical forms turn the exporter's CastLike into a Cast, and until that is folded
# a conv's zero bias is not a constant, so no BatchNorm would fold.
O1_PASSES = ("simplify", "fold-constants", "eliminate-dead-code")
O2_FOLDING = ("canonicalize-patterns", "fold-constants", "fold-batchnorm", "fold-constants")
O3_EXTRA = ("eliminate-common-subexpressions", "propagate-shapes")
# merge-sibling-matmuls compares the epilogues fusion decided (Q, K, V: three FusedMatMul of one input
# become one), so it follows fuse-operators; the compression passes, inserted just before
# fuse-operators, still see one layer per product.
FUSION = ("fuse-operators", "merge-sibling-matmuls")
FINAL = ("eliminate-dead-code",)


def default_pipeline(opt_level: int) -> str:
    """The pipeline for ``-O<opt_level>``: -O0 nothing, -O1 one cleanup, -O2 cleanup to a fixed
    point then folding and fusion, -O3 the same with every other pass in the fixed point."""
    if opt_level <= 0:
        return ""
    cleanup = _cleanup(opt_level)
    if opt_level == 1:
        return ",".join(cleanup)
    stages = [f"fixpoint<{FIXPOINT_ROUNDS}>({','.join(cleanup)})", *O2_FOLDING,
              *_placed("folding", opt_level), *FUSION, *_placed("late", opt_level), *FINAL]
    return ",".join(stages)


def _cleanup(opt_level: int) -> list[str]:
    extra = O3_EXTRA if opt_level >= 3 else ()
    return [O1_PASSES[0], *extra, *O1_PASSES[1:-1], *_placed("cleanup", opt_level), O1_PASSES[-1]]


def _placed(stage: str, opt_level: int) -> list[str]:
    """Passes (plugins', typically) whose ``placement`` puts them in ``stage`` at this level."""
    return [name for name, cls in registered_passes().items()
            if _in_stage(cls.placement, stage, opt_level) and name not in _TABLED]


def _in_stage(placement: Placement | None, stage: str, opt_level: int) -> bool:
    return placement is not None and placement.stage == stage and opt_level >= placement.min_level


_TABLED = frozenset((*REQUIRED_BEFORE_LOWERING.split(","), *O1_PASSES, *O2_FOLDING, *O3_EXTRA, *FUSION, *FINAL))


def check_tables() -> None:
    """Every pass the tables name is registered; a misspelt name is an error here, at import."""
    known = registered_passes()
    for name in sorted(_TABLED):
        if name not in known:
            raise EffarchError(f"passes/pipelines.py names {unknown_pass_message(name)}")


check_tables()
