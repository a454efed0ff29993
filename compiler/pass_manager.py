"""The pass manager: the pass contract, the registry, pipeline text, instruments, default pipelines.

The parts live in ``compiler.passmgr``; this module is the one place callers import from::

    import passes  # registers every pass
    from compiler.pass_manager import PassContext, PassManager, parse_pipeline

    result = PassManager(parse_pipeline("fixpoint<8>(fold-constants,eliminate-dead-code)"),
                         PassContext(opt_level=2)).run(graph)

Pipeline grammar: see ``compiler.passmgr.pipeline``.
"""

from __future__ import annotations

from compiler.passmgr.base import Note, Pass, PassContext, PassResult
from compiler.passmgr.fingerprint import Fingerprint, fingerprint
from compiler.passmgr.instruments import (
    PrintAfterChangeInstrument,
    SaveStagesInstrument,
    TimingInstrument,
    VerifyEachInstrument,
)
from compiler.passmgr.manager import Instrument, PassManager, PassRecord, PipelineResult
from compiler.passmgr.pipeline import FixpointGroup, PassSpec, Pipeline, parse_pipeline
from compiler.passmgr.registry import get_pass, register_pass, registered_passes

# Run by the driver after the user's pipeline, even at -O0: TVM's Relax ops (reshape, expand,
# broadcast_to, ...) need shape arguments that are constants, and exporters compute shapes with
# Shape -> Gather -> Concat chains that only folding turns into constants.
REQUIRED_BEFORE_LOWERING = "fold-constants"

CLEANUP = "fold-constants,eliminate-dead-code"
FIXPOINT_ROUNDS = 8

# The passes of each level, in order; a name not registered (yet) is left out, so a level only
# ever names passes that exist. -O1 cleans up; -O2 adds folding (BatchNorm into convs,
# canonical forms of exporter patterns) and fusion; -O3 adds everything else. Constants are folded
# between canonicalisation and fold-batchnorm: canonical forms turn the exporter's CastLike into a
# Cast, and until that is folded a conv's zero bias is not a constant, so no BatchNorm would fold.
O1_PASSES = ("simplify", "fold-constants", "eliminate-dead-code")
O2_FOLDING = ("canonicalize-patterns", "fold-constants", "fold-batchnorm")
O3_EXTRA = ("eliminate-common-subexpressions", "propagate-shapes")
FUSION = "fuse-operators"


def default_pipeline(opt_level: int) -> str:
    """The pipeline for ``-O<opt_level>``: -O0 nothing, -O1 one cleanup, -O2 cleanup to a fixed
    point then folding and fusion, -O3 the same with every other pass in the fixed point."""
    if opt_level <= 0:
        return ""
    if opt_level == 1:
        return ",".join(_registered(O1_PASSES))
    loop = O1_PASSES if opt_level == 2 else (*O1_PASSES[:1], *O3_EXTRA, *O1_PASSES[1:])
    stages = [f"fixpoint<{FIXPOINT_ROUNDS}>({','.join(_registered(loop))})",
              *_registered((*O2_FOLDING, "fold-constants", FUSION, "eliminate-dead-code"))]
    return ",".join(stages)


def _registered(names: tuple[str, ...]) -> list[str]:
    import passes  # noqa: F401  (registers every pass; imported here because passes import this module)

    known = registered_passes()
    return [n for n in names if n in known]


__all__ = [
    "CLEANUP", "FUSION", "REQUIRED_BEFORE_LOWERING", "Fingerprint", "FixpointGroup", "Instrument", "Note", "Pass",
    "PassContext", "PassManager", "PassRecord", "PassResult", "PassSpec", "Pipeline", "PipelineResult",
    "PrintAfterChangeInstrument", "SaveStagesInstrument", "TimingInstrument", "VerifyEachInstrument",
    "default_pipeline", "fingerprint", "get_pass", "parse_pipeline", "register_pass", "registered_passes",
]
