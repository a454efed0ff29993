"""quantize-weights: weight-only quantization of MatMul/Gemm (int8 per column, or int4 group-wise).

    MatMul(x, W) -> MatMul(x, DequantizeLinear(Wq, scales, axis, block_size))

Activations stay float; the weights are stored in 8 or 4 bits and expanded inside the kernel that
reads them, which is what pays on memory-bound products (batch-1 transformers). ``bits=8``: one
symmetric scale per output column. ``bits=4``: one scale per ``group`` consecutive weights along
the reduction axis (K) of each column, ONNX's blocked DequantizeLinear (opset 21), the form of
onnxruntime's and torchao's 4-bit weight-only schemes. On the CPU targets each such product is one
kernel that reads the integer weight, packed (int4: two per byte), and expands it in registers or a
per-thread buffer (``targets.lowering.weight_only``); the float weight never exists as a tensor.
"""

from __future__ import annotations

from types import MappingProxyType

import numpy as np

from compiler.errors import EffarchError
from compiler.ir import Graph, Node
from compiler.pass_manager import Note, Pass, PassContext, PassResult, register_pass
from compiler.pass_manager.rules import const
from passes.quantize import label, quantize_weight

INT4_LEVELS = 7  # symmetric int4: [-7, 7]
CLIP_SEARCH = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)


def _refusal(n: Node, group: int, bits: int) -> str | None:
    w = const(n.inputs[1]) if len(n.inputs) > 1 else None
    if w is None:
        return "its weight is not a constant"
    if w.dtype != np.float32 or w.ndim != 2:
        return f"its weight is {w.dtype} of rank {w.ndim}, not an f32 matrix"
    k = w.shape[1] if n.op == "Gemm" and n.attr("transB", 0) else w.shape[0]
    if bits == 4 and k % group:
        return f"its reduction length {k} is not a multiple of the group size {group}"
    return None


def quantize_int4(w: np.ndarray, axis: int, group: int) -> tuple[np.ndarray, np.ndarray]:
    """(int4 weight, f32 scales) with one symmetric scale per ``group`` weights along ``axis``
    (the reduction axis); scales have the weight's shape with that axis divided by ``group``.
    Each block's scale is the one, among absmax/7 shrunk by up to 30%, with the least squared
    error: clipping a block's largest weight a little buys finer steps for all the others."""
    import ml_dtypes

    moved = np.moveaxis(w, axis, 0).astype(np.float64)
    blocks = moved.reshape(moved.shape[0] // group, group, *moved.shape[1:])
    absmax = np.max(np.abs(blocks), axis=1)
    base = np.where(absmax > 0, absmax, 1.0) / INT4_LEVELS
    best_scale, best_error = base, np.full(base.shape, np.inf)
    for shrink in CLIP_SEARCH:
        scale = base * shrink
        q = np.clip(np.rint(blocks / scale[:, None]), -INT4_LEVELS, INT4_LEVELS)
        error = np.sum((q * scale[:, None] - blocks) ** 2, axis=1)
        better = error < best_error
        best_scale, best_error = np.where(better, scale, best_scale), np.where(better, error, best_error)
    scales = best_scale.astype(np.float32)
    q = np.clip(np.rint(blocks / scales[:, None]), -INT4_LEVELS, INT4_LEVELS).reshape(moved.shape)
    return np.moveaxis(q, 0, axis).astype(ml_dtypes.int4), np.moveaxis(scales, 0, axis)


def _rewrite(g: Graph, n: Node, bits: int, group: int) -> None:
    w_value = n.inputs[1]
    assert w_value is not None and w_value.const is not None
    w = w_value.const
    transposed = n.op == "Gemm" and bool(n.attr("transB", 0))
    k_axis, out_axis = (1, 0) if transposed else (0, 1)
    if bits == 8:
        q, scales = quantize_weight(w, out_axis)
        attrs = {"axis": out_axis}
        zero = np.zeros(scales.shape, np.int8)
    else:
        q, scales = quantize_int4(w, k_axis, group)
        attrs = {"axis": k_axis, "block_size": group}
        zero = np.zeros(scales.shape, q.dtype)
    inputs = [g.add_constant(f"{w_value.name}_i{bits}", q), g.add_constant(f"{w_value.name}_scale", scales),
              g.add_constant(f"{w_value.name}_zero_point", zero)]
    dq = g.make_node("DequantizeLinear", inputs, attrs, types=[w_value.type], before=n,
                     name=f"{w_value.name}_dequantize", provenance=n.provenance.rewritten(PASS, f"int{bits}"),
                     output_names=[f"{w_value.name}_dq"])
    n.set_input(1, dq.outputs[0])


@register_pass
class QuantizeWeights(Pass):
    name = "quantize-weights"
    description = "weight-only int8 (per column) or int4 (group-wise) MatMul/Gemm weights"
    option_defaults = MappingProxyType({"bits": 8, "group": 32, "keep_float": ()})
    tolerance = 0.1

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        bits, group = int(self.options["bits"]), int(self.options["group"])
        if bits not in (4, 8) or group < 2:
            raise EffarchError(f"quantize-weights takes bits=8 or bits=4 and a group of 2 or more "
                               f"(got bits={bits}, group={group})")
        notes: list[Note] = []
        changed = False
        keep = set(self.options["keep_float"])
        for n in graph.nodes_snapshot():
            if n.domain or n.op not in ("MatMul", "Gemm") or n.outputs[0].name in keep:
                continue
            reason = _refusal(n, group, bits)
            if reason:
                notes.append(Note.at(n, f"int{bits}", reason))
                continue
            detail = "per column" if bits == 8 else f"groups of {group} along K"
            notes.append(Note.at(n, f"int{bits}", f"int{bits} weights {detail}: {label(n)}", fired=True))
            _rewrite(graph, n, bits, group)
            changed = True
        return PassResult(graph, changed, notes)


PASS = QuantizeWeights.name
