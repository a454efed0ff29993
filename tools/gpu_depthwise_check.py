"""Depthwise conv kernels (targets.schedules.gpu_depthwise, gpu_depthwise_nhwc) against numpy, and against dlight.

  python tools/gpu_depthwise_check.py pack [--dir out/depthwise] [--arch sm_90] [--layouts nchw nhwc] [--batch 32]
      here (no GPU): MobileNetV2's depthwise layers (clip(conv2d(x, w, groups=C) + b, 0, 6), 3x3, stride 1 and 2),
      one SASS-only library per (layout, precision, schedule). nchw: batch 1, fp16 and fp32, scheduled by effarch's
      GpuDepthwise and by dlight's GeneralReduction (what took them before). nhwc: at --batch, fp16, bf16 (fp32 sums
      cast back, as the bf16 builds lower them) and fp32, scheduled by effarch's GpuDepthwiseNhwc as the build
      uses it and with fixed per-thread tiles (effarch-v2 / -v8: 2 / 8 channels per thread; effarch-c1: one output
      per thread), by dlight's GeneralReduction, and by GpuDepthwise on the same layer in NCHW at that batch
      ('nchw': what a batch-32 MobileNetV2 ran before it went channels-last). plan.json: the tiles or rule of each
      kernel. No data travels: inputs come from a seed where they run.
  python3 tools/gpu_depthwise_check.py run --dir out/depthwise --out DIR
      on the GPU machine (runtime-only TVM, numpy): every kernel on seeded inputs, error against numpy's float64
      result on the same rounded inputs (cosine, max error relative to the largest output), median time
      (time_evaluator) of each schedule, effective bandwidth of effarch's (input + output bytes / time); writes
      DIR/depthwise.md and DIR/depthwise.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gpu_report as report  # noqa: E402  (beside this script)

# (channels, input size, stride): MobileNetV2 at 224x224
CASES = [(32, 112, 1), (96, 112, 2), (144, 56, 1), (144, 56, 2), (192, 28, 1), (192, 28, 2), (384, 14, 1),
         (576, 14, 1), (576, 14, 2), (960, 7, 1)]
PRECISIONS = {"fp16": "float16", "fp32": "float32"}
SCHEDULES = ("effarch", "dlight")
# NHWC: precision -> (dtype, sums' dtype; None: the dtype); schedules as in the docstring
NHWC_PRECISIONS = {"fp16": ("float16", None), "bf16": ("bfloat16", "float32"), "fp32": ("float32", None)}
NHWC_SCHEDULES = ("effarch", "effarch-v2", "effarch-v8", "effarch-c1", "dlight", "nchw")
LAYOUTS = ("nchw", "nhwc")


def _name(c: int, h: int, s: int) -> str:
    return f"dw_{c}_{h}_s{s}"


def pack(out_dir: Path, arch: str, layouts: tuple[str, ...] = LAYOUTS, batch: int = 32) -> None:
    from targets.schedules.gpu_depthwise import depthwise_kernel, schedule_with
    from targets.schedules.tensorcore_kernels import build_library, cuda_target

    out_dir.mkdir(parents=True, exist_ok=True)
    target = cuda_target(arch)
    plan: dict[str, Any] = {"layouts": list(layouts), "batch": batch}
    if "nchw" in layouts:
        for precision, dtype in PRECISIONS.items():
            for schedule in SCHEDULES:
                funcs = {_name(c, h, s): schedule_with(depthwise_kernel(c, h, s, dtype), schedule, target)
                         for c, h, s in CASES}
                build_library(funcs, arch, out_dir / f"{precision}.{schedule}.so")
                print(f"packed nchw {precision} {schedule}", flush=True)
    if "nhwc" in layouts:
        _pack_nhwc(out_dir, arch, batch, plan)
    (out_dir / "plan.json").write_text(json.dumps(plan, indent=1))


def _pack_nhwc(out_dir: Path, arch: str, batch: int, plan: dict[str, Any]) -> None:
    from targets.schedules.gpu_depthwise import depthwise_kernel, schedule_with
    from targets.schedules.gpu_depthwise_nhwc import depthwise_nhwc_kernel, schedule_nhwc_with
    from targets.schedules.tensorcore_kernels import build_library, cuda_target

    target = cuda_target(arch)
    for precision, (dtype, acc) in NHWC_PRECISIONS.items():
        for schedule in NHWC_SCHEDULES:
            if schedule == "effarch-v8" and precision != "fp16":
                continue  # 8 lanes of fp32 (bf16's sums) are not a CUDA vector: the rule keeps 4, as 'effarch'
            funcs = {}
            for c, h, s in CASES:
                if schedule == "nchw":
                    func, how = schedule_with(depthwise_kernel(c, h, s, dtype, batch=batch, acc=acc), "effarch",
                                              target), "GpuDepthwise (NCHW)"
                else:
                    func, how = schedule_nhwc_with(depthwise_nhwc_kernel(batch, c, h, s, dtype, acc), schedule,
                                                   target)
                funcs[_name(c, h, s)] = func
                plan.setdefault(f"nhwc/{precision}/{_name(c, h, s)}", {})[schedule] = how
            build_library(funcs, arch, out_dir / f"nhwc.{precision}.{schedule}.so")
            print(f"packed nhwc b{batch} {precision} {schedule}", flush=True)


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
    err = report.errors([got], [ref])
    return err["cosine"], err["max_rel_err"]


def _nhwc_inputs(case: int, batch: int, c: int, h: int, dtype: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """x [N, H, W, C], w [3, 3, 1, C], b [1, 1, 1, C] as the kernel takes them (bfloat16 as uint16 bits), and
    their float64 values."""
    rng = np.random.default_rng(3000 + case)
    arrays = [rng.uniform(-1, 1, (batch, h, h, c)).astype(np.float32),
              (rng.uniform(-1, 1, (3, 3, 1, c)) / 3).astype(np.float32),
              rng.uniform(-1, 1, (1, 1, 1, c)).astype(np.float32)]
    if dtype == "bfloat16":
        bits = [report.bf16_bits(a) for a in arrays]
        return bits, [_from_bf16_bits(a).astype(np.float64) for a in bits]
    rounded = [a.astype(dtype) for a in arrays]
    return rounded, [a.astype(np.float64) for a in rounded]


def _from_bf16_bits(a: np.ndarray) -> np.ndarray:
    return (a.astype(np.uint32) << 16).view(np.float32)


def _nhwc_reference(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
    h = x.shape[1]
    out = (h + 2 - 3) // stride + 1
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    acc = np.zeros((x.shape[0], out, out, x.shape[3]))
    for dy in range(3):
        for dx in range(3):
            acc += xp[:, dy:dy + stride * (out - 1) + 1:stride, dx:dx + stride * (out - 1) + 1:stride] * w[dy, dx, 0]
    return np.clip(acc + b, 0, 6)


def _to_nchw(inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The NHWC operands as the NCHW kernel takes them: x [N, C, H, W], w [C, 1, 3, 3], b [1, C, 1, 1]."""
    x, w, b = inputs
    return [np.ascontiguousarray(x.transpose(0, 3, 1, 2)), np.ascontiguousarray(w.transpose(3, 2, 0, 1)),
            np.ascontiguousarray(b.transpose(0, 3, 1, 2))]


