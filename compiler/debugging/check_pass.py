"""``effarch check-pass``: one registered pass against the checks every pass must pass.

The pass runs on zoo models (the small ones unless asked for all) and on seeded random graphs
(``random_graphs``); on each the checks of ``pass_checks`` run: honest ``modified``, the verifier,
numbers against onnxruntime (per-dtype tolerances, or the one a lossy pass declares), a second run
that changes nothing, and constant payloads left unwritten. A crash counts as a failure of the case.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from compiler.debugging import pass_checks as checks
from compiler.debugging.random_graphs import random_graph
from compiler.ir import Graph
from compiler.pass_manager import Pass, PassContext, PassManager, fingerprint
from compiler.text import table

SMALL_ZOO = ("mlp", "digits_cnn", "gpt")
CHECKS = ("honest", "verifier", "numbers", "idempotent", "payloads")


@dataclass
class Case:
    name: str
    graph: Graph
    inputs: dict[str, np.ndarray]


@dataclass
class CaseResult:
    case: str
    nodes: tuple[int, int]
    modified: bool
    problems: dict[str, str] = field(default_factory=dict)  # check -> what went wrong

    @property
    def ok(self) -> bool:
        return not self.problems


def zoo_cases(names: Iterable[str], seed: int = 0) -> Iterator[Case]:
    from compiler import zoo
    from compiler.driver import load_model

    for name in names:
        yield Case(f"zoo:{name}", load_model(f"zoo:{name}").graph, zoo.get(name).sample_inputs(seed))


def random_cases(count: int, seed: int = 0) -> Iterator[Case]:
    from compiler.numerics.reference import random_inputs

    for s in range(seed, seed + count):
        g = random_graph(s)
        yield Case(f"random:{s}", g, random_inputs(g, s))


def check_case(pass_: Pass, case: Case, ctx: PassContext, before: str = "") -> CaseResult:
    graph = PassManager(before, ctx).run(case.graph.clone()).graph if before else case.graph
    payloads = checks.payload_digests(graph)
    work = graph.clone()
    fp = fingerprint(work)
    try:
        result = pass_.run(work, ctx)
    except Exception as exc:  # a crash is this case's verdict, not the end of the check
        return CaseResult(case.name, (len(graph.nodes), 0), False, {"runs": f"{type(exc).__name__}: {exc}"})
    problems = {
        "honest": checks.honesty_problem(pass_, fp == fingerprint(result.graph), result.modified),
        "verifier": checks.verifier_problem(pass_, result.graph),
    }
    if problems["verifier"] is None:
        tol = checks.declared_tolerance(pass_)
        problems["numbers"] = checks.numbers_problem(graph, result.graph, case.inputs, tol)
        problems["idempotent"] = checks.second_run_problem(pass_, result.graph, ctx)
    if checks.payload_digests(graph) != payloads:
        problems["payloads"] = f"pass '{pass_.name}' wrote into a constant array of its input graph"
    found = {k: v for k, v in problems.items() if v is not None}
    return CaseResult(case.name, (len(graph.nodes), len(result.graph.nodes)), result.modified, found)


def results_table(results: list[CaseResult]) -> str:
    rows = [[r.case, _nodes(r), "yes" if r.modified else "no", *(_verdict(r, c) for c in CHECKS),
             "pass" if r.ok else "FAIL"] for r in results]
    return table(["case", "nodes", "changed", *CHECKS, "result"], rows, "lrl" + "l" * len(CHECKS) + "l")


def _nodes(r: CaseResult) -> str:
    return f"{r.nodes[0]} -> {'-' if 'runs' in r.problems else r.nodes[1]}"


def _verdict(r: CaseResult, check: str) -> str:
    if "runs" in r.problems:
        return "crashed"
    return "FAIL" if check in r.problems else "ok"


def failure_details(results: list[CaseResult]) -> str:
    lines = [f"{r.case}: {check}: {_first_line(why)}" for r in results for check, why in r.problems.items()]
    return "\n".join(lines)


def _first_line(text: str) -> str:
    """numpy's mismatch reports span lines; the first two say which output and by how much."""
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()][:3]
    return "; ".join(kept)
