"""Fused attention kernels (targets.attention_kernel) against numpy, over the sizes, masks, steps and layouts
the fusion takes: more than the zoo's two transformers exercise (cross attention, 16-row tiles, one or two
warps a row tile, no head merge, a 2-D causal mask, a divided scale, a mask added on the left).

  python tools/gpu_attention_check.py pack [--dir out/attn] [--arch sm_90]
      here (no GPU): each case's graph, as targets.mixed_precision leaves attention, through
      targets.attention_fusion; every fused kernel into one library holding SASS only (nvcc); plan.json:
      each case's kernel arguments and plan. No data travels: inputs come from a seed where they run.
  python3 tools/gpu_attention_check.py run --dir out/attn --out DIR
      on the GPU machine (runtime-only TVM, nothing compiled there; numpy only): runs every kernel on seeded
      inputs; max error against numpy's float64 evaluation of the same graph (rounded to the 16-bit type where
      the graph rounds) relative to the largest output; median time; writes DIR/attention.md and .json.
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
from gpu_tensorcore_check import _from_bf16_bits, host_array, rounded  # noqa: E402

# name: batch, heads, query rows, keys, head dim, value head dim, dtype, mask, steps, head merge
CASES: dict[str, dict[str, Any]] = {
    "minilm_like_b32": {"b": 32, "h": 12, "sq": 32, "skv": 32, "d": 32, "dv": 32, "mask": "pad"},
    "gpt_like_b8_causal": {"b": 8, "h": 4, "sq": 64, "skv": 64, "d": 64, "dv": 64, "mask": "causal"},
    "cross_48x96_d16_dv48": {"b": 3, "h": 2, "sq": 48, "skv": 96, "d": 16, "dv": 48, "mask": "pad"},
    "keys_48_one_warp": {"b": 4, "h": 3, "sq": 48, "skv": 48, "d": 32, "dv": 32, "mask": "none"},
    "keys_128_d32_b8": {"b": 8, "h": 12, "sq": 128, "skv": 128, "d": 32, "dv": 32, "mask": "pad"},
    "divided_mask_left": {"b": 2, "h": 4, "sq": 32, "skv": 64, "d": 64, "dv": 64, "mask": "causal",
                          "steps": "div_left"},
    "no_head_merge": {"b": 2, "h": 4, "sq": 32, "skv": 32, "d": 32, "dv": 32, "mask": "pad", "merge": False},
    "minilm_like_b32_bf16": {"b": 32, "h": 12, "sq": 32, "skv": 32, "d": 32, "dv": 32, "mask": "pad",
                             "dtype": "bfloat16"},
    "gpt_like_b8_causal_bf16": {"b": 8, "h": 4, "sq": 64, "skv": 64, "d": 64, "dv": 64, "mask": "causal",
                                "dtype": "bfloat16"},
}
DEFAULTS = {"dtype": "float16", "steps": "mul_add", "merge": True}
# Max error relative to the largest output a correct kernel stays under: a score one rounding of the 16-bit
# type (2**-11, 2**-8) off moves its probability by about as much
TOLERANCE = {"float16": 5e-3, "bfloat16": 4e-2}


def _case(name: str) -> dict[str, Any]:
    return {**DEFAULTS, **CASES[name]}


def _shapes(c: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    mask = {"pad": (c["b"], 1, 1, c["skv"]), "causal": (c["sq"], c["skv"]), "none": None}[c["mask"]]
    shapes = {"q": (c["b"], c["sq"], c["h"] * c["d"]), "kv": (c["b"], c["skv"], c["h"] * (c["d"] + c["dv"])),
              "scale": ()}
    return {**shapes, "mask": mask} if mask else shapes


def pack(out_dir: Path, arch: str) -> None:
    from targets.attention_cases import fused_kernel
    from targets.schedules.tensorcore_kernels import build_library

    out_dir.mkdir(parents=True, exist_ok=True)
    funcs, plan = {}, {}
    for name in CASES:
        c = _case(name)
        funcs[name], args, out = fused_kernel(c, _shapes(c), arch)
        plan[name] = {"args": args, "out": list(out)}
        print(f"packed {name}: {args} -> {out}", flush=True)
    build_library(funcs, arch, out_dir / "attention.so")
    (out_dir / "plan.json").write_text(json.dumps(plan, indent=1))


def inputs(index: int, c: dict[str, Any]) -> dict[str, np.ndarray]:
    """float64 values already rounded to the 16-bit type: projections, the scale, the mask (0 or -inf)."""
    rng = np.random.default_rng(3000 + index)
    dt, shapes = c["dtype"], _shapes(c)
    vals = {"q": rng.standard_normal(shapes["q"]), "kv": rng.standard_normal(shapes["kv"])}
    scale = 1 / np.sqrt(c["d"])
    vals["scale"] = np.array(scale if c["steps"] == "mul_add" else 1 / scale)
    if c["mask"] == "pad":  # the last third of each batch row's keys are padding
        mask = np.zeros(shapes["mask"])
        mask[..., 2 * c["skv"] // 3:] = -np.inf
        vals["mask"] = mask
    elif c["mask"] == "causal":  # query i sees keys up to i + skv - sq
        i, j = np.indices((c["sq"], c["skv"]))
        vals["mask"] = np.where(j <= i + c["skv"] - c["sq"], 0.0, -np.inf)
    return {k: rounded(v, dt) for k, v in vals.items()}


def reference(c: dict[str, Any], v: dict[str, np.ndarray]) -> np.ndarray:
    dt, b, h, sq, skv, d, dv = c["dtype"], c["b"], c["h"], c["sq"], c["skv"], c["d"], c["dv"]
    q = v["q"].reshape(b, sq, h, d).transpose(0, 2, 1, 3)
    k = v["kv"][:, :, :h * d].reshape(b, skv, h, d).transpose(0, 2, 1, 3)
    val = v["kv"][:, :, h * d:].reshape(b, skv, h, dv).transpose(0, 2, 1, 3)
    s = rounded(q @ k.transpose(0, 1, 3, 2), dt)
    with np.errstate(invalid="ignore"):
        s = rounded(s * v["scale"], dt) if c["steps"] == "mul_add" else rounded(s / v["scale"], dt)
        if "mask" in v:
            s = rounded(s + v["mask"], dt)
    e = np.exp(s - s.max(-1, keepdims=True))
    p = rounded(e / e.sum(-1, keepdims=True), dt)
    o = rounded(p @ val, dt)
    return o.transpose(0, 2, 1, 3) if c["merge"] else o


def run(in_dir: Path, out_dir: Path) -> bool:
    """The table; True when every kernel is within TOLERANCE."""
    from targets.kernel_library import KernelLibrary

    plan = json.loads((in_dir / "plan.json").read_text())
    lib = KernelLibrary(in_dir / "attention.so")
    rows = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(CASES):
        c = _case(name)
        dt = c["dtype"]
        vals = inputs(index, c)
        host = [host_array(vals[a], dt) for a in plan[name]["args"]]
        got, args = lib.run(name, host, tuple(plan[name]["out"]), dt)
        got64 = got.astype(np.float64) if dt == "float16" else _from_bf16_bits(got).astype(np.float64)
        ref = reference(c, vals)
        err = float(np.abs(got64 - ref).max() / np.abs(ref).max())
        us = lib.median_us(name, args)
        if not err < TOLERANCE[dt]:
            print(f"{name}: nan {int(np.isnan(got64).sum())}, max |out| {np.nanmax(np.abs(got64)):.3g} "
                  f"(reference {np.abs(ref).max():.3g}); first outputs {got64.reshape(-1)[:6]} "
                  f"against {ref.reshape(-1)[:6]}", flush=True)
        rows.append({"case": name, **c, "rel_max_err": err, "ok": bool(err < TOLERANCE[dt]), "us": us})
    header = ["case", "B x H, Sq x Skv, d / dv", "dtype", "mask, steps, merge", "max err / max", "us"]

    def cells(r: dict[str, Any], flag: str) -> list[str]:
        return [r["case"], f"{r['b']}x{r['h']}, {r['sq']}x{r['skv']}, {r['d']} / {r['dv']}", r["dtype"],
                f"{r['mask']}, {r['steps']}, {r['merge']}", f"{r['rel_max_err']:.2e}{flag}", f"{r['us']:.1f}"]

    return report.write_check(out_dir, "attention", rows, header, cells)


def main() -> int:
    return report.pack_run_main(__doc__, "out/attn", pack, run)


if __name__ == "__main__":
    sys.exit(main())
