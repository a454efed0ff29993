"""Row-wise kernels (targets.schedules.gpu_rows) against numpy, and against dlight's schedule of the same kernel.

  python tools/gpu_rows_check.py pack [--dir out/rows] [--arch sm_90]
      here (no GPU): each case's kernel (softmax, log-softmax, layer norm, RMS norm over the last axis, as
      LegalizeOps + FuseTIR make it; some with the fp16 output cast of ``--precision fp16`` fused) scheduled
      by effarch's GpuRows and by dlight's reduction rules (Reduction, GeneralReduction, Fallback: the
      first that takes it), one library per schedule with SASS only (nvcc); plan.json: the rule per kernel.
      No data travels: inputs come from a seed where they run.
  python3 tools/gpu_rows_check.py run --dir out/rows --out DIR
      on the GPU machine (runtime-only TVM, nothing compiled there; numpy only): runs every kernel of both
      libraries on seeded inputs, max error against numpy's float64 result relative to the largest output
      (and the worst row's probability sum for softmax), median time of each (time_evaluator), effective
      bandwidth (bytes read + written / time); writes DIR/rows.md and DIR/rows.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_report as report  # noqa: E402  (beside this script)

# (name, op, shape, output dtype): the attention scores [B, H, S, S] of the encoder (12 heads, seq 128) at
# batch 1 and 32, GPT's and MiniLM's norms, ViT's 197-token rows, classifier rows, rows up to 2048 (longer: dlight).
CASES = [
    ("softmax_1x12x128x128_fp16", "softmax", (1, 12, 128, 128), "float16"),
    ("softmax_32x12x128x128_fp16", "softmax", (32, 12, 128, 128), "float16"),
    ("softmax_32x12x128x128", "softmax", (32, 12, 128, 128), "float32"),
    ("softmax_8x12x197x197", "softmax", (8, 12, 197, 197), "float32"),
    ("softmax_1x12x50x50", "softmax", (1, 12, 50, 50), "float32"),
    ("softmax_64x2048", "softmax", (64, 2048), "float32"),
    ("log_softmax_256x1000", "log_softmax", (256, 1000), "float32"),
    ("layer_norm_1x128x384", "layer_norm", (1, 128, 384), "float32"),
    ("layer_norm_32x128x384_fp16", "layer_norm", (32, 128, 384), "float16"),
    ("layer_norm_4x64x768", "layer_norm", (4, 64, 768), "float32"),
    ("layer_norm_16x1000", "layer_norm", (16, 1000), "float32"),
    ("rms_norm_128x2048", "rms_norm", (128, 2048), "float32"),
    ("rms_norm_4096x32", "rms_norm", (4096, 32), "float32"),
]
SCHEDULES = ("effarch", "dlight")
# Max error relative to the largest output a correct kernel stays under: float32 arithmetic (no fast math) on
# rows up to 2048; a float16 result is one rounding (2**-11) away from it.
TOLERANCE = {"float32": 1e-5, "float16": 1e-3}
EPS = 1e-5  # targets.schedules.row_kernels.EPS (not imported: that module needs TVM's compiler)


def pack(out_dir: Path, arch: str) -> None:
    from targets.schedules.row_kernels import EPS as KERNEL_EPS
    from targets.schedules.row_kernels import row_kernel, schedule_with
    from targets.schedules.tensorcore_kernels import build_library

    assert KERNEL_EPS == EPS, "tools/gpu_rows_check.py EPS must follow row_kernels.EPS"
    out_dir.mkdir(parents=True, exist_ok=True)
    plan: dict[str, dict[str, str]] = {}
    for schedule in SCHEDULES:
        funcs = {}
        for name, op, shape, out_dtype in CASES:
            funcs[name], rule = schedule_with(row_kernel(op, shape, out_dtype), schedule, arch)
            plan.setdefault(name, {})[schedule] = rule
        build_library(funcs, arch, out_dir / f"{schedule}.so")
        print(f"packed {schedule}", flush=True)
    (out_dir / "plan.json").write_text(json.dumps(plan, indent=1))


def inputs(case: int, op: str, shape: tuple[int, ...]) -> list[np.ndarray]:
    """x (attention-score-like spread), then gamma and beta where the op has them; float32."""
    rng = np.random.default_rng(2000 + case)
    x = rng.uniform(-6, 6, shape).astype(np.float32)
    params = {"layer_norm": 2, "rms_norm": 1}.get(op, 0)
    gamma = rng.uniform(0.5, 1.5, shape[-1:]).astype(np.float32)
    beta = rng.uniform(-0.5, 0.5, shape[-1:]).astype(np.float32)
    return [x, gamma, beta][: 1 + params]


def reference(op: str, args: list[np.ndarray]) -> np.ndarray:
    x = args[0].astype(np.float64)
    if op in ("softmax", "log_softmax"):
        shifted = x - x.max(-1, keepdims=True)
        total = np.exp(shifted).sum(-1, keepdims=True)
        return np.exp(shifted) / total if op == "softmax" else shifted - np.log(total)
    if op == "layer_norm":
        centred = x - x.mean(-1, keepdims=True)
        return centred / np.sqrt((centred**2).mean(-1, keepdims=True) + EPS) * args[1] + args[2]
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + EPS) * args[1]


def _max_rel_error(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - ref).max() / (np.abs(ref).max() + 1e-30))


def _run_case(lib: Any, name: str, args: list[np.ndarray], out_dtype: str) -> tuple[np.ndarray, float]:
    """The kernel's output and its median time in us (``KernelLibrary`` holds the runtime-only TVM)."""
    tensors = [lib._tensor(a, "float32") for a in args]  # noqa: SLF001  (its one way to a device tensor)
    tensors.append(lib._tensor(np.zeros(args[0].shape, out_dtype), out_dtype))  # noqa: SLF001
    lib.module[name](*tensors)
    lib.device.sync()
    return tensors[-1].numpy(), lib.median_us(name, tensors)