def run(in_dir: Path, out_dir: Path) -> None:
    plan_path = in_dir / "plan.json"
    plan = json.loads(plan_path.read_text()) if plan_path.exists() else {"layouts": ["nchw"]}
    text = []
    if "nchw" in plan["layouts"]:
        text.append(_run_nchw(in_dir, out_dir))
    if "nhwc" in plan["layouts"]:
        text.append(_run_nhwc(in_dir, out_dir, plan))
    (out_dir / "depthwise.md").write_text("\n".join(text))
    print("\n".join(text))


def _run_nchw(in_dir: Path, out_dir: Path) -> str:
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
    return "\n".join(lines) + "\n"


def _run_nhwc(in_dir: Path, out_dir: Path, plan: dict[str, Any]) -> str:
    from targets.kernel_library import KernelLibrary

    batch, rows = int(plan["batch"]), []
    for precision, (dtype, _) in NHWC_PRECISIONS.items():
        libs = {s: KernelLibrary(in_dir / f"nhwc.{precision}.{s}.so") for s in NHWC_SCHEDULES
                if (in_dir / f"nhwc.{precision}.{s}.so").exists()}
        for case, (c, h, s) in enumerate(CASES):
            name = _name(c, h, s)
            inputs, exact = _nhwc_inputs(case, batch, c, h, dtype)
            ref = _nhwc_reference(exact[0], exact[1], exact[2], s)
            row: dict[str, Any] = {"precision": precision, "kernel": f"{name}_b{batch}",
                                   "plan": plan.get(f"nhwc/{precision}/{name}", {})}
            for schedule, lib in libs.items():
                nchw = schedule == "nchw"
                shape = tuple(ref.transpose(0, 3, 1, 2).shape) if nchw else ref.shape
                out, args = lib.run(name, _to_nchw(inputs) if nchw else inputs, shape, dtype)
                got = _from_bf16_bits(out) if dtype == "bfloat16" else out
                cosine, rel = _errors(got.transpose(0, 2, 3, 1) if nchw else got, ref)
                us = lib.median_us(name, args)
                moved = (inputs[0].size + ref.size) * inputs[0].itemsize
                row[schedule] = {"cosine": cosine, "rel_max_err": rel, "us": us, "gb_s": moved / us / 1e3}
            rows.append(row)
            print(f"measured nhwc {precision} {name}", flush=True)
    (out_dir / "depthwise_nhwc.json").write_text(json.dumps(rows, indent=1))
    return _nhwc_table(rows, batch)


