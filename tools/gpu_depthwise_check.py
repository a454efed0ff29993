"""Depthwise conv kernels (targets.schedules.gpu_depthwise) against numpy, and against dlight's GeneralReduction.

  python tools/gpu_depthwise_check.py pack [--dir out/depthwise] [--arch sm_90]
      here (no GPU): MobileNetV2's depthwise layers (clip(conv2d(x, w, groups=C) + b, 0, 6), 3x3, stride 1 and 2)
      in fp16 and fp32, scheduled by effarch's GpuDepthwise and by dlight's GeneralReduction (what took them before),
      one SASS-only library per (precision, schedule). No data travels: inputs come from a seed where they run.
  python3 tools/gpu_depthwise_check.py run --dir out/depthwise --out DIR
      on the GPU machine (runtime-only TVM, numpy): every kernel on seeded inputs, error against numpy's float64
      result on the same rounded inputs (cosine, max error relative to the largest output), median time
      (time_evaluator) of each schedule; writes DIR/depthwise.md and DIR/depthwise.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# (channels, input size, stride): MobileNetV2 at 224x224
CASES = [(32, 112, 1), (96, 112, 2), (144, 56, 1), (144, 56, 2), (192, 28, 1), (192, 28, 2), (384, 14, 1),
         (576, 14, 1), (576, 14, 2), (960, 7, 1)]
PRECISIONS = {"fp16": "float16", "fp32": "float32"}
SCHEDULES = ("effarch", "dlight")


def _name(c: int, h: int, s: int) -> str:
    return f"dw_{c}_{h}_s{s}"


def pack(out_dir: Path, arch: str) -> None:
    from targets.schedules.gpu_depthwise import depthwise_kernel, schedule_with
    from targets.schedules.tensorcore_kernels import build_library, cuda_target

    out_dir.mkdir(parents=True, exist_ok=True)
    target = cuda_target(arch)
    for precision, dtype in PRECISIONS.items():
        for schedule in SCHEDULES:
            funcs = {_name(c, h, s): schedule_with(depthwise_kernel(c, h, s, dtype), schedule, target)
                     for c, h, s in CASES}
            build_library(funcs, arch, out_dir / f"{precision}.{schedule}.so")
            print(f"packed {precision} {schedule}", flush=True)


def _inputs(case: int, c: int, h: int, dtype: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(2000 + case)
    arrays = [rng.uniform(-1, 1, (1, c, h, h)), rng.uniform(-1, 1, (c, 1, 3, 3)) / 3, rng.uniform(-1, 1, (1, c, 1, 1))]
    rounded = [a.astype(dtype) for a in arrays]
    return rounded, [a.astype(np.float64) for a in rounded]


def _reference(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
    h = x.shape[2]
    out = (h + 2 - 3) // stride + 1
    xp = np.pad(x[0], ((0, 0), (1, 1), (1, 1)))
    acc = np.zeros((x.shape[1], out, out))
    for dy in range(3):
        for dx in range(3):
            tap = xp[:, dy:dy + stride * (out - 1) + 1:stride, dx:dx + stride * (out - 1) + 1:stride]
            acc += tap * w[:, 0, dy, dx][:, None, None]
    return np.clip(acc + b[0], 0, 6)[None]


def _errors(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    a, b = got.astype(np.float64).ravel(), ref.ravel()
    cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))
    return cosine, float(np.abs(a - b).max() / (np.abs(b).max() + 1e-30))


def run(in_dir: Path, out_dir: Path) -> None:
    from targets.kernel_library import KernelLibrary

    rows = []
    for precision, dtype in PRECISIONS.items():
        libs = {s: KernelLibrary(in_dir / f"{precision}.{s}.so") for s in SCHEDULES}
        for case, (c, h, s) in enumerate(CASES):
            inputs, exact = _inputs(case, c, h, dtype)
            ref = _reference(exact[0], exact[1], exact[2], s)
            row: dict[str, Any] = {"precision": precision, "kernel": _name(c, h, s)}
            for schedule, lib in libs.items():
                out, args = lib.run(_name(c, h, s), inputs, ref.shape, dtype)
                cosine, rel = _errors(out, ref)
                row[schedule] = {"cosine": cosine, "rel_max_err": rel, "us": lib.median_us(_name(c, h, s), args)}
            rows.append(row)
    (out_dir / "depthwise.json").write_text(json.dumps(rows, indent=1))
    lines = ["| precision | kernel | effarch cosine | max err / max | us | dlight cosine | us | speed-up |",
             "|---" * 8 + "|"]
    for r in rows:
        e, d = r["effarch"], r["dlight"]
        lines.append(f"| {r['precision']} | {r['kernel']} | {e['cosine']:.6f} | {e['rel_max_err']:.2e} | "
                     f"{e['us']:.1f} | {d['cosine']:.6f} | {d['us']:.1f} | {d['us'] / e['us']:.2f}x |")
    (out_dir / "depthwise.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("step", choices=("pack", "run"))
    p.add_argument("--dir", default="out/depthwise")
    p.add_argument("--arch", default="sm_90")
    p.add_argument("--out", default=".")
    args = p.parse_args()
    if args.step == "pack":
        pack(Path(args.dir), args.arch)
    else:
        run(Path(args.dir), Path(args.out))


if __name__ == "__main__":
    main()
