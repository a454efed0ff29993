"""The shared pass test harness: every transforming pass gets the same checks from here.

``check_pass`` runs a pass on a clone of ``before`` and asserts:
1. ``modified`` is honest (structural fingerprint before/after);
2. the verifier accepts the result;
3. the result matches ``expect`` (IR text, compared after a parse/print round trip, or a callable);
4. onnxruntime computes the same numbers for both graphs on seeded random inputs, within the
   per-dtype tolerances below;
5. a second run reports ``modified=False`` and changes nothing;
6. no constant array of the input graph was written into.
``check_not_fired`` asserts a pass left a graph alone and said why in a Note.
"""

from __future__ import annotations

import difflib
import hashlib
import textwrap
from collections.abc import Callable

import numpy as np

from compiler.ir import DType, Graph
from compiler.ir.parser import parse_graph
from compiler.ir.printer import print_graph
from compiler.ir.verifier import verify
from compiler.pass_manager import Pass, PassContext, PassResult, fingerprint
from compiler.reference import random_inputs, run_onnxruntime

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

Expect = str | Callable[[Graph], object] | None


def check_pass(pass_: Pass, before: Graph, *, expect: Expect = None,
               inputs: dict[str, np.ndarray] | None = None, seed: int = 0,
               tol: Tolerance | None = None, ctx: PassContext | None = None) -> PassResult:
    """Run ``pass_`` on a clone of ``before``, check everything listed above, return the result."""
    ctx = ctx or PassContext()
    verify(before)
    payloads = _payload_digests(before)
    graph = before.clone()
    fp_before = fingerprint(graph)
    result = pass_.run(graph, ctx)
    _check_honest(pass_, fp_before == fingerprint(result.graph), result.modified)
    verify(result.graph)
    _check_expect(result.graph, expect)
    _check_numbers(before, result.graph, inputs if inputs is not None else random_inputs(before, seed), tol)
    _check_second_run(pass_, result.graph, ctx)
    assert _payload_digests(before) == payloads, f"pass '{pass_.name}' wrote into an input constant array"
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


def _check_honest(pass_: Pass, unchanged: bool, modified: bool) -> None:
    assert not (modified and unchanged), f"pass '{pass_.name}' reported modified=True but changed nothing"
    assert modified or unchanged, f"pass '{pass_.name}' changed the graph but reported modified=False"


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


def _check_numbers(before: Graph, after: Graph, inputs: dict[str, np.ndarray], tol: Tolerance | None) -> None:
    want = list(run_onnxruntime(before, inputs).values())
    got = list(run_onnxruntime(after, inputs).values())
    assert len(want) == len(got), f"output count changed from {len(want)} to {len(got)}"
    for value, w, g in zip(before.outputs, want, got, strict=True):
        assert w.shape == g.shape and w.dtype == g.dtype, (
            f"output %{value.name}: {g.dtype}{list(g.shape)} after the pass, {w.dtype}{list(w.shape)} before")
        rtol, atol = tol or _tolerance(w.dtype)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol,
                                   err_msg=f"output %{value.name} differs after the pass")


def _tolerance(dtype: np.dtype) -> Tolerance:
    try:
        return TOLERANCES.get(DType.from_numpy(dtype), EXACT)
    except ValueError:
        return EXACT


def _check_second_run(pass_: Pass, graph: Graph, ctx: PassContext) -> None:
    again = graph.clone()
    fp = fingerprint(again)
    second = pass_.run(again, ctx)
    assert fingerprint(second.graph) == fp, f"a second run of pass '{pass_.name}' changed the graph again"
    assert not second.modified, f"a second run of pass '{pass_.name}' reported modified=True"


def _payload_digests(graph: Graph) -> dict[str, str]:
    return {k: hashlib.sha256(np.ascontiguousarray(v.const).tobytes()).hexdigest()
            for k, v in graph.constants.items() if v.const is not None}
