"""quantize-embedding: an embedding table stored as int8 rows, dequantized after the lookup.

    Gather(T, ids)  ->  Cast(Gather(Tq, ids)) * Gather(s, ids)        T ~= Tq * s, one s per row

A Gather from a constant float table (axis 0) with run-time indices, such as a transformer's word
embeddings, keeps its table as i8 with one symmetric scale per row (all 127 levels: no dot
product reads it, so no 7-bit limit). Only the gathered rows are converted back to float, so the
table costs a quarter of its bytes and the lookup does no more work. MiniLM-L6's 30522 x 384 word
table is 47 MB in float and 11.7 MB here; the transformer's MatMul passes cannot reach it.
Gathers with constant indices are left to fold-constants.
"""

from __future__ import annotations

from types import MappingProxyType

import numpy as np

from compiler.ir import DType, Graph, Node, TensorType, Value
from compiler.pass_manager import Note, Pass, PassContext, PassResult, register_pass
from compiler.pass_manager.rules import const

LEVELS = 127
MIN_ROWS = 256  # a smaller table is a lookup of a few constants, not worth a scale per row
MIN_ROW_LENGTH = 8  # and a row shorter than this costs almost as much as its float scale


def row_quantized(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(i8 table, f32 scales [rows, 1]) with table ~= q * scales, |q| <= 127."""
    flat = table.reshape(table.shape[0], -1).astype(np.float64)
    absmax = np.max(np.abs(flat), axis=1, keepdims=True)
    scales = np.where(absmax > 0, absmax, 1.0) / LEVELS
    q = np.clip(np.rint(flat / scales), -LEVELS, LEVELS).astype(np.int8).reshape(table.shape)
    return q, scales.astype(np.float32)


def _refusal(n: Node, min_rows: int) -> str | None:
    table = const(n.inputs[0])
    if table is None:
        return "its table is not a constant"
    if table.dtype != np.float32 or table.ndim < 2:
        return f"its table is {table.dtype} of rank {table.ndim}, not an f32 matrix"
    if int(n.attr("axis", 0)) != 0:
        return "it gathers along an axis other than 0 (rows)"
    if table[0].size < MIN_ROW_LENGTH:
        return f"its rows have {table[0].size} values (a scale per row would save little)"
    if table.shape[0] < min_rows:
        return f"its table has {table.shape[0]} rows (fewer than {min_rows})"
    if const(n.inputs[1]) is not None:
        return "its indices are constant (fold-constants computes it)"
    return None


def _rewrite(g: Graph, n: Node) -> None:
    table_value, ids = n.inputs[0], n.inputs[1]
    assert table_value is not None and table_value.const is not None and ids is not None
    q, scales = row_quantized(table_value.const)
    out = n.outputs[0]
    shape = out.type.shape if out.type is not None else None
    ids_shape = ids.type.shape if ids.type is not None else None
    scale_shape = None if ids_shape is None else (*ids_shape, 1)
    prov = n.provenance.rewritten(PASS, "rows")

    def node(op: str, inputs: list[Value], t: TensorType, **attrs: int) -> Value:
        return g.make_node(op, inputs, dict(attrs), types=[t], before=n, provenance=prov, name=n.name).outputs[0]

    rows = node("Gather", [g.add_constant(f"{table_value.name}_i8", q), ids], TensorType(DType.I8, shape), axis=0)
    row_scales = node("Gather", [g.add_constant(f"{table_value.name}_row_scale", scales), ids],
                      TensorType(DType.F32, scale_shape), axis=0)
    y = node("Cast", [rows], TensorType(DType.F32, shape), to=DType.F32.onnx_code)
    y = node("Mul", [y, row_scales], TensorType(DType.F32, shape))
    g.replace_value(out, y)
    out.name, y.name = y.name, out.name  # the lookup keeps its name (graph outputs, diffs)
    g.remove_node(n)


@register_pass
class QuantizeEmbedding(Pass):
    name = "quantize-embedding"
    description = "int8 embedding tables (one scale per row), dequantized after the Gather"
    option_defaults = MappingProxyType({"min_rows": MIN_ROWS, "keep_float": ()})
    tolerance = 0.02

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        notes: list[Note] = []
        keep = set(self.options["keep_float"])
        changed = False
        for n in graph.nodes_snapshot():
            if n.domain or n.op != "Gather" or n.outputs[0].name in keep:
                continue
            reason = _refusal(n, int(self.options["min_rows"]))
            if reason:
                notes.append(Note.at(n, "embedding", reason))
                continue
            rows = n.inputs[0].const.shape[0]  # type: ignore[union-attr]  # checked by _refusal
            notes.append(Note.at(n, "embedding", f"int8 table, one scale per row ({rows} rows)", fired=True))
            _rewrite(graph, n)
            changed = True
        return PassResult(graph, changed, notes)


PASS = QuantizeEmbedding.name
