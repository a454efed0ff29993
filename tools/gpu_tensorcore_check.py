"""Tensor-core GEMM kernels (targets.schedules.gpu_tensorcore) against numpy, and against dlight's schedule.

  python tools/gpu_tensorcore_check.py pack [--dir out/tensorcore] [--arch sm_90] [--schedules S ..]
                                          [--cases NAME ..] [--precisions P ..]
      here (no GPU): for each GEMM kind (default the batch-1 ones: 49x512x4608, 128x384x1536, 12 x
      128x128x32 attention, 1x1 and 3x3 NCHW conv; batch-32 GEMMs on request) and precision (fp16, fp16
      -> fp32 accumulate, bf16, bf16 -> fp32; fp32 on request), the kernel scheduled by effarch's
      TensorCoreMatmul (as is; with split reductions; software-pipelined; split with at most 8 or 4 warps
      per block, pipelined where the rule decides, always (``-pipelined``, ``-pipe3``) or never
      (``-pipe1``), ``-vec`` writing back 4-element vectors, ``-ldsm`` loading fragments from the shared state
      space, ``-tBMxBNxBKwWMxWNsS`` in those tiles instead of the rule's choice; the build's rule is
      ``effarch-4warps-vec-ldsm``),
      for fp32 by effarch's SimtMatmul (``effarch-simt`` as the build uses it, ``-4x4`` with 4x4 outputs per
      thread, ``-pipe`` / ``-pipe3`` software-pipelined), by effarch's SmallMMatmul (``effarch-small``, the GEMMs
      of 2-15 rows in the ``small_*`` cases; ``-nNkK[sS]`` with N threads across the columns and K along the
      reduction, K in S parts), and by dlight's
      Matmul (its tensor-core path where it takes the shape, else SIMT), built
      into one library per (precision, schedule) with SASS only (nvcc); plan.json: what was packed and
      each kernel's tiles. No data travels: inputs come from a seed where they run.
  python3 tools/gpu_tensorcore_check.py run --dir out/tensorcore --out DIR
      on the GPU machine (runtime-only TVM, nothing compiled there; numpy, no ml_dtypes needed): runs
      every kernel on seeded inputs, error against numpy's float64 result on the same rounded inputs
      (cosine, max error relative to the largest output), median time of each schedule
      (time_evaluator), writes DIR/tensorcore.md and DIR/tensorcore.json.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# (name, kind, dims): matmul (m, n, k) as [m,k] x [k,n]; bmm (b, m, n, k); conv (c, h, f, r[, stride]), NCHW,
# batch 1, padded by r // 2
CASES = [
    ("gemm_49x512x4608", "matmul", (49, 512, 4608)),
    ("gemm_128x384x1536", "matmul", (128, 384, 1536)),
    ("attention_12x128x128x32", "bmm", (12, 128, 128, 32)),
    ("conv1x1_256to512_14", "conv", (256, 14, 512, 1)),
    ("conv3x3_512_7", "conv", (512, 7, 512, 3)),
    ("conv3x3_64_56", "conv", (64, 56, 64, 3)),
    ("stem_7x7s2_3to64_224", "conv", (3, 224, 64, 7, 2)),  # ResNet-18's stem: 3 channels gathered
    # batch 32 as GEMMs (a convolution's im2col as a plain matrix): ResNet-18 layer 1 and 4 3x3, encoder FFN
    ("b32_gemm_100352x64x576", "matmul", (100352, 64, 576)),
    ("b32_gemm_1568x512x4608", "matmul", (1568, 512, 4608)),
    ("b32_gemm_4096x1536x384", "matmul", (4096, 1536, 384)),
    ("b32_gemm_4096x384x1536", "matmul", (4096, 384, 1536)),
    # GPT at batch 32 (2048 tokens): the QKV projection, FFN up and down (short K: prologue and epilogue weigh)
    ("b32_gemm_2048x768x256", "matmul", (2048, 768, 256)),
    ("b32_gemm_2048x1024x256", "matmul", (2048, 1024, 256)),
    ("b32_gemm_2048x256x1024", "matmul", (2048, 256, 1024)),
    # MiniLM at batch 32 (the zoo's 32 tokens a sentence: 1024 rows): QKV, FFN up and down, attention output
    ("b32_gemm_1024x1152x384", "matmul", (1024, 1152, 384)),
    ("b32_gemm_1024x1536x384", "matmul", (1024, 1536, 384)),
    ("b32_gemm_1024x384x1536", "matmul", (1024, 384, 1536)),
    ("b32_gemm_1024x384x384", "matmul", (1024, 384, 384)),
    # float32 GEMMs of a few rows (effarch-small): the MLP at batch 8, and a few tokens through a 4096-wide
    # layer, an FFN up and down of a 768-wide encoder, two rows of a 784-wide input, 15 rows (padded to 16)
    ("small_8x512x784", "matmul", (8, 512, 784)),
    ("small_8x512x512", "matmul", (8, 512, 512)),
    ("small_4x4096x4096", "matmul", (4, 4096, 4096)),
    ("small_12x3072x768", "matmul", (12, 3072, 768)),
    ("small_12x768x3072", "matmul", (12, 768, 3072)),
    ("small_2x512x784", "matmul", (2, 512, 784)),
    ("small_15x1024x1024", "matmul", (15, 1024, 1024)),
]
BATCH1 = [name for name, _, _ in CASES if not name.startswith(("b32", "small"))]
# name -> (operand dtype, the op's out_dtype: None = the operands' dtype, so bf16 accumulates in bf16)
PRECISIONS = {"fp16": ("float16", None), "fp16-acc32": ("float16", "float32"), "bf16": ("bfloat16", None),
              "bf16-acc32": ("bfloat16", "float32"), "fp32": ("float32", None)}
SCHEDULES = ("effarch", "effarch-splitk", "effarch-pipelined", "effarch-8warps", "effarch-8warps-pipelined",
             "effarch-8warps-pipe3", "effarch-8warps-pipe1", "effarch-8warps-vec", "effarch-4warps",
             "effarch-4warps-vec", "effarch-4warps-vec-ldsm", "effarch-4warps-vec-ldsm-pipe2",
             "effarch-4warps-vec-ldsm-pipe3", "effarch-8warps-vec-ldsm", "effarch-4warps-vec-ldsm-band", "effarch-simt",
             "effarch-simt-4x4", "effarch-simt-pipe", "effarch-simt-pipe3", "effarch-simt-band", "effarch-small",
             "dlight")
# '-band': the kernels built with ``targets.cuda.branch_free_guards`` (index-only guards without short-circuits)
TENSOR_CORE_PRECISIONS = [p for p in PRECISIONS if p != "fp32"]
# the tensor-core schedules take no float32 GEMM
FP32_SCHEDULES = ("effarch-simt", "effarch-simt-4x4", "effarch-simt-pipe", "effarch-simt-pipe3", "effarch-simt-band",
                  "effarch-small", "dlight")


def _to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounded to nearest even."""
    bits = np.array(a, dtype=np.float32, order="C").view(np.uint32)
    # an array, also for 0-d input (arithmetic on a 0-d array gives a numpy scalar, which TVM's copyfrom would
    # convert by value instead of copying as bits)
    return np.asarray(((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16))


def _from_bf16_bits(a: np.ndarray) -> np.ndarray:
    return (a.astype(np.uint32) << 16).view(np.float32)


def rounded(a: np.ndarray, dtype: str) -> np.ndarray:
    """``a`` rounded to ``dtype`` (float16, bfloat16, else float32) and back to float64."""
    if dtype == "float16":
        return a.astype(np.float16).astype(np.float64)
    if dtype == "bfloat16":
        return _from_bf16_bits(_to_bf16_bits(a.astype(np.float32))).astype(np.float64)
    return a.astype(np.float32).astype(np.float64)


def host_array(a: np.ndarray, dtype: str) -> np.ndarray:
    """``a`` as a kernel takes it: float16, or bfloat16 as its bit patterns."""
    return a.astype(np.float16) if dtype == "float16" else _to_bf16_bits(a.astype(np.float32))


def _inputs(case: int, kind: str, dims: tuple[int, ...], dtype: str) -> tuple[np.ndarray, ...]:
    """(x, w) as the kernel takes them (float16, or bfloat16 bits as uint16) and their float64 values."""
    from targets.kernel_library import operand_shapes

    rng = np.random.default_rng(1000 + case)
    xs, ws = operand_shapes(kind, dims)
    fan_in = int(np.prod(ws[1:])) if kind == "conv" else ws[-2]
    x32 = rng.uniform(-1, 1, xs).astype(np.float32)
    w32 = (rng.uniform(-1, 1, ws) / np.sqrt(fan_in)).astype(np.float32)
    if dtype in ("float16", "float32"):
        x, w = x32.astype(dtype), w32.astype(dtype)
        return x, w, x.astype(np.float64), w.astype(np.float64)
    x, w = _to_bf16_bits(x32), _to_bf16_bits(w32)
    return x, w, _from_bf16_bits(x).astype(np.float64), _from_bf16_bits(w).astype(np.float64)


def reference(kind: str, dims: tuple[int, ...], x64: np.ndarray, w64: np.ndarray) -> np.ndarray:
    """The case's exact result in float64, from its operands' values."""
    if kind != "conv":
        return x64 @ w64
    from targets.kernel_library import conv_dims

    c, h, f, r, stride = conv_dims(dims)
    pad = r // 2
    out = (h + 2 * pad - r) // stride + 1
    xp = np.pad(x64[0], ((0, 0), (pad, pad), (pad, pad)))
    span = stride * (out - 1) + 1
    cols = np.stack([xp[:, dy:dy + span:stride, dx:dx + span:stride] for dy in range(r) for dx in range(r)],
                    axis=1)  # c, r*r, out, out
    return np.einsum("ckyx,fck->fyx", cols, w64.reshape(f, c, r * r))[None]


def pack(out_dir: Path, arch: str, schedules: tuple[str, ...] = SCHEDULES, cases: tuple[str, ...] = tuple(BATCH1),
         precisions: tuple[str, ...] = tuple(PRECISIONS)) -> None:
    from targets.schedules.tensorcore_kernels import build_library, gemm_kernel, schedule_with

    out_dir.mkdir(parents=True, exist_ok=True)
    plan: dict[str, Any] = {"cases": list(cases), "precisions": list(precisions), "schedules": list(schedules)}
    for precision in precisions:
        dtype, acc = PRECISIONS[precision]
        for schedule in schedules:
            if (dtype == "float32") != schedule.startswith(FP32_SCHEDULES) and schedule != "dlight":
                continue
            funcs = {}
            for name, kind, dims in CASES:
                if name in cases:
                    funcs[name], how = schedule_with(gemm_kernel(kind, dims, dtype, acc), schedule, arch)
                    plan.setdefault(f"{precision}/{name}", {})[schedule] = how
            build_library(funcs, arch, out_dir / f"{precision}.{schedule}.so", guards=schedule.endswith("-band"))
            print(f"packed {precision} {schedule}", flush=True)
    (out_dir / "plan.json").write_text(json.dumps(plan, indent=1))


def _errors(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    a, b = got.astype(np.float64).ravel(), ref.ravel()
    cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))
    return cosine, float(np.abs(a - b).max() / (np.abs(b).max() + 1e-30))


