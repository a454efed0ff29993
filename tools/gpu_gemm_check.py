"""Hopper wgmma GEMM kernels with their epilogues (targets.gemm_kernel) against numpy, over the forms the fusion
takes (targets.gemm_fusion): weights stored [K, N] or [N, K], float16 and bfloat16 (its product into float32,
then cast), bias, residual on either side, GELU, a float32 result, rows that do not fill the last tile, and the
zoo transformers' batch-32 projections.

  python tools/gpu_gemm_check.py pack [--dir out/gemm] [--arch sm_90]
      here (no GPU): each case's graph through targets.gemm_fusion; every kernel into one library holding
      SASS only (nvcc); plan.json: each case's kernel arguments and plan. Inputs come from a seed where they run.
  python3 tools/gpu_gemm_check.py run --dir out/gemm --out DIR
      on the H200 (runtime-only TVM, nothing compiled there; numpy only): runs every kernel on seeded inputs;
      max error against numpy's float64 evaluation of the same graph (rounded to each step's type) relative to
      the largest output; median time and TFLOP/s; writes DIR/gemm.md and .json.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_report as report  # noqa: E402  (beside this script)
from gpu_tensorcore_check import _from_bf16_bits, host_array, rounded  # noqa: E402

F16, B16 = "float16", "bfloat16"
# name: x shape, n, dtype, product into float32 then cast, form, steps (see targets.gemm_cases)
CASES: dict[str, dict[str, Any]] = {
    "weight_kn_plain": {"x": (2048, 256), "n": 768, "form": "main"},
    "weight_nk_plain": {"x": (2048, 256), "n": 768, "form": "main_t"},
    "logits_to_float32": {"x": (32, 64, 256), "n": 2048, "form": "main", "steps": [("astype", "float32")]},
    "bias_gelu_3d": {"x": (32, 32, 384), "n": 1536, "steps": [("add", "bias", False), ("gelu",)]},
    "bias_residual": {"x": (32, 32, 1536), "n": 384, "steps": [("add", "bias", False), ("add", "residual", False)]},
    "residual_left_long_k": {"x": (32, 64, 1024), "n": 256, "steps": [("add", "residual", True)]},
    "rows_300_gelu_tanh": {"x": (300, 128), "n": 192, "steps": [("add", "bias", False), ("gelu_tanh",)]},
    "bf16_wide_residual": {"x": (32, 64, 1024), "n": 256, "dtype": B16, "wide": True,
                           "steps": [("add", "residual", True)]},
    "bf16_wide_gelu": {"x": (32, 64, 256), "n": 1024, "dtype": B16, "wide": True, "steps": [("gelu",)]},
    "bf16_main_wide": {"x": (2048, 256), "n": 768, "dtype": B16, "wide": True, "form": "main"},
    "bf16_logits_to_float32": {"x": (32, 64, 256), "n": 2048, "dtype": B16, "wide": True, "form": "main",
                               "steps": [("astype", "float32")]},
}
DEFAULTS: dict[str, Any] = {"dtype": F16, "wide": False, "form": "function", "steps": []}
# Max error relative to the largest output a correct kernel stays under: a product one rounding of its type
# (2**-11, 2**-8) off, carried through the steps
TOLERANCE = {F16: 3e-3, B16: 2.5e-2}


def case(name: str) -> dict[str, Any]:
    return {**DEFAULTS, **CASES[name]}


def pack(out_dir: Path, arch: str) -> None:
    from targets.gemm_cases import fused_kernel
    from targets.schedules.tensorcore_kernels import build_library

    out_dir.mkdir(parents=True, exist_ok=True)
    funcs, plan = {}, {}
    for name in CASES:
        funcs[name], args, out, out_dtype = fused_kernel(case(name), shapes(case(name)), arch)
        plan[name] = {"args": args, "out": list(out), "out_dtype": out_dtype}
        print(f"packed {name}: {args} -> {out} {out_dtype}", flush=True)
    build_library(funcs, arch, out_dir / "gemm.so")
    (out_dir / "plan.json").write_text(json.dumps(plan, indent=1))


def inputs(index: int, c: dict[str, Any]) -> dict[str, np.ndarray]:
    """float64 values already rounded to the case's type, keyed as targets.gemm_cases.shapes names them."""
    rng = np.random.default_rng(4000 + index)
    return {name: rounded(rng.standard_normal(s), c["dtype"]) for name, s in shapes(c).items()}


