"""The pass manager: the pass contract, the registry, pipeline text, rules, instruments, plugins.

Callers import from this package; its modules are the parts::

    import passes  # registers every pass, effarch's and installed plugins'
    from compiler.pass_manager import PassContext, PassManager, parse_pipeline

    result = PassManager(parse_pipeline("fixpoint<8>(fold-constants,eliminate-dead-code)"),
                         PassContext(opt_level=2)).run(graph)

The pass manager never imports ``passes``: passes depend on it, not the other way round. The -O
pipelines are data about passes, so they live with them (``passes.pipelines``).
Pipeline grammar: see ``compiler.pass_manager.pipeline``.
"""

from __future__ import annotations

from compiler.pass_manager.base import Note, Pass, PassContext, PassResult, Placement
from compiler.pass_manager.fingerprint import Fingerprint, fingerprint
from compiler.pass_manager.instruments import (
    PrintAfterChangeInstrument,
    SaveStagesInstrument,
    TimingInstrument,
    VerifyEachInstrument,
)
from compiler.pass_manager.manager import Instrument, PassManager, PassRecord, PipelineResult
from compiler.pass_manager.pipeline import FixpointGroup, PassSpec, Pipeline, parse_one_pass, parse_pipeline
from compiler.pass_manager.registry import get_pass, pass_package, register_pass, registered_passes

__all__ = [
    "Fingerprint", "FixpointGroup", "Instrument", "Note", "Pass", "PassContext", "PassManager", "PassRecord",
    "PassResult", "PassSpec", "Pipeline", "PipelineResult", "Placement", "PrintAfterChangeInstrument",
    "SaveStagesInstrument", "TimingInstrument", "VerifyEachInstrument", "fingerprint", "get_pass",
    "parse_one_pass", "parse_pipeline", "pass_package", "register_pass", "registered_passes",
]
