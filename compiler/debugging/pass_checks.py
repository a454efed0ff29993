"""The checks every transforming pass must pass, shared by the test harness and ``effarch check-pass``.

Each check returns a problem (one sentence naming the pass and what went wrong) or None:
- ``honesty_problem``: ``modified`` tells the truth (structural fingerprint before and after);
- ``verifier_problem``: the IR verifier accepts the result;
- ``numbers_problem``: onnxruntime computes the same outputs before and after on the same inputs,
  within the per-dtype tolerances below (or a tolerance the pass declares, for lossy passes);
- ``second_run_problem``: a second run reports ``modified=False`` and changes nothing;
- ``payload_digests``: compare them before and after to see a pass write into a constant array.
tests/passes/harness.py asserts them one after another; ``effarch check-pass`` tabulates them.
"""

from __future__ import annotations

import hashlib

import numpy as np

from compiler.ir import DType, Graph, VerifyError, verify
from compiler.numerics.reference import run_onnxruntime
from compiler.pass_manager import Pass, PassContext, fingerprint

Tolerance = tuple[float, float]  # (rtol, atol)

# Reordering float arithmetic (folding, fusion) moves results by a few ulps, never more: these are
# a few ulps of each type at magnitude ~1 (random normal inputs). Integers and bools are exact.
TOLERANCES: dict[DType, Tolerance] = {
    DType.F64: (1e-12, 1e-14),
    DType.F32: (1e-5, 1e-6),
    DType.F16: (2e-3, 1e-3),
    DType.BF16: (2e-2, 1e-2),
}
EXACT: Tolerance = (0.0, 0.0)


def honesty_problem(pass_: Pass, unchanged: bool, modified: bool) -> str | None:
    if modified and unchanged:
        return f"pass '{pass_.name}' reported modified=True but changed nothing"
    if not modified and not unchanged:
        return f"pass '{pass_.name}' changed the graph but reported modified=False"
    return None


def verifier_problem(pass_: Pass, graph: Graph) -> str | None:
    try:
        verify(graph)
    except VerifyError as exc:
        return f"pass '{pass_.name}' left IR the verifier rejects: {'; '.join(str(exc).splitlines())}"
    return None


def numbers_problem(before: Graph, after: Graph, inputs: dict[str, np.ndarray],
                    tol: Tolerance | None = None) -> str | None:
    """Why the outputs of ``after`` differ from those of ``before`` beyond tolerance, or None."""
    want = list(run_onnxruntime(before, inputs).values())
    got = list(run_onnxruntime(after, inputs).values())
    if len(want) != len(got):
        return f"output count changed from {len(want)} to {len(got)}"
    for value, w, g in zip(before.outputs, want, got, strict=True):
        if w.shape != g.shape or w.dtype != g.dtype:
            return f"output %{value.name}: {g.dtype}{list(g.shape)} after the pass, {w.dtype}{list(w.shape)} before"
        rtol, atol = tol or tolerance(w.dtype)
        try:
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol,
                                       err_msg=f"output %{value.name} differs after the pass")
        except AssertionError as exc:
            return str(exc).strip()
    return None


def tolerance(dtype: np.dtype) -> Tolerance:
    try:
        return TOLERANCES.get(DType.from_numpy(dtype), EXACT)
    except ValueError:
        return EXACT


def declared_tolerance(pass_: Pass) -> Tolerance | None:
    """The tolerance a lossy pass declares (``Pass.tolerance``), or None for the per-dtype ones."""
    return (pass_.tolerance, pass_.tolerance) if pass_.tolerance else None


def second_run_problem(pass_: Pass, graph: Graph, ctx: PassContext) -> str | None:
    again = graph.clone()
    fp = fingerprint(again)
    second = pass_.run(again, ctx)
    if fingerprint(second.graph) != fp:
        return f"a second run of pass '{pass_.name}' changed the graph again"
    if second.modified:
        return f"a second run of pass '{pass_.name}' reported modified=True"
    return None


def payload_digests(graph: Graph) -> dict[str, str]:
    return {k: hashlib.sha256(np.ascontiguousarray(v.const).tobytes()).hexdigest()
            for k, v in graph.constants.items() if v.const is not None}