def shapes(c: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The case graph's inputs in order: x, w, then the steps' inputs (bias [N], residual as the output)."""
    x = tuple(c["x"])
    out = {"x": x, "w": (c["n"], x[-1]) if c["form"] == "main_t" else (x[-1], c["n"])}
    for step in c["steps"]:
        if len(step) == 3:
            out[step[1]] = (c["n"],) if step[1] == "bias" else (*x[:-1], c["n"])
    return out


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf)(x)


UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "gelu": lambda x: x * 0.5 * (1 + _erf(x / math.sqrt(2))),
    "gelu_tanh": lambda x: x * 0.5 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))),
    "relu": lambda x: np.maximum(x, 0), "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "silu": lambda x: x / (1 + np.exp(-x)), "tanh": np.tanh}
BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "add": np.add, "subtract": np.subtract, "multiply": np.multiply, "divide": np.divide,
    "maximum": np.maximum, "minimum": np.minimum}


def reference(c: dict[str, Any], v: dict[str, np.ndarray]) -> np.ndarray:
    dt = c["dtype"]
    w = v["w"].T if c["form"] == "main_t" else v["w"]
    y = rounded(v["x"] @ w, "float32" if c["wide"] else dt)
    if c["wide"]:
        y = rounded(y, dt)
    for step in c["steps"]:
        if step[0] == "astype":
            dt = step[1]
        elif len(step) == 1:
            y = UNARY[step[0]](y)
        else:
            op, name, swap = step
            y = BINARY[op](v[name], y) if swap else BINARY[op](y, v[name])
        y = rounded(y, dt)
    return y


def run(in_dir: Path, out_dir: Path) -> bool:
    """The table; True when every kernel is within TOLERANCE."""
    from targets.kernel_library import KernelLibrary

    plan = json.loads((in_dir / "plan.json").read_text())
    lib = KernelLibrary(in_dir / "gemm.so")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, name in enumerate(CASES):
        c = case(name)
        vals = inputs(index, c)
        spec = plan[name]
        out_dtype = spec["out_dtype"]
        host = [host_array(vals[a], c["dtype"]) for a in spec["args"]]
        got, args = lib.run(name, host, tuple(spec["out"]), c["dtype"], out_dtype)
        got64 = _from_bf16_bits(got).astype(np.float64) if out_dtype == B16 else got.astype(np.float64)
        ref = reference(c, vals)
        err = float(np.abs(got64 - ref).max() / np.abs(ref).max())
        us = lib.median_us(name, args)
        x = tuple(c["x"])
        m, k = math.prod(x[:-1]), x[-1]
        tflops = 2 * m * c["n"] * k / us / 1e6
        rows.append({"case": name, "m": m, "n": c["n"], "k": k, "dtype": c["dtype"], "out_dtype": out_dtype,
                     "form": c["form"], "steps": [list(s) for s in c["steps"]], "rel_max_err": err,
                     "ok": bool(err < TOLERANCE[c["dtype"]]), "us": us, "tflops": tflops})
    header = ["case", "M x N x K", "dtype -> out", "form, steps", "max err / max", "us", "TFLOP/s"]

    def cells(r: dict[str, Any], flag: str) -> list[str]:
        steps = ", ".join("/".join(str(x) for x in s) for s in r["steps"]) or "-"
        return [r["case"], f"{r['m']}x{r['n']}x{r['k']}", f"{r['dtype']} -> {r['out_dtype']}", f"{r['form']}, {steps}",
                f"{r['rel_max_err']:.2e}{flag}", f"{r['us']:.2f}", f"{r['tflops']:.0f}"]

    return report.write_check(out_dir, "gemm", rows, header, cells)


def main() -> int:
    return report.pack_run_main(__doc__, "out/gemm", pack, run)


if __name__ == "__main__":
    sys.exit(main())
