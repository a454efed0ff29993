"""int8 on the GPU: effarch's dp4a kernels against onnxruntime running the same quantized graph.

  python tools/cuda_int8_check.py pack [--models digits_cnn] [--dir out/int8gpu]
      here: compiles each model for sm_90 as fp32, int8 (static, calibrated on its own data) and
      int8-dynamic; writes the artifacts, the inputs and onnxruntime's outputs on the quantized graph.
  python3 tools/cuda_int8_check.py run --dir out/int8gpu --out DIR
      on the GPU machine (runtime-only TVM): cosine against onnxruntime, IDP.4A / IMMA counts from
      ``cuobjdump -sass``, median latency (the artifact's time_run) per artifact; DIR/int8_gpu.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SCHEMES = ("fp32", "int8", "int8-dynamic")


def _compile(model: str, scheme: str, calib: Path, out: Path) -> tuple[object, dict[str, np.ndarray]]:
    from compiler.cli.common import load_source
    from compiler.cli.compression_args import pipeline_with_compression
    from compiler.cli.main import build_parser
    from compiler.driver import compile_model

    argv = ["compile", model, "--target", "cuda", "--arch", "sm_90", "-o", str(out)]
    argv += [] if scheme == "fp32" else ["--quantize", scheme]
    argv += ["--calibration", str(calib)] if scheme == "int8" else []
    args = build_parser().parse_args(argv)
    source = load_source(args)
    pipeline, data = pipeline_with_compression(args, source.graph)
    return compile_model(source, out, target="cuda", cpu="sm_90", pipeline=pipeline, data=data), {}


def pack(models: list[str], out_dir: Path) -> None:
    from compiler.numerics.reference import run_onnxruntime
    from compiler.zoo.digits_cnn import _split

    out_dir.mkdir(parents=True, exist_ok=True)
    for model in models:
        images = _split()[0][:256].astype(np.float32)
        calib = out_dir / f"{model}.calib.npz"
        np.savez(calib, images=images)
        for scheme in SCHEMES:
            art = out_dir / f"{model}.{scheme}.effarch"
            result, _ = _compile(model, scheme, calib, art)
            batch = result.graph_after.inputs[0].type.static_shape()[0]  # type: ignore[attr-defined]
            inputs = {"images": images[:batch]}
            np.savez(out_dir / f"{model}.inputs.npz", **inputs)
            ref = run_onnxruntime(result.graph_after, inputs)  # type: ignore[attr-defined]
            np.savez(out_dir / f"{model}.{scheme}.ort.npz", **ref)


def _count_sass(library: bytes) -> dict[str, int]:
    from targets.cuda import fatbins_in

    counts = {"IDP.4A": 0, "IMMA": 0, "instructions": 0}
    with tempfile.TemporaryDirectory() as tmp:
        for i, fb in enumerate(fatbins_in(library)):
            path = Path(tmp) / f"{i}.fatbin"
            path.write_bytes(fb)
            sass = subprocess.run(["cuobjdump", "-sass", str(path)], capture_output=True, text=True).stdout
            for line in sass.splitlines():
                if line.strip().startswith("/*") and "*/" in line:
                    counts["instructions"] += 1
                    counts["IDP.4A"] += "IDP.4A" in line
                    counts["IMMA"] += "IMMA" in line
    return counts


def run(in_dir: Path, out_dir: Path) -> None:
    from targets.artifact import open_artifact
    from targets.runtime import load_artifact

    rows = []
    for art_path in sorted(in_dir.glob("*.effarch")):
        model, scheme = art_path.name.split(".")[:2]
        inputs = dict(np.load(in_dir / f"{model}.inputs.npz"))
        ref = dict(np.load(in_dir / f"{model}.{scheme}.ort.npz"))
        art = load_artifact(art_path)
        got = art.run(inputs)
        name = next(iter(ref))
        a, b = got[name].astype(np.float64).ravel(), ref[name].astype(np.float64).ravel()
        cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))
        times = art.time_run(inputs, warmup=20, repeat=200)
        sass = _count_sass(open_artifact(art_path).library_bytes())
        rows.append({"model": model, "scheme": scheme, "cosine": cosine, "max_abs": float(np.abs(a - b).max()),
                     "ms": statistics.median(times) * 1e3, **sass})
    (out_dir / "int8_gpu.json").write_text(json.dumps(rows, indent=1))
    lines = ["| model | scheme | cosine vs ORT | max abs | median ms | IDP.4A | IMMA | SASS instr |", "|---" * 8 + "|"]
    lines += [f"| {r['model']} | {r['scheme']} | {r['cosine']:.6f} | {r['max_abs']:.3g} | {r['ms']:.4f} | "
              f"{r['IDP.4A']} | {r['IMMA']} | {r['instructions']} |" for r in rows]
    (out_dir / "int8_gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("step", choices=("pack", "run"))
    p.add_argument("--models", nargs="+", default=["digits_cnn"])
    p.add_argument("--dir", default="out/int8gpu")
    p.add_argument("--out", default=".")
    args = p.parse_args()
    if args.step == "pack":
        pack(args.models, Path(args.dir))
    else:
        run(Path(args.dir), Path(args.out))


if __name__ == "__main__":
    main()
