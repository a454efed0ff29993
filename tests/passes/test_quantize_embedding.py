"""quantize-embedding: int8 rows of a constant table, dequantized after the Gather."""

from __future__ import annotations

import numpy as np

from compiler.ir import DType, Graph, TensorType
from passes.quantize_embedding import QuantizeEmbedding, row_quantized
from tests.passes.harness import check_not_fired, check_pass

ROWS, DIM = 300, 16


def lookup(table: np.ndarray) -> Graph:
    """ids[2, 5] -> Gather(table) -> + 1 (a reader of the looked-up rows)."""
    g = Graph()
    ids = g.add_input("ids", TensorType(DType.I64, (2, 5)))
    t = TensorType(DType.F32, (2, 5, DIM))
    rows = g.make_node("Gather", [g.add_constant("table", table), ids], {"axis": 0}, types=[t], output_names=["e"])
    y = g.make_node("Add", [rows.outputs[0], g.add_constant("one", np.ones(DIM, np.float32))], types=[t],
                    output_names=["y"])
    g.outputs = [y.outputs[0]]
    return g


def _table() -> np.ndarray:
    rng = np.random.default_rng(0)
    # rows of very different magnitudes: one scale per row keeps each one's relative error small
    return (rng.normal(0, 1, (ROWS, DIM)) * rng.uniform(0.01, 3, (ROWS, 1))).astype(np.float32)


def test_table_is_int8_per_row_and_lookups_keep_the_numbers() -> None:
    def int8_table(after: Graph) -> bool:
        gathers = [n for n in after.nodes if n.op == "Gather"]
        assert len(gathers) == 2, after.op_counts()
        tables = [n.inputs[0].const for n in gathers if n.inputs[0] is not None]
        assert sorted(str(t.dtype) for t in tables if t is not None) == ["float32", "int8"]
        assert all(t is not None and t.shape[0] == ROWS for t in tables)
        assert after.op_counts().get("Cast") == 1 and after.op_counts().get("Mul") == 1
        return True

    ids = np.random.default_rng(1).integers(0, ROWS, (2, 5)).astype(np.int64)
    half_step = float(row_quantized(_table())[1].max()) / 2  # the largest row's rounding bound (0.047)
    check_pass(QuantizeEmbedding(), lookup(_table()), expect=int8_table, inputs={"ids": ids},
               tol=(0.0, half_step * 1.001))


def test_row_scales_bound_each_rows_error() -> None:
    table = _table()
    q, scales = row_quantized(table)
    err = np.abs(q.astype(np.float32) * scales - table)
    assert q.dtype == np.int8 and scales.shape == (ROWS, 1)
    assert np.all(err <= scales / 2 + 1e-7)  # rounding: at most half a step of the row's own scale
    assert np.abs(q).max() == 127


def test_small_tables_and_constant_lookups_stay_float() -> None:
    check_not_fired(QuantizeEmbedding(), lookup(_table()[:100]), "fewer than 256")
    g = Graph()
    t = TensorType(DType.F32, (3, DIM))
    ids = g.add_constant("ids", np.array([0, 5, 7], np.int64))
    gather = g.make_node("Gather", [g.add_constant("table", _table()), ids], {"axis": 0}, types=[t],
                         output_names=["e"])
    g.outputs = [gather.outputs[0]]
    check_not_fired(QuantizeEmbedding(), g, "indices are constant")
