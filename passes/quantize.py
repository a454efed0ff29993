"""quantize-static: int8 post-training quantization, written into the graph as QDQ pairs.

Each Conv, MatMul and Gemm with a constant float weight gets
- its weight as an i8 constant with one symmetric scale per output channel, read through
  ``DequantizeLinear`` (axis = the output-channel axis);
- its activation input through ``QuantizeLinear -> DequantizeLinear`` with one u8 scale and zero
  point per tensor, from the range the calibration data gives it (``method``: minmax, percentile,
  entropy); a value read by several such ops gets one pair.
This is ONNX's QDQ form: onnxruntime runs every stage as the reference, Netron shows it, and
``integer-ops`` turns each pattern into an integer kernel. Biases stay float (the integer kernel
adds them after scaling); ``bias_correction`` moves each layer's expected quantization error of
the weights, measured on the calibration data's mean activation, into its bias.

With ``CompressionData.max_drop`` and a test set, the pass keeps in float the fewest layers
that hold the score within the budget, most sensitive first, and says why for each.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from compiler.compression.calibrate import Stats, activation_range, collect, uint8_params
from compiler.errors import EffarchError
from compiler.ir import DType, Graph, Node, Provenance, TensorType, Value
from compiler.pass_manager import Note, Pass, PassContext, PassResult, register_pass
from compiler.pass_manager.rules import const
from passes.quantize_rows import DEFAULT_RATIO, per_row, row_ratios

WEIGHT_LEVELS = 127  # symmetric int8: [-127, 127], so negating a weight never saturates
# 7-bit weights ("reduce_range"), the default of the integer-product passes: on x86 without VNNI
# an u8 x i8 product pair summed in int16 (vpmaddubsw) saturates for full-range weights, so
# onnxruntime's kernels give wrong sums there (measured: off by 11173 in a 64-long dot product on
# an AVX2 EPYC), and effarch's AVX2 kernel can use vpmaddubsw only when no pair can saturate.
REDUCED_LEVELS = 63
# What saturation really needs is a pair (k = 2j, 2j+1 along the reduction) whose same-signed
# weights sum past 128 (255 * 128 < 32767 < 255 * 129). A matrix's column gets the most levels
# (of these) for which none of its pairs does: |w| <= 63 always qualifies, and most columns of a
# real layer take 95-127 (MiniLM-L6: 100 on average; weight-only cosine 0.9984 -> 0.9994).
PAIR_SAFE_LEVELS = (127, 119, 111, 103, 95, 87, 79, 71, REDUCED_LEVELS)
PAIR_LIMIT = 128


@dataclass(frozen=True)
class Site:
    """A quantizable op: its position in the graph's node order (stable across clones) and label."""

    index: int
    label: str
    weight_axis: int  # the output-channel axis of its weight
    channel_axis: int  # the channel axis of its activation (1 for NCHW, -1 for x @ W)


def sites(g: Graph) -> tuple[list[Site], list[Note]]:
    """The ops this pass can quantize, and a note for each candidate it cannot."""
    found, refused = [], []
    for i, n in enumerate(g.nodes):
        if n.domain or n.op not in ("Conv", "MatMul", "Gemm"):
            continue
        reason = _refusal(n)
        if reason:
            refused.append(Note.at(n, "quantize", reason))
        else:
            found.append(Site(i, label(n), *_axes(n)))
    return found, refused


def label(n: Node) -> str:
    return f"{n.op} %{n.outputs[0].name}"


def _refusal(n: Node) -> str | None:
    w = const(n.inputs[1]) if len(n.inputs) > 1 else None
    x = n.inputs[0]
    if w is None:
        return "its weight is not a constant (dynamic quantization handles activation x activation products)"
    if w.dtype != np.float32:
        return f"its weight is {w.dtype}, not f32"
    if x is None or x.type is None or x.type.dtype is not DType.F32:
        return "its input is not f32"
    if n.op == "MatMul" and w.ndim != 2:
        return f"its weight has rank {w.ndim}; per-channel scales need a [K, N] matrix"
    if n.op == "Gemm" and n.attr("transA", 0):
        return "Gemm with transA is not quantized"
    if n.op == "Conv" and w.ndim != 4:
        return f"{w.ndim - 2}-D convolution is not quantized (2-D is)"
    return None


