"""``effarch check-pass``: every registered pass on zoo models and random graphs, a pass/fail table."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.cli.main import main
from compiler.debugging.check_pass import Case, check_case
from compiler.debugging.random_graphs import random_graph
from compiler.ir import Graph, print_graph
from compiler.numerics.reference import random_inputs
from compiler.pass_manager import Pass, PassContext, PassResult, registry


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


class Blur(Pass):
    """Lossy on purpose: scales float constants by 1.001 (once), within the tolerance it declares."""

    name = "test-blur"
    description = "test pass: moves float constants by 0.1%"
    tolerance = 1e-2

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        targets = [v for v in graph.constants.values() if v.const is not None and v.const.dtype.kind == "f"
                   and v.uses and not v.name.startswith("blurred") and not np.all(v.const == 0)]
        for v in targets:
            graph.replace_value(v, graph.add_constant(graph.fresh_name("blurred"), v.const * np.float32(1.001)))
        graph.remove_unused_constants()
        return PassResult(graph, bool(targets))


def test_shipped_pass_passes_on_zoo_and_random_graphs(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "check-pass", "fold-batchnorm", "--models", "mlp,digits_cnn", "--random", "3")
    assert code == 0, err
    rows = [line for line in out.splitlines() if line.startswith(("zoo:", "random:"))]
    assert [r.split()[0] for r in rows] == ["zoo:mlp", "zoo:digits_cnn", "random:0", "random:1", "random:2"]
    assert all(r.split()[-1] == "pass" for r in rows)
    assert "digits_cnn" in out and "yes" in out  # the CNN has BatchNorm to fold: checked after a real change


def test_wrong_numbers_fail_with_a_table_and_one_error_line(capsys: pytest.CaptureFixture[str],
                                                           flip_sign: str) -> None:
    code, out, err = _run(capsys, "check-pass", flip_sign, "--models", "mlp", "--random", "2")
    assert code == 1
    assert "zoo:mlp" in out and "FAIL" in out and "zoo:mlp: numbers: " in out
    assert err.count("\n") == 1 and err.startswith(f"effarch: error: pass '{flip_sign}' failed ")


def test_a_lossy_pass_is_held_to_the_tolerance_it_declares(monkeypatch: pytest.MonkeyPatch) -> None:
    g = random_graph(1)
    case = Case("random:1", g, random_inputs(g, 1))
    assert check_case(Blur(), case, PassContext()).ok
    monkeypatch.setattr(Blur, "tolerance", 0.0)
    assert set(check_case(Blur(), case, PassContext()).problems) == {"numbers"}


def test_a_crash_is_a_failed_case_not_the_end(crash: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "check-pass", crash, "--models", "mlp", "--random", "2")  # random:1 has a MatMul
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith(("zoo:", "random:"))}
    assert code == 1 and "crashed" in rows["random:1"] and rows["random:0"].split()[-1] == "pass"
    assert "random:1: runs: ValueError: MatMul is not handled" in out


def test_random_graphs_are_seeded_and_valid() -> None:
    assert print_graph(random_graph(5)) == print_graph(random_graph(5))
    assert print_graph(random_graph(5)) != print_graph(random_graph(6))


@pytest.mark.parametrize("argv", [["check-pass", "no-such-pass"], ["check-pass", "simplify,fold-constants"],
                                  ["check-pass", "simplify", "--models", "nope"]])
def test_bad_input_is_one_error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, _, err = _run(capsys, *argv)
    assert code == 1 and err.startswith("effarch: error: ") and err.count("\n") == 1


def test_plugin_registry_is_untouched_by_these_tests() -> None:
    assert "test-blur" not in registry.registered_passes()
