"""quantize-dynamic: int8 MatMul/Gemm whose activation scale is computed at run time.

    MatMul(x, W) -> Cast(MatMulInteger(xq, Wq, zx)) * sw * sx    with (xq, sx, zx) = DynamicQuantizeLinear(x)

No calibration data: every call measures its input's range (one pass over it), which suits
transformers, whose activation ranges vary with the input. Weights are i8, symmetric, one scale
per output column, 7-bit by default (``reduce_range``: see passes/quantize.py). This is
onnxruntime's ``quantize_dynamic`` form, so onnxruntime runs it too.
"""

from __future__ import annotations

from types import MappingProxyType

import numpy as np

from compiler.ir import DType, Graph, Node, TensorType, Value
from compiler.pass_manager import Note, Pass, PassContext, PassResult, register_pass
from compiler.pass_manager.rules import const
from passes.quantize import REDUCED_LEVELS, WEIGHT_LEVELS, label, quantize_weight


def _refusal(n: Node) -> str | None:
    w = const(n.inputs[1]) if len(n.inputs) > 1 else None
    x = n.inputs[0]
    if w is None:
        return "its weight is not a constant"
    if w.dtype != np.float32 or w.ndim != 2:
        return f"its weight is {w.dtype} of rank {w.ndim}, not an f32 matrix"
    if x is None or x.type is None or x.type.dtype is not DType.F32:
        return "its input is not f32"
    if n.op == "Gemm" and n.attr("transA", 0):
        return "Gemm with transA is not quantized"
    if n.op == "Gemm" and len(n.inputs) > 2 and n.inputs[2] is not None:
        c = const(n.inputs[2])
        if c is None or (c.ndim == 2 and c.shape[0] != 1):
            return "its bias is not a constant vector"
    return None


def _rewrite(g: Graph, n: Node, quantized: dict[int, tuple[Value, Value, Value]], levels: int) -> None:
    x, w_value = n.inputs[0], n.inputs[1]
    assert x is not None and w_value is not None and w_value.const is not None
    w = w_value.const.T if n.op == "Gemm" and n.attr("transB", 0) else w_value.const  # [K, N]
    q, scales = quantize_weight(w, 1, levels)
    out = n.outputs[0]
    prov = n.provenance.rewritten(PASS, "dynamic")
    if id(x) not in quantized:
        dq = g.make_node("DynamicQuantizeLinear", [x], num_outputs=3, before=n, provenance=prov,
                         types=[TensorType(DType.U8, x.type.shape if x.type else None),
                                TensorType(DType.F32, ()), TensorType(DType.U8, ())],
                         name=f"{x.name}_quantize", output_names=[f"{x.name}_q", f"{x.name}_scale", f"{x.name}_zp"])
        quantized[id(x)] = (dq.outputs[0], dq.outputs[1], dq.outputs[2])
    xq, sx, zx = quantized[id(x)]

    def node(op: str, inputs: list[Value | None], dtype: DType = DType.F32, **attrs: int) -> Value:
        t = TensorType(dtype, out.type.shape if out.type is not None else None)
        return g.make_node(op, inputs, dict(attrs), types=[t], before=n, provenance=prov, name=n.name).outputs[0]

    alpha = float(n.attr("alpha", 1.0)) if n.op == "Gemm" else 1.0
    acc = node("MatMulInteger", [xq, g.add_constant(f"{w_value.name}_i8", q), zx], DType.I32)
    y = node("Cast", [acc], to=DType.F32.onnx_code)
    y = node("Mul", [y, g.add_constant(f"{out.name}_wscale", (scales * alpha).astype(np.float32))])
    y = node("Mul", [y, sx])
    bias = const(n.inputs[2]) if n.op == "Gemm" and len(n.inputs) > 2 else None
    if bias is not None:
        beta = float(n.attr("beta", 1.0))
        y = node("Add", [y, g.add_constant(f"{out.name}_bias", (bias.reshape(-1) * beta).astype(np.float32))])
    g.replace_value(out, y)
    out.name, y.name = y.name, out.name  # the op's output keeps its name (graph outputs, diffs)
    g.remove_node(n)


@register_pass
class QuantizeDynamic(Pass):
    name = "quantize-dynamic"
    description = "int8 MatMul/Gemm with run-time activation scales (DynamicQuantizeLinear + MatMulInteger)"
    option_defaults = MappingProxyType({"reduce_range": True, "keep_float": ()})
    tolerance = 0.1

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        notes: list[Note] = []
        quantized: dict[int, tuple[Value, Value, Value]] = {}
        keep = set(self.options["keep_float"])
        for n in graph.nodes_snapshot():
            if n.domain or n.op not in ("MatMul", "Gemm") or n.outputs[0].name in keep:
                continue
            reason = _refusal(n)
            if reason:
                notes.append(Note.at(n, "dynamic", reason))
                continue
            notes.append(Note.at(n, "dynamic", f"int8 dynamic: {label(n)}", fired=True))
            _rewrite(graph, n, quantized, REDUCED_LEVELS if self.options["reduce_range"] else WEIGHT_LEVELS)
        return PassResult(graph, bool(quantized), notes)


PASS = QuantizeDynamic.name