def _axes(n: Node) -> tuple[int, int]:
    if n.op == "Conv":
        return 0, 1
    if n.op == "Gemm" and n.attr("transB", 0):
        return 0, -1
    return 1, -1


def weight_scales(w: np.ndarray, axis: int, levels: int = WEIGHT_LEVELS) -> np.ndarray:
    """One symmetric scale per slice along ``axis`` (the output channel)."""
    other = tuple(a for a in range(w.ndim) if a != axis % w.ndim)
    absmax = np.max(np.abs(w), axis=other).astype(np.float64)
    return (np.where(absmax > 0, absmax, 1.0) / levels).astype(np.float32)


def quantize_weight(w: np.ndarray, axis: int, levels: int = WEIGHT_LEVELS) -> tuple[np.ndarray, np.ndarray]:
    """(i8 weight, f32 scales) with w ~= q * scale along ``axis``, |q| <= ``levels``."""
    scales = weight_scales(w, axis, levels)
    shape = [1] * w.ndim
    shape[axis % w.ndim] = -1
    q = np.clip(np.rint(w / scales.reshape(shape)), -levels, levels).astype(np.int8)
    return q, scales


def pair_safe_levels(w: np.ndarray) -> np.ndarray:
    """Per column of ``w`` [K, N]: the most levels in PAIR_SAFE_LEVELS for which no pair of rows
    (2j, 2j+1) quantizes to same-signed values summing past PAIR_LIMIT."""
    wk = np.concatenate([w, np.zeros((1, w.shape[1]), w.dtype)]) if w.shape[0] % 2 else w
    absmax = np.max(np.abs(wk), axis=0).astype(np.float64)
    unit = wk / np.where(absmax > 0, absmax, 1.0)
    best = np.full(w.shape[1], REDUCED_LEVELS)
    found = np.zeros(w.shape[1], bool)
    for levels in PAIR_SAFE_LEVELS:
        pairs = np.rint(unit * levels).reshape(-1, 2, w.shape[1])
        safe = ((np.clip(pairs, 0, None).sum(1).max(0) <= PAIR_LIMIT)
                & (np.clip(-pairs, 0, None).sum(1).max(0) <= PAIR_LIMIT))
        best = np.where(~found & safe, levels, best)
        found |= safe
    return best