def run(in_dir: Path, out_dir: Path) -> None:
    from targets.kernel_library import KernelLibrary

    plan = json.loads((in_dir / "plan.json").read_text())
    schedules = plan.get("schedules", SCHEDULES)
    rows = []
    for precision in plan.get("precisions", PRECISIONS):
        dtype = PRECISIONS[precision][0]
        libs = {s: KernelLibrary(in_dir / f"{precision}.{s}.so") for s in schedules
                if (in_dir / f"{precision}.{s}.so").exists()}
        for case, (name, kind, dims) in enumerate(CASES):
            if name not in plan.get("cases", BATCH1):
                continue
            x, w, x64, w64 = _inputs(case, kind, dims, dtype)
            ref = reference(kind, dims, x64, w64)
            row: dict[str, Any] = {"precision": precision, "kernel": name, "plan": plan[f"{precision}/{name}"]}
            flops = 2 * float(np.prod(ref.shape)) * (float(np.prod(w.shape[1:])) if kind == "conv" else x.shape[-1])
            for schedule, lib in libs.items():
                out, args = lib.run(name, [x, w], ref.shape, dtype)
                got = _from_bf16_bits(out) if dtype == "bfloat16" else out
                cosine, rel = _errors(got, ref)
                us = lib.median_us(name, args)
                row[schedule] = {"cosine": cosine, "rel_max_err": rel, "us": us, "tflops": flops / us / 1e6}
            rows.append(row)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tensorcore.json").write_text(json.dumps(rows, indent=1))
    columns = [s for s in schedules if any(s in r for r in rows)]
    lines = ["| precision | kernel | " + " | ".join(f"{s}: tiles; cosine, us, TFLOP/s" for s in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for r in rows:
        cells = []
        for s in columns:
            if s not in r:
                cells.append("-")
                continue
            how, m = r["plan"].get(s, "?"), r[s]
            tiles = how.split(": ")[-1].replace("block ", "") if s.startswith("effarch") else how
            cells.append(f"{tiles}; {m['cosine']:.6f}, {m['us']:.1f}, {m['tflops']:.1f}")
        lines.append(f"| {r['precision']} | {r['kernel']} | " + " | ".join(cells) + " |")
    (out_dir / "tensorcore.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _schedule(name: str) -> str:
    """``name`` if it is one of SCHEDULES, or one of them with forced tiles (``-t64x64x64w2x2s2``)."""
    from targets.kernel_library import forced_tiles

    if re.fullmatch(r"effarch-small-n\d+k\d+(s\d+)?", name):
        return name
    base, _ = forced_tiles(name)
    if base not in SCHEDULES or (base != name and (base == "dlight" or "simt" in base or "small" in base)):
        raise argparse.ArgumentTypeError(f"unknown schedule {name!r}: one of {', '.join(SCHEDULES)}, "
                                         "a tensor-core one optionally ending in -tBMxBNxBKwWMxWNsS, "
                                         "effarch-small-nNkK")
    return name


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("step", choices=("pack", "run"))
    p.add_argument("--dir", default="out/tensorcore")
    p.add_argument("--arch", default="sm_90")
    p.add_argument("--out", default=".")
    p.add_argument("--schedules", nargs="+", type=_schedule, default=list(SCHEDULES),
                   help="pack only these schedules (run takes whichever were packed); a tensor-core schedule "
                        "with '-tBMxBNxBKwWMxWNsS' takes those tiles instead of the rule's choice")
    p.add_argument("--cases", nargs="+", choices=[c[0] for c in CASES], default=BATCH1,
                   help="pack only these kernels (default: the batch-1 ones)")
    p.add_argument("--precisions", nargs="+", choices=list(PRECISIONS), default=TENSOR_CORE_PRECISIONS)
    args = p.parse_args()
    if args.step == "pack":
        pack(Path(args.dir), args.arch, tuple(args.schedules), tuple(args.cases), tuple(args.precisions))
    else:
        run(Path(args.dir), Path(args.out))


if __name__ == "__main__":
    main()
