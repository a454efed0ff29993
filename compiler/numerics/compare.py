"""Numeric comparison of a compiled model's outputs against a reference run.

Tolerances are per dtype and judged against the reference output's scale: an output passes when
``max|got - ref| <= atol + rtol * max|ref|``. Deep random-weight networks accumulate rounding
differently in every runtime, so a scale-relative bound is the honest one; the per-element relative
error is reported too but not judged (it explodes where the reference is near zero).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# (rtol, atol) per dtype kind; integer and bool outputs must match exactly.
TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-7, 1e-9),
    "float32": (1e-4, 1e-5),
    "float16": (1e-2, 1e-3),
    "bfloat16": (5e-2, 1e-2),
}


@dataclass(frozen=True)
class OutputCheck:
    name: str
    dtype: str
    max_abs: float
    max_rel: float
    scale: float
    cosine: float
    tolerance: float
    ok: bool

    def line(self) -> str:
        verdict = "ok" if self.ok else "MISMATCH"
        return (f"{self.name:<16} {self.dtype:<8} max abs {self.max_abs:.3g}  max rel {self.max_rel:.3g}  "
                f"cosine {self.cosine:.6f}  (tolerance {self.tolerance:.3g})  {verdict}")


# A quantized graph against onnxruntime running the same graph: onnxruntime sums each layer's
# dequantized products in float32 while effarch's integer kernels sum them exactly, so a value on
# a rounding boundary of the next QuantizeLinear may land one step (1/255 of the range) apart, and
# such flips carry through deep networks: MobileNetV2 (52 quantized layers) ends 1.7% of its output
# scale apart at cosine 0.9991. Within 5% of the output's scale.
QUANTIZED_RTOL = 5e-2


def precision_rtol(precision: str) -> float | None:
    """The relative tolerance for an artifact that computes in ``precision`` (fp16, bf16) against an
    fp32 reference; None for fp32 (the per-dtype default)."""
    low = {"fp16": "float16", "bf16": "bfloat16"}.get(precision)
    return TOLERANCES[low][0] if low is not None else None


def compare_output(name: str, got: np.ndarray, ref: np.ndarray, rtol: float | None = None) -> OutputCheck:
    if got.shape != ref.shape:
        return OutputCheck(name, str(ref.dtype), float("inf"), float("inf"), 0.0, 0.0, 0.0, False)
    g, r = got.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
    diff = np.abs(g - r)
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(r).max()) if r.size else 0.0
    max_rel = float((diff / np.maximum(np.abs(r), 1e-12)).max()) if diff.size else 0.0
    denom = float(np.linalg.norm(g) * np.linalg.norm(r))
    cosine = float(g @ r / denom) if denom > 0 else (1.0 if max_abs == 0 else 0.0)
    dtype_rtol, atol = TOLERANCES.get(ref.dtype.name, (0.0, 0.0))
    tol = atol + (dtype_rtol if rtol is None else rtol) * scale
    ok = bool(np.isfinite(g).all() == np.isfinite(r).all()) and max_abs <= tol
    return OutputCheck(name, ref.dtype.name, max_abs, max_rel, scale, cosine, tol, ok)


def compare_outputs(got: dict[str, np.ndarray], ref: dict[str, np.ndarray],
                    rtol: float | None = None) -> list[OutputCheck]:
    return [compare_output(name, np.asarray(got[name]), np.asarray(r), rtol) for name, r in ref.items()]
