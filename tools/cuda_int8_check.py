"""int8 on the GPU: effarch's integer kernels against fp32 effarch, PyTorch fp32 and onnxruntime (issue 10).

  python tools/cuda_int8_check.py pack [--models digits_cnn resnet18 minilm] [--batches 1] [--dir out/int8gpu]
      here: compiles each model for sm_90 in fp32 and in each of its quantized schemes (static int8,
      calibrated on samples of its own kind: digits_cnn's training images, ResNet-18's seeded image-like
      samples, MiniLM's sentences; int8-dynamic for the models with MatMuls), and packs each artifact as
      ``tools/gpu_check.py`` does (library, weight recipe, SASS counts: IDP.4A, IMMA, HMMA), plus
      onnxruntime's outputs on the very graph effarch built (the integer kernels must compute it).
  python3 tools/cuda_int8_check.py run --dir out/int8gpu --out DIR
      on the GPU machine (runtime-only TVM): ``tools/gpu_check.py run`` on those bundles: cosine against
      onnxruntime and against PyTorch fp32, latency against effarch fp32 and the fastest PyTorch fp32
      configuration (eager, torch.compile, reduce-overhead), all in one process; DIR/gpu_check.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gpu_check  # noqa: E402  (beside this script)
from gpu_models import batched_inputs, batched_source  # noqa: E402

logger = logging.getLogger("cuda_int8_check")

# Per model, the schemes a user would pick: static int8 everywhere, dynamic int8 where MatMuls carry the work.
SCHEMES = {"digits_cnn": ("fp32", "int8", "int8-dynamic"), "resnet18": ("fp32", "int8"),
           "minilm": ("fp32", "int8", "int8-dynamic")}
CALIBRATION_SAMPLES = 64


def calibration(model: str) -> dict[str, np.ndarray]:
    """Calibration samples keyed by input name (first axis = samples), never the inputs the check runs."""
    if model == "digits_cnn":
        from compiler.zoo.digits_cnn import _split

        return {"images": _split()[0][:256].astype(np.float32)}  # the training split
    if model == "minilm":
        from compiler.zoo.minilm import SENTENCES, tokenize

        return tokenize(SENTENCES)  # the zoo's eight real sentences
    return batched_inputs(model, CALIBRATION_SAMPLES, seed=1000)  # seeds far from the check's (0, 1, ...)


def _compile_quantized(source: str, scheme: str, calib: Path, out: Path) -> object:
    """effarch compile --quantize SCHEME [--calibration] in this process: the result keeps the built graph."""
    from compiler.cli.common import load_source
    from compiler.cli.compression_args import pipeline_with_compression
    from compiler.cli.main import build_parser
    from compiler.driver import compile_model

    argv = ["compile", source, "--target", "cuda", "--arch", "sm_90", "-o", str(out), "--quantize", scheme]
    argv += ["--calibration", str(calib)] if scheme == "int8" else []
    args = build_parser().parse_args(argv)
    src = load_source(args)
    pipeline, data = pipeline_with_compression(args, src.graph)
    return compile_model(src, out, target="cuda", cpu="sm_90", opt_level=args.opt_level, pipeline=pipeline,
                         data=data)


def pack_quantized(model: str, batch: int, scheme: str, out_dir: Path, tool: str | None) -> None:
    from compiler.numerics.reference import run_onnxruntime

    bundle = out_dir / f"{model}.b{batch}.{scheme}"
    bundle.mkdir(parents=True, exist_ok=True)
    calib = out_dir / f"{model}.calib.npz"
    if not calib.exists():
        samples: dict[str, Any] = calibration(model)
        np.savez(calib, **samples)
    t0 = time.perf_counter()
    result = _compile_quantized(batched_source(model, batch), scheme, calib, bundle / "full.effarch")
    graph = result.graph_after  # type: ignore[attr-defined]
    ref: dict[str, Any] = {}
    for i, seed in enumerate((0, gpu_check.SECOND_SEED)):  # the two input sets run checks, in that order
        ref.update({f"{i}_{k}": v for k, v in run_onnxruntime(graph, batched_inputs(model, batch, seed)).items()})
    np.savez(bundle / "ort.npz", **ref)
    gpu_check.bundle_artifact(bundle, {"model": model, "batch": batch, "precision": scheme, "arch": "sm_90",
                                       "opt_level": 2}, tool)
    logger.info("%s: %.0f s", bundle.name, time.perf_counter() - t0)


def pack(models: list[str], batches: list[int], schemes: list[str] | None, out_dir: Path) -> int:
    tool = gpu_check.find_cuobjdump()
    failed = []
    for model in models:
        for batch in batches:
            for scheme in schemes or SCHEMES.get(model, ("fp32", "int8")):
                logger.info("%s batch %d %s", model, batch, scheme)
                try:
                    if scheme == "fp32":
                        gpu_check.pack_one(model, batch, "fp32", "sm_90", out_dir, tool)
                    else:
                        pack_quantized(model, batch, scheme, out_dir, tool)
                except Exception:  # noqa: BLE001  (one bundle's failure must not stop the others)
                    logger.exception("%s b%d %s not packed", model, batch, scheme)
                    failed.append(f"{model}.b{batch}.{scheme}")
    for calib in out_dir.glob("*.calib.npz"):
        calib.unlink()  # used here only; it need not travel
    if not gpu_check.fits_one_call(out_dir):
        return 1
    if failed:
        logger.error("not packed: %s", ", ".join(failed))
    return 1 if failed else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=("pack", "run"))
    p.add_argument("--models", nargs="+", default=list(SCHEMES))
    p.add_argument("--batches", nargs="+", type=int, default=[1])
    p.add_argument("--schemes", nargs="+", choices=("fp32", *gpu_check.QUANTIZED),
                   help="default: per model, " + "; ".join(f"{m} {' '.join(s)}" for m, s in SCHEMES.items()))
    p.add_argument("--dir", type=Path, default=Path("out/int8gpu"))
    p.add_argument("--out", type=Path, default=Path("."))
    p.add_argument("--profile", nargs="*", default=[], help="bundles or models to profile (see gpu_check.py)")
    p.add_argument("--budget-s", type=float, default=480)
    p.add_argument("--only", nargs="+", help="bundles or models to run (see gpu_check.py)")
    args = p.parse_args()
    gpu_check.setup_logging()
    if args.step == "pack":
        return pack(args.models, args.batches, args.schemes, args.dir)
    return gpu_check.run(args.dir, args.out, args.profile, args.budget_s, args.only)


if __name__ == "__main__":
    sys.exit(main())
