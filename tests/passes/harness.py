"""The shared pass test harness: every transforming pass gets the same checks from here.

The checks themselves live in ``compiler.debugging.pass_checks``, so that ``effarch check-pass`` and
the tests of passes written outside this repository run exactly the same ones.

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
import textwrap
from collections.abc import Callable

import numpy as np

from compiler.debugging.pass_checks import (
    Tolerance,
    declared_tolerance,
    honesty_problem,
    numbers_problem,
    payload_digests,
    second_run_problem,
    verifier_problem,
)
from compiler.ir import Graph
from compiler.ir.parser import parse_graph
from compiler.ir.printer import print_graph
from compiler.ir.verifier import verify
from compiler.numerics.reference import random_inputs
from compiler.pass_manager import Pass, PassContext, PassResult, fingerprint

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
