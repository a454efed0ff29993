"""The checks every transforming pass must pass, shared by the test harness and ``effarch check-pass``.

Each check returns a problem (one sentence naming the pass and what went wrong) or None:
- ``honesty_problem``: ``modified`` tells the truth (structural fingerprint before and after);
- ``verifier_problem``: the IR verifier accepts the result;
- ``numbers_problem``: onnxruntime computes the same outputs before and after on the same inputs,
  within the per-dtype tolerances below (or a tolerance the pass declares, for lossy passes);
- ``second_run_problem``: a second run reports ``modified=False`` and changes nothing;
- ``payload_digests``: compare them before and after to see a pass write into a constant array.
``effarch check-pass`` tabulates them; ``check_pass`` asserts them one after another (it is the
harness of tests/passes/ and of the tests ``effarch new-pass`` writes), after checking the result's
structure against the expected IR text, and ``check_not_fired`` asserts that a pass left a graph
alone and said why in a Note (the negative case every pass test has).
"""

from __future__ import annotations

import difflib
import hashlib
import textwrap
from collections.abc import Callable

import numpy as np

from compiler.ir import DType, Graph, VerifyError, parse_graph, print_graph, verify
from compiler.numerics.reference import random_inputs, run_onnxruntime
from compiler.pass_manager import Pass, PassContext, PassResult, fingerprint

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


# ---- the harness: the checks as assertions ----------------------------------------------------
Expect = str | Callable[[Graph], object] | None


def check_pass(pass_: Pass, before: Graph, *, expect: Expect = None,
               inputs: dict[str, np.ndarray] | None = None, seed: int = 0,
               tol: Tolerance | None = None, ctx: PassContext | None = None) -> PassResult:
    """Run ``pass_`` on a clone of ``before``, check everything listed above, return the result."""
    ctx = ctx or PassContext()
    verify(before)
    payloads = payload_digests(before)
    graph = before.clone()
    fp_before = fingerprint(graph)
    result = pass_.run(graph, ctx)
    _no_problem(honesty_problem(pass_, fp_before == fingerprint(result.graph), result.modified))
    _no_problem(verifier_problem(pass_, result.graph))
    _check_expect(result.graph, expect)
    feeds = inputs if inputs is not None else random_inputs(before, seed)
    _no_problem(numbers_problem(before, result.graph, feeds, tol or declared_tolerance(pass_)))
    _no_problem(second_run_problem(pass_, result.graph, ctx))
    assert payload_digests(before) == payloads, f"pass '{pass_.name}' wrote into an input constant array"
    return result


def check_not_fired(pass_: Pass, graph: Graph, reason_contains: str,
                    ctx: PassContext | None = None) -> PassResult:
    """Assert ``pass_`` changes nothing on ``graph`` and a Note explains why with ``reason_contains``."""
    clone = graph.clone()
    fp_before = fingerprint(clone)
    result = pass_.run(clone, ctx or PassContext())
    assert not result.modified, f"pass '{pass_.name}' fired (modified=True); expected it not to"
    assert fingerprint(result.graph) == fp_before, f"pass '{pass_.name}' changed the graph but denied it"
    skipped = [str(n) for n in result.notes if not n.fired]
    assert any(reason_contains in n.reason for n in result.notes if not n.fired), (
        f"no note of pass '{pass_.name}' says {reason_contains!r}; its notes: {skipped}")
    return result


def payload(graph: Graph, name: str) -> np.ndarray:
    """The array of constant %name (asserting it exists and has one)."""
    v = graph.constants.get(name)
    assert v is not None and v.const is not None, f"%{name} is not a constant with a payload"
    return v.const


def _no_problem(problem: str | None) -> None:
    assert problem is None, problem


def _check_expect(graph: Graph, expect: Expect) -> None:
    if expect is None:
        return
    if callable(expect):
        ok = expect(graph)
        name = getattr(expect, "__name__", expect)
        assert ok is None or ok, f"expectation {name} failed on:\n{print_graph(graph)}"
        return
    want = print_graph(parse_graph(textwrap.dedent(expect).strip() + "\n"))
    got = print_graph(graph)
    lines = difflib.unified_diff(want.splitlines(), got.splitlines(), "expected", "got", lineterm="")
    diff = "\n".join(lines)
    assert got == want, f"pass result differs from the expected IR:\n{diff}"