def _nhwc_table(rows: list[dict[str, Any]], batch: int) -> str:
    others = [s for s in NHWC_SCHEDULES[1:] if any(s in r for r in rows)]
    lines = [f"NHWC, batch {batch}: effarch (GpuDepthwiseNhwc as built; tiles in depthwise_nhwc.json), its "
             "fixed-tile variants, dlight, and the NCHW rule on the same layer (us; speed-up = their us / effarch's)",
             "",
             "| precision | kernel | effarch cosine | max err / max | us | GB/s | "
             + " | ".join(f"{s} us" for s in others) + " | vs dlight | vs nchw |",
             "|---" * (8 + len(others)) + "|"]
    for r in rows:
        e = r["effarch"]
        cells = [f"{r[s]['us']:.1f}" if s in r else "-" for s in others]
        ratios = [f"{r[s]['us'] / e['us']:.2f}x" if s in r else "-" for s in ("dlight", "nchw")]
        lines.append(f"| {r['precision']} | {r['kernel']} | {e['cosine']:.6f} | {e['rel_max_err']:.2e} | "
                     f"{e['us']:.1f} | {e['gb_s']:.0f} | " + " | ".join(cells + ratios) + " |")
    worst = [f"{r['precision']} {r['kernel']} {s}: cosine {r[s]['cosine']:.6f}" for r in rows for s in NHWC_SCHEDULES
             if s in r and r[s]["cosine"] < 0.999]
    return "\n".join(lines + ([""] + ["Below cosine 0.999:"] + worst if worst else [])) + "\n"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("step", choices=("pack", "run"))
    p.add_argument("--dir", default="out/depthwise")
    p.add_argument("--arch", default="sm_90")
    p.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    p.add_argument("--batch", type=int, default=32, help="batch of the NHWC cases")
    p.add_argument("--out", default=".")
    args = p.parse_args()
    if args.step == "pack":
        pack(Path(args.dir), args.arch, tuple(args.layouts), args.batch)
    else:
        run(Path(args.dir), Path(args.out))


if __name__ == "__main__":
    main()