def quantize_matrix_pair_safe(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(i8 weight, f32 scales) for ``w`` [K, N], per column with ``pair_safe_levels``."""
    levels = pair_safe_levels(w)
    absmax = np.max(np.abs(w), axis=0).astype(np.float64)
    scales = (np.where(absmax > 0, absmax, 1.0) / levels).astype(np.float32)
    q = np.clip(np.rint(w / scales), -levels, levels).astype(np.int8)
    return q, scales


def quantize_for_products(w: np.ndarray, axis: int, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """The weight of an integer product: with REDUCED_LEVELS, a matrix ([K, N], or [N, K] read
    along axis 0) gets pair-safe levels per column and anything else 7 bits; else ``levels``."""
    if levels != REDUCED_LEVELS or w.ndim != 2:
        return quantize_weight(w, axis, levels)
    if axis % 2 == 1:
        return quantize_matrix_pair_safe(w)
    q, scales = quantize_matrix_pair_safe(w.T)
    return np.ascontiguousarray(q.T), scales


def dequantized(q: np.ndarray, scales: np.ndarray, axis: int) -> np.ndarray:
    shape = [1] * q.ndim
    shape[axis % q.ndim] = -1
    return q.astype(np.float32) * scales.reshape(shape)


# ---- rewriting ------------------------------------------------------------------------------------
def apply(g: Graph, chosen: list[Site], ranges: dict[str, tuple[float, float]],
          means: dict[str, np.ndarray], bias_correction: bool, levels: int = REDUCED_LEVELS,
          rows: frozenset[str] = frozenset()) -> list[Note]:
    """Quantize the ``chosen`` sites of ``g`` in place; one note per site. Products reading an
    activation named in ``rows`` get run-time per-row scales (passes/quantize_rows.py)."""
    from passes.quantize_dynamic import dynamic_refusal, rewrite_dynamic

    nodes = list(g.nodes)
    pairs: dict[int, Value] = {}  # id(activation) -> its dequantized copy
    by_row: dict[int, tuple[Value, Value, Value]] = {}  # id(activation) -> its per-row quantization
    notes = []
    for site in chosen:
        n = nodes[site.index]
        x = n.inputs[0]
        assert x is not None
        if x.name in rows and n.op != "Conv" and dynamic_refusal(n) is None:
            notes.append(Note.at(n, "quantize", f"int8: per-row run-time activation scales ({label(n)}: its "
                                                "calibrated range is many times its typical row's)", fired=True))
            rewrite_dynamic(g, n, by_row, levels, True)
            continue
        if id(x) not in pairs:
            pairs[id(x)] = _qdq_activation(g, x, n, ranges[x.name])
        lo, hi = ranges[x.name]
        _quantize_weight_input(g, n, site, means.get(x.name) if bias_correction else None, levels)
        n.set_input(0, pairs[id(x)])
        bound = "pair-safe" if levels == REDUCED_LEVELS and n.op != "Conv" else f"|q| <= {levels}"
        notes.append(Note.at(n, "quantize", f"int8: weight per channel (axis {site.weight_axis}, {bound}), "
                                            f"input u8 over [{lo:.4g}, {hi:.4g}]", fired=True))
    return notes


def _qdq_activation(g: Graph, x: Value, first_user: Node, rng: tuple[float, float]) -> Value:
    scale, zp = uint8_params(*rng)
    s = g.add_constant(f"{x.name}_scale", np.array(scale, np.float32))
    z = g.add_constant(f"{x.name}_zero_point", np.array(zp, np.uint8))
    shape = x.type.shape if x.type is not None else None
    # The pair belongs to the layer that reads it, but absorbs nothing (no merged sources).
    origin = first_user.provenance
    prov = Provenance(origin.source, (*origin.rewrites, f"{PASS}:activation"))
    q = g.make_node("QuantizeLinear", [x, s, z], types=[TensorType(DType.U8, shape)], before=first_user,
                    name=f"{x.name}_quantize", provenance=prov,
                    output_names=[f"{x.name}_q"])
    dq = g.make_node("DequantizeLinear", [q.outputs[0], s, z], types=[x.type], before=first_user,
                     name=f"{x.name}_dequantize", provenance=q.provenance, output_names=[f"{x.name}_dq"])
    return dq.outputs[0]


def _quantize_weight_input(g: Graph, n: Node, site: Site, mean: np.ndarray | None, levels: int) -> None:
    w_value = n.inputs[1]
    assert w_value is not None and w_value.const is not None
    w = w_value.const
    q, scales = quantize_for_products(w, site.weight_axis, levels)
    wq = g.add_constant(f"{w_value.name}_i8", q)
    ws = g.add_constant(f"{w_value.name}_scale", scales)
    wz = g.add_constant(f"{w_value.name}_zero_point", np.zeros(scales.shape, np.int8))
    dq = g.make_node("DequantizeLinear", [wq, ws, wz], {"axis": site.weight_axis}, types=[w_value.type],
                     before=n, name=f"{w_value.name}_dequantize",
                     provenance=n.provenance.rewritten(PASS, "weight"), output_names=[f"{w_value.name}_dq"])
    n.set_input(1, dq.outputs[0])
    if mean is not None:
        _correct_bias(g, n, site, w - dequantized(q, scales, site.weight_axis), mean)


def _correct_bias(g: Graph, n: Node, site: Site, error: np.ndarray, mean: np.ndarray) -> None:
    """b += E[(W - W_q) x]: the mean output shift that rounding the weights causes. A MatMul's
    bias is the constant vector of the Add that alone reads it (exporters write Linear so); a
    MatMul without one, and a computed bias, are left alone."""
    if n.op == "MatMul":
        _correct_matmul_bias(g, n, mean.astype(np.float64) @ error.astype(np.float64))
        return
    has_bias = len(n.inputs) > 2 and n.inputs[2] is not None
    old = const(n.inputs[2]) if has_bias else None
    if has_bias and old is None:
        return
    if n.op == "Conv":
        groups = int(n.attr("group", 1))
        m = mean.reshape(groups, error.shape[1])[np.arange(error.shape[0]) * groups // error.shape[0]]
        shift = np.einsum("oikl,oi->o", error.astype(np.float64), m)
    elif site.weight_axis == 1:  # Gemm [K, N]
        shift = mean.astype(np.float64) @ error.astype(np.float64)
    else:  # Gemm transB: [N, K]
        shift = error.astype(np.float64) @ mean.astype(np.float64)
    alpha, beta = (float(n.attr("alpha", 1.0)), float(n.attr("beta", 1.0))) if n.op == "Gemm" else (1.0, 1.0)
    base = np.zeros(shift.shape) if old is None else old.astype(np.float64) * beta
    bias = g.add_constant(f"{n.outputs[0].name}_bias_corrected", (base + alpha * shift).astype(np.float32))
    if n.op == "Gemm":
        n.attrs["beta"] = 1.0
    if len(n.inputs) > 2:
        n.set_input(2, bias)
    else:
        n.append_input(bias)


def _correct_matmul_bias(g: Graph, n: Node, shift: np.ndarray) -> None:
    out = n.outputs[0]
    if len(out.uses) != 1 or out in g.outputs:
        return
    add, i = out.uses[0]
    other = add.inputs[1 - i] if add.op == "Add" and not add.domain and len(add.inputs) == 2 else None
    bias = const(other)
    if other is None or bias is None or bias.dtype != np.float32 or bias.shape != shift.shape:
        return
    corrected = (bias.astype(np.float64) + shift).astype(np.float32)
    add.set_input(1 - i, g.add_constant(f"{out.name}_bias_corrected", corrected))


# ---- the pass -------------------------------------------------------------------------------------
@register_pass
class QuantizeStatic(Pass):
    name = "quantize-static"
    description = "int8 post-training quantization (calibrated QDQ: per-channel weights, per-tensor activations)"
    option_defaults = MappingProxyType({"method": "minmax", "percentile": 99.99, "bias_correction": True,
                                        "reduce_range": True, "row_ratio": DEFAULT_RATIO, "keep_float": ()})
    tolerance = 0.1

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        data = ctx.data
        found, refused = sites(graph)
        keep = set(self.options["keep_float"])
        found = [s for s in found if graph.nodes[s.index].outputs[0].name not in keep]
        if not found:
            return PassResult(graph, False, refused)
        if data is None or data.calibration is None:
            raise EffarchError("quantize-static needs calibration data; pass --calibration FILE.npz")
        ranges, means = self._calibrate(graph, found, data)
        rows = self._rows(graph, found, data)
        chosen, budget_notes = self._within_budget(graph, found, ranges, means, data, rows)
        notes = apply(graph, chosen, ranges, means, bool(self.options["bias_correction"]), self._levels(), rows)
        return PassResult(graph, bool(chosen), notes + budget_notes + refused)

    def _levels(self) -> int:
        return REDUCED_LEVELS if self.options["reduce_range"] else WEIGHT_LEVELS

    def _calibrate(self, g: Graph, found: list[Site], data: object) -> tuple[dict, dict]:
        nodes = g.nodes
        axes = {}
        for s in found:
            x = nodes[s.index].inputs[0]
            assert x is not None
            axes[x.name] = s.channel_axis
        method = str(self.options["method"])
        stats = collect(lambda: data.activations(g, list(axes)), list(axes), method,  # type: ignore[attr-defined]
                        means=axes)
        ranges = {k: activation_range(v, method, float(self.options["percentile"])) for k, v in stats.items()}
        return ranges, {k: v.channel_mean for k, v in stats.items() if v.channel_mean is not None}

    def _rows(self, g: Graph, found: list[Site], data: object) -> frozenset[str]:
        threshold = float(self.options["row_ratio"])
        names = sorted({x.name for s in found if g.nodes[s.index].op != "Conv"
                        for x in [g.nodes[s.index].inputs[0]] if x is not None})
        if not threshold or not names:
            return frozenset()
        ratios = row_ratios(data.activations(g, names), names)  # type: ignore[attr-defined]
        return frozenset(per_row(ratios, threshold))

    def _within_budget(self, g: Graph, found: list[Site], ranges: dict, means: dict,
                       data: object, rows: frozenset[str]) -> tuple[list[Site], list[Note]]:
        from compiler.compression.budget import keep_float_within_budget

        if getattr(data, "max_drop", None) is None:
            return found, []

        def trial(chosen: list[Site]) -> Graph:
            copy = g.clone()
            apply(copy, chosen, ranges, means, bool(self.options["bias_correction"]), self._levels(), rows)
            return copy

        return keep_float_within_budget(g, found, trial, data)


PASS = QuantizeStatic.name
__all__ = ["QuantizeStatic", "Site", "Stats", "apply", "quantize_for_products", "quantize_weight", "sites"]
