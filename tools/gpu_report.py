"""The pure parts of ``tools/gpu_check.py``: error measures, best-of, SASS counts, kernel shares, tables.

No torch, no TVM: unit-tested here (tests/tools/test_gpu_check.py), used on the GPU machine.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

FP32_REL_TOL = 1e-4  # fp32 on both sides, different kernels and summation orders: far below this
MIN_COSINE = 0.999  # issue 9: fp16/bf16 against the fp32 PyTorch output
MIN_COSINE_INT8 = 0.99  # issue 10: int8 against fp32 where no reference runs the same quantized graph
PEERS = ("eager", "compile", "reduce_overhead")  # PyTorch configurations, in the order they are timed
# Matrix (tensor-core) instruction families in SASS: warp-level MMA (HMMA fp16/bf16/tf32, IMMA int8),
# Hopper's warpgroup MMA (HGMMA, IGMMA, QGMMA for fp8); IDP.4A is the int8 dot product on the CUDA cores.
TENSOR_CORE_OPS = ("HMMA", "HGMMA", "IMMA", "IGMMA", "QGMMA")
_OPCODE = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)(\.[A-Z0-9_.]+)?")


def sass_counts(sass: str) -> dict[str, int]:
    """Instruction counts in ``cuobjdump -sass`` text: each tensor-core family, IDP.4A, all, kernels."""
    counts = dict.fromkeys((*TENSOR_CORE_OPS, "IDP.4A", "instructions"), 0)
    counts["kernels"] = sum(1 for line in sass.splitlines() if line.strip().startswith("Function :"))
    for line in sass.splitlines():
        m = _OPCODE.match(line)
        if m is None:
            continue
        counts["instructions"] += 1
        op, suffix = m.group(1), m.group(2) or ""
        if op in TENSOR_CORE_OPS:
            counts[op] += 1
        elif op == "IDP" and suffix.startswith(".4A"):
            counts["IDP.4A"] += 1
    counts["tensor_core"] = sum(counts[k] for k in TENSOR_CORE_OPS)
    return counts


def errors(ours: list[np.ndarray], ref: list[np.ndarray]) -> dict[str, float]:
    """effarch's outputs against a reference, all outputs flattened into one vector (float64):
    cosine, max |ours - ref| / max |ref| (relative to the largest output), ||ours - ref|| / ||ref||,
    max abs error. A NaN or infinity anywhere gives cosine 0 (fails)."""
    a = np.concatenate([np.asarray(o, dtype=np.float64).ravel() for o in ours])
    b = np.concatenate([np.asarray(r, dtype=np.float64).ravel() for r in ref])
    if a.shape != b.shape:
        raise ValueError(f"output sizes differ: {a.size} vs {b.size}")
    if not np.all(np.isfinite(a)):
        return {"cosine": 0.0, "max_rel_err": float("inf"), "rel_l2": float("inf"), "max_abs_err": float("inf")}
    diff = a - b
    norm_b = float(np.linalg.norm(b))
    return {"cosine": float(a @ b / max(float(np.linalg.norm(a)) * norm_b, 1e-300)),
            "max_rel_err": float(np.max(np.abs(diff)) / max(float(np.max(np.abs(b))), 1e-300)),
            "rel_l2": float(np.linalg.norm(diff) / max(norm_b, 1e-300)),
            "max_abs_err": float(np.max(np.abs(diff)))}


def passes(precision: str, err: dict[str, float], ort_err: dict[str, float] | None = None) -> bool:
    """fp32 must match PyTorch fp32 closely; fp16/bf16 must keep cosine >= MIN_COSINE against it; int8
    must compute the quantized graph onnxruntime computes (``ort_err``), else keep MIN_COSINE_INT8."""
    if precision == "fp32":
        return err["rel_l2"] < FP32_REL_TOL
    if precision.startswith("int8"):
        return ort_err["cosine"] >= MIN_COSINE if ort_err else err["cosine"] >= MIN_COSINE_INT8
    return err["cosine"] >= MIN_COSINE


def best_of(times: dict[str, float | None]) -> tuple[str, float] | None:
    """The fastest PyTorch configuration that ran: (name, ms); None when none ran."""
    ran = [(ms, name) for name, ms in times.items() if ms is not None]
    if not ran:
        return None
    ms, name = min(ran)
    return name, ms


def kernel_shares(events: Iterable[tuple[str, float]], top: int = 10) -> list[dict[str, Any]]:
    """(kernel name, microseconds) per launch -> the ``top`` kernels by total time, with their share of
    all kernel time, launch count and mean."""
    totals: dict[str, list[float]] = {}
    for name, us in events:
        totals.setdefault(name, []).append(us)
    grand = sum(sum(v) for v in totals.values())
    ranked = sorted(totals.items(), key=lambda kv: -sum(kv[1]))[:top]
    return [{"kernel": name, "total_us": sum(v), "share": sum(v) / grand if grand else 0.0, "calls": len(v),
             "mean_us": sum(v) / len(v)} for name, v in ranked]


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def _tc(row: dict[str, Any]) -> str:
    sass = row.get("sass")
    if not sass:
        return "n/a"
    parts = [f"{k} {sass[k]}" for k in TENSOR_CORE_OPS if sass.get(k)]
    return ", ".join(parts) if parts else "0"


def header(env: dict[str, Any], iters: int, warmup: int) -> str:
    return (f"{env['date']}, {env['device']} ({env['capability']}), PyTorch {env['torch']}, TVM {env['tvm']} "
            f"runtime only, CUDA source compilations requested at load: {env['cuda_compilations']}; TF32 off; "
            f"medians of {iters} runs after {warmup} warm-up, CUDA events, all in one process. PyTorch runs in the "
            f"row's precision (module and float inputs cast); errors are effarch against PyTorch fp32.")


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | batch | precision | effarch ms | eager ms | compile ms | reduce-overhead ms | best | "
             "effarch / best | cosine | max rel err | PyTorch cosine | tensor-core SASS | ok |",
             "|" + "---|" * 14]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r.get('batch', '')} | {r.get('precision', '')} | skipped: "
                         f"{r['skipped']} |" + " |" * 10)
            continue
        best = best_of({p: r.get(f"{p}_ms") for p in PEERS})
        ratio = r["effarch_ms"] / best[1] if best else None
        lines.append(f"| {_model(r)} | {r['batch']} | {r['precision']} | {r['effarch_ms']:.3f} | "
                     f"{_fmt(r.get('eager_ms'))} | {_fmt(r.get('compile_ms'))} | {_fmt(r.get('reduce_overhead_ms'))} | "
                     f"{best[0] if best else 'n/a'} | {_fmt(ratio, '.2f')}x | {r['cosine']:.6f} | "
                     f"{r['max_rel_err']:.2e} | {_fmt(r.get('torch_cosine'), '.6f')} | {_tc(r)} | "
                     f"{'yes' if r['ok'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def _model(row: dict[str, Any]) -> str:
    """The row's model, with its bundle's variant where the bundle has one (``gpt.b32.fp16~L``: builds timed side
    by side in one run)."""
    variant = str(row.get("bundle", "")).partition("~")[2]
    return f"{row['model']} ~{variant}" if variant else str(row["model"])


def profile_table(name: str, ms_per_call: float, shares: list[dict[str, Any]]) -> str:
    lines = [f"{name}: top kernels of effarch (torch.profiler, {ms_per_call:.3f} ms of kernel time per call)", "",
             "| kernel | share | us per call | launches per call |", "|---|---|---|---|"]
    lines += [f"| `{s['kernel'][:80]}` | {s['share'] * 100:.1f}% | {s['per_call_us']:.1f} | "
              f"{s['per_call_launches']:g} |" for s in shares]
    return "\n".join(lines) + "\n"


def bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even as casts do (finite values;
    NaN stays NaN)."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(a, dtype=np.float32))
    return np.where(nan, np.uint16(0x7FC0), rounded).astype(np.uint16)


def int8_table(rows: list[dict[str, Any]]) -> str:
    """Quantized rows against effarch fp32 of the same model and batch (same run) and PyTorch's best fp32."""
    fp32 = {(r["model"], r["batch"]): r["effarch_ms"] for r in rows
            if r.get("precision") == "fp32" and "effarch_ms" in r}
    lines = ["| model | batch | scheme | effarch ms | / effarch fp32 | / best PyTorch fp32 | cosine vs onnxruntime | "
             "cosine vs PyTorch fp32 | IDP.4A | IMMA | HMMA |", "|" + "---|" * 11]
    for r in rows:
        if not str(r.get("precision", "")).startswith("int8") or "effarch_ms" not in r:
            continue
        base = fp32.get((r["model"], r["batch"]))
        sass = r.get("sass") or {}
        lines.append(f"| {_model(r)} | {r['batch']} | {r['precision']} | {r['effarch_ms']:.3f} | "
                     f"{_fmt(r['effarch_ms'] / base if base else None, '.2f')} | "
                     f"{_fmt(r.get('effarch_over_best'), '.2f')} | {_fmt(r.get('cosine_vs_ort'), '.6f')} | "
                     f"{r['cosine']:.6f} | {sass.get('IDP.4A', 'n/a')} | {sass.get('IMMA', 'n/a')} | "
                     f"{sass.get('HMMA', 'n/a')} |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def write_check(out_dir: Path, stem: str, rows: list[dict[str, Any]], header: list[str],
                cells: Callable[[dict[str, Any], str], list[str]]) -> bool:
    """A kernel check's rows as ``out_dir/stem.json`` and a table (``cells(row, flag)``, flag marking a wrong
    row) in ``stem.md``, printed too; True when every row is ok."""
    (out_dir / f"{stem}.json").write_text(json.dumps(rows, indent=1))
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += ["| " + " | ".join(cells(r, "" if r["ok"] else " **WRONG**")) + " |" for r in rows]
    (out_dir / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return all(r["ok"] for r in rows)


def pack_run_main(doc: str | None, default_dir: str, pack: Callable[[Path, str], None],
                  run: Callable[[Path, Path], bool]) -> int:
    """The command line of a kernel check tool: ``pack [--dir D] [--arch A]`` here, ``run --dir D --out O`` on
    the GPU machine; the exit status is 1 when ``run`` finds a kernel wrong."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=("pack", "run"))
    p.add_argument("--dir", default=default_dir)
    p.add_argument("--arch", default="sm_90")
    p.add_argument("--out", default=".")
    args = p.parse_args()
    if args.step == "pack":
        pack(Path(args.dir), args.arch)
        return 0
    return 0 if run(Path(args.dir), Path(args.out)) else 1
