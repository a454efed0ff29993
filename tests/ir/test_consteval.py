"""The one constant evaluator: fold-constants and lowering compute the same values, ONNX's.

They used to disagree: lowering wrapped Gather indices around (numpy's ``mode="wrap"``) and each
had its own integer Div. Every case is checked against onnx's reference implementation and
through both users of the evaluator.
"""

from __future__ import annotations

import numpy as np
import pytest

from compiler.ir import Graph, Node
from compiler.ir.consteval import NotEvaluable, evaluate_op
from passes.fold_constants import evaluate_node, evaluate_with_reference
from targets.lowering import consteval as lowering_consteval


def _node(op: str, arrays: list[np.ndarray], **attrs: object) -> Node:
    g = Graph()
    ins = [g.add_constant(f"c{i}", a) for i, a in enumerate(arrays)]
    return g.make_node(op, ins, dict(attrs))


def _both(node: Node, arrays: list[np.ndarray]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """What fold-constants and lowering compute for ``node``; None where one refuses."""
    try:
        (folded,) = evaluate_node(node)
    except ValueError:
        folded = None
    lowered = lowering_consteval.evaluate(node, list(arrays), [a.shape for a in arrays])
    return folded, None if lowered is None else lowered[0]


@pytest.mark.parametrize(("a", "b"), [
    (np.array([-7, 7, -7, 7, 0, -1], np.int64), np.array([2, -2, -2, 2, 3, 4], np.int64)),
    (np.array([-9, 9, -128], np.int32), np.array([4, -4, 3], np.int32)),
    (np.array([7, 200], np.uint8), np.array([2, 3], np.uint8)),
])
def test_integer_div_truncates_toward_zero_in_folding_and_lowering(a: np.ndarray, b: np.ndarray) -> None:
    node = _node("Div", [a, b])
    (want,) = evaluate_with_reference(node, [a, b])
    folded, lowered = _both(node, [a, b])
    assert folded is not None and lowered is not None
    assert folded.dtype == want.dtype and folded.tolist() == want.tolist() == lowered.tolist()
    assert folded.tolist()[:1] == [int(np.trunc(a[0] / b[0]))]  # -7 / 2 -> -3, where numpy's // gives -4


def test_gather_counts_negative_indices_from_the_end_once() -> None:
    data, idx = np.arange(3, dtype=np.int64) * 10, np.array([-1, -3, 0], np.int64)
    node = _node("Gather", [data, idx], axis=0)
    (want,) = evaluate_with_reference(node, [data, idx])
    folded, lowered = _both(node, [data, idx])
    assert folded is not None and lowered is not None
    assert want.tolist() == folded.tolist() == lowered.tolist() == [20, 0, 0]


@pytest.mark.parametrize("index", [3, -4, 7])
def test_gather_outside_the_axis_is_refused_by_both_not_wrapped(index: int) -> None:
    data, idx = np.arange(3, dtype=np.int64), np.array([index], np.int64)
    node = _node("Gather", [data, idx], axis=0)
    with pytest.raises(ValueError, match="outside"):
        evaluate_op(node, [data, idx])
    assert _both(node, [data, idx]) == (None, None)


def test_ops_without_an_evaluator_say_so() -> None:
    node = _node("Tile", [np.arange(2), np.array([2])])
    with pytest.raises(NotEvaluable, match="Tile"):
        evaluate_op(node, [np.arange(2), np.array([2])])


def test_fold_constants_leaves_an_out_of_range_gather_with_a_reason() -> None:
    from compiler.ir.parser import parse_graph
    from passes.fold_constants import FoldConstants
    from tests.passes.harness import check_not_fired

    g = parse_graph("""
        graph main(%x: i64[1]) -> (%y) {
          %d = const i64[3] [1, 2, 3]
          %i = const i64[1] [5]
          %g = Gather(%d, %i) {axis=0} : i64[1]
          %y = Add(%x, %g) : i64[1]
        }
    """)
    check_not_fired(FoldConstants(), g, "Gather index outside [-3, 2]")
