"""Row reductions: softmax, layer normalisation, sums and maxima along the innermost axis.

These are several blocks (max, exp-sum, normalise) over the same leading axes. TVM's dlight CPU
``Reduction`` rule already does what they need: leading axes across cores, every block computed
under them, the elementwise blocks vectorised and the reductions unrolled by vector-sized chunks.
"""

from __future__ import annotations

from tvm import s_tir
from tvm.s_tir.dlight.cpu import Reduction
from tvm.target import Target

from targets.schedules.machine import Machine

_DLIGHT_REDUCTION = Reduction()


def schedule_row_reduction(sch: s_tir.Schedule, m: Machine, target: Target) -> s_tir.Schedule | None:
    """dlight's schedule of the function, or None when the rule does not apply."""
    result = _DLIGHT_REDUCTION.apply(sch.mod["main"], target, False)
    if isinstance(result, list):
        result = result[0] if result else None
    return result