def run(in_dir: Path, out_dir: Path) -> bool:
    """The table; True when every effarch kernel is within TOLERANCE."""
    from targets.kernel_library import KernelLibrary

    plan = json.loads((in_dir / "plan.json").read_text())
    libs = {s: KernelLibrary(in_dir / f"{s}.so") for s in SCHEDULES}
    rows = []
    for case, (name, op, shape, out_dtype) in enumerate(CASES):
        args = inputs(case, op, shape)
        ref = reference(op, args)
        moved = sum(a.nbytes for a in args) + ref.size * np.dtype(out_dtype).itemsize
        row: dict[str, Any] = {"kernel": name, "plan": plan[name]}
        for schedule, lib in libs.items():
            got, us = _run_case(lib, name, args, out_dtype)
            err = _max_rel_error(got, ref)
            entry = {"rel_max_err": err, "ok": err < TOLERANCE[out_dtype], "us": us, "gb_s": moved / us / 1e3}
            if op == "softmax":
                entry["worst_row_sum_err"] = float(np.abs(got.astype(np.float64).sum(-1) - 1).max())
            row[schedule] = entry
        row["speedup"] = row["dlight"]["us"] / row["effarch"]["us"]
        rows.append(row)
    (out_dir / "rows.json").write_text(json.dumps(rows, indent=1))
    lines = ["| kernel | effarch: max err / max, us, GB/s | dlight (rule): max err / max, us, GB/s | "
             "dlight us / effarch us |", "|---" * 4 + "|"]
    for r in rows:
        e, d = r["effarch"], r["dlight"]
        flag = "" if e["ok"] else " **WRONG**"
        lines.append(f"| {r['kernel']} | {e['rel_max_err']:.2e}{flag}, {e['us']:.1f}, {e['gb_s']:.0f} | "
                     f"({r['plan']['dlight']}) {d['rel_max_err']:.2e}, {d['us']:.1f}, {d['gb_s']:.0f} | "
                     f"{r['speedup']:.2f} |")
    (out_dir / "rows.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return all(r["effarch"]["ok"] for r in rows)


def main() -> int:
    return report.pack_run_main(__doc__, "out/rows", pack, run)


if __name__ == "__main__":
    sys.exit(main())
