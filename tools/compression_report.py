"""The compression report (docs/compression.md): accuracy on real data, size and x86 latency.

    python tools/compression_report.py [--models digits,resnet18,mobilenetv2,minilm] [--repeat 40]

- digits CNN (scikit-learn's real 8x8 digits, held-out split): top-1 of fp32, int8 per calibration
  method, int8 within an accuracy budget, pruned 25% / 50% / -25% FLOPs, pruned + int8, and
  onnxruntime's own ``quantize_static`` on the same calibration images;
- ResNet-18 and MobileNetV2 (random weights: speed and size only);
- MiniLM-L6 (real weights): cosine to the fp32 sentence embeddings and nearest-neighbour agreement
  on 48 real sentences (tools/data/sentences.txt), for int8 dynamic, int8 static and int4 weights.
Every effarch model is compiled with the CLI (``effarch compile``) and its accuracy measured by
running the artifact; latencies come from one alternating run of separate worker processes
(effarch and onnxruntime, same threads), medians. Prints markdown with date, machine and command.
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compiler.benchmark.runner import machine_description, time_jobs
from compiler.numerics.accuracy import cosine_per_sample

SENTENCES = Path(__file__).parent / "data" / "sentences.txt"
PER_TOPIC, CALIBRATION_PER_TOPIC = 8, 2  # the last two sentences of each topic calibrate, the rest test


@dataclass
class Variant:
    label: str
    flags: list[str]  # effarch compile flags; [] = fp32
    path: Path | None = None
    size: int = 0
    quality: str = ""
    notes: list[str] = field(default_factory=list)


def _effarch(*argv: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "compiler.cli", *argv], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"effarch {' '.join(argv)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return proc.stdout


def _compile(model: str, v: Variant, folder: Path) -> None:
    v.path = folder / f"{model}-{v.label.replace(' ', '_').replace('/', '_')}.effarch"
    out = _effarch("compile", model, *v.flags, "-o", str(v.path))
    v.size = v.path.stat().st_size
    v.notes = [ln.strip() for ln in out.split("Per-pass impact")[0].splitlines()[1:] if "kept float" in ln]


def _run_artifact(path: Path) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    from targets.runtime import load_artifact

    art = load_artifact(path)
    return lambda feeds: next(iter(art.run(feeds).values()))


def _run_onnx(path: Path) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(None, feeds)[0]


def _timings(jobs: list[tuple[str, str, str]], inputs: dict[str, np.ndarray], repeat: int) -> dict[str, float | None]:
    rows, _ = time_jobs(jobs, inputs, warmup=10, repeat=repeat, rounds=3)
    return {label: row.median_ms for label, row in rows.items()}


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None else f"{a / b:.2f}x"


# ---- onnxruntime's own quantization, the peer --------------------------------------------------------
def ort_quantize_static(fp32: Path, calibration: dict[str, np.ndarray], out: Path) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    n = len(next(iter(calibration.values())))
    batch = _static_batch(fp32)

    class Reader(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime's base is untyped
        def __init__(self) -> None:
            starts = range(0, n - batch + 1, batch)
            self.batches = iter([{k: v[i:i + batch] for k, v in calibration.items()} for i in starts])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    # ORT's recommendation for x86 without VNNI: u8 activations, 7-bit s8 weights per channel.
    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def ort_quantize_dynamic(fp32: Path, out: Path) -> Path:
    """onnxruntime's ``quantize_dynamic`` after its own pre-processing (``quant_pre_process``): the
    exported MatMuls read their weights through a Transpose, and without the pre-processing that
    folds it ORT quantizes none of them (MiniLM-L6: only the embedding Gathers, cosine 0.9997 for a
    model that runs in float; with it, all 36 MatMuls, cosine 0.9925)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    quantize_dynamic(str(prepared), str(out), per_channel=True, reduce_range=True, weight_type=QuantType.QInt8)
    return out


def _static_batch(model: Path) -> int:
    import onnx

    dim = onnx.load(str(model), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_value or 1


def _reference_onnx(model: str, folder: Path) -> Path:
    from compiler.benchmark.model import reference_onnx_path
    from compiler.driver import load_model

    return reference_onnx_path(load_model(f"zoo:{model}"), folder)


# ---- digits ---------------------------------------------------------------------------------------
def digits(folder: Path, repeat: int) -> str:
    from compiler.numerics.datasets import Dataset
    from compiler.zoo.digits_cnn import BATCH, _split

    x_tr, _, x_te, y_te = _split()
    calib, test = folder / "digits_calib.npz", folder / "digits_test.npz"
    np.savez(calib, images=x_tr[:256])
    np.savez(test, images=x_te, labels=y_te)
    data = ["--calibration", str(calib)]
    budget = [*data, "--accuracy-data", str(test)]
    variants = [
        Variant("fp32", []),
        Variant("int8 minmax", ["--quantize", "int8", *data]),
        Variant("int8 percentile", ["--quantize", "int8", "--calibration-method", "percentile", *data]),
        Variant("int8 entropy", ["--quantize", "int8", "--calibration-method", "entropy", *data]),
        Variant("int8, budget 0.5", ["--quantize", "int8", *budget, "--max-accuracy-drop", "0.5"]),
        Variant("pruned 25%", ["--prune", "0.25", *data]),
        Variant("pruned 50%", ["--prune", "0.5", *data]),
        Variant("pruned -25% FLOPs, budget 1.0", ["--prune-flops", "0.25", *budget, "--max-accuracy-drop", "1.0"]),
        Variant("pruned 25% + int8", ["--prune", "0.25", "--quantize", "int8", *data]),
    ]
    test_set = Dataset({"images": x_te}, y_te, "held-out")

    def top1(predict: Callable[[dict[str, np.ndarray]], np.ndarray]) -> float:
        got = np.concatenate([predict(f)[:real] for f, real in test_set.batches(BATCH)])
        return 100.0 * float(np.mean(got.argmax(axis=1) == y_te))

    for v in variants:
        _compile("digits_cnn", v, folder)
        assert v.path is not None
        v.quality = f"{top1(_run_artifact(v.path)):.2f}%"
    fp32_onnx = _reference_onnx("digits_cnn", folder)
    ort_int8 = ort_quantize_static(fp32_onnx, {"images": x_tr[:256]}, folder / "digits_ort_int8.onnx")
    ort_rows = [("onnxruntime fp32", fp32_onnx), ("onnxruntime int8 (quantize_static)", ort_int8)]
    quality = {label: f"{top1(_run_onnx(p)):.2f}%" for label, p in ort_rows}
    jobs = [(v.label, "effarch", str(v.path)) for v in variants]
    jobs += [(label, "onnxruntime", str(p)) for label, p in ort_rows]
    times = _timings(jobs, {"images": x_te[:BATCH]}, repeat)
    ort_fp32, ort_q = times["onnxruntime fp32"], times["onnxruntime int8 (quantize_static)"]
    lines = ["| variant | top-1 (450 held-out) | size | latency ms (batch 16) | vs ORT fp32 | vs ORT int8 |",
             "|---|---|---|---|---|---|"]
    for v in variants:
        t = times[v.label]
        lines.append(f"| effarch {v.label} | {v.quality} | {v.size / 1e3:.1f} kB | {_ms(t)} | "
                     f"{_ratio(t, ort_fp32)} | {_ratio(t, ort_q)} |")
    for label, p in ort_rows:
        lines.append(f"| {label} | {quality[label]} | {p.stat().st_size / 1e3:.1f} kB | {_ms(times[label])} | "
                     f"{_ratio(times[label], ort_fp32)} | {_ratio(times[label], ort_q)} |")
    kept = [n for v in variants for n in v.notes]
    return "\n".join(["### digits CNN (real data)", "", *lines, "", *(f"- {n}" for n in kept)])


# ---- CNNs with random weights -----------------------------------------------------------------------
def cnn(model: str, folder: Path, repeat: int) -> str:
    rng = np.random.default_rng(0)
    calib = {"images": rng.standard_normal((8, 3, 224, 224)).astype(np.float32)}
    path = folder / f"{model}_calib.npz"
    np.savez(path, **calib)  # type: ignore[arg-type]  # numpy's stub types the first keyword as allow_pickle
    variants = [Variant("fp32", []), Variant("int8", ["--quantize", "int8", "--calibration", str(path)])]
    for v in variants:
        _compile(model, v, folder)
    fp32_onnx = _reference_onnx(model, folder)
    ort_int8 = ort_quantize_static(fp32_onnx, calib, folder / f"{model}_ort_int8.onnx")
    jobs = [(f"effarch {v.label}", "effarch", str(v.path)) for v in variants]
    jobs += [("onnxruntime fp32", "onnxruntime", str(fp32_onnx)), ("onnxruntime int8", "onnxruntime", str(ort_int8))]
    times = _timings(jobs, {"images": calib["images"][:1]}, repeat)
    sizes = {f"effarch {v.label}": v.size for v in variants}
    sizes |= {"onnxruntime fp32": fp32_onnx.stat().st_size, "onnxruntime int8": ort_int8.stat().st_size}
    return _speed_table(f"### {model} (random weights: speed and size only)", times, sizes)


def _speed_table(title: str, times: dict[str, float | None], sizes: dict[str, int],
                 quality: dict[str, str] | None = None) -> str:
    q_head, q_rule = (" cosine to fp32 | nearest-neighbour agreement |", "---|---|") if quality else ("", "")
    lines = [title, "", f"| runtime | size |{q_head} latency ms | vs effarch fp32 | vs ORT fp32 | vs ORT int8 |",
             f"|---|---|{q_rule}---|---|---|---|"]
    for label, t in times.items():
        q = f" {quality.get(label, '-')} |" if quality else ""
        lines.append(f"| {label} | {sizes[label] / 1e6:.2f} MB |{q} {_ms(t)} | {_ratio(t, times['effarch fp32'])} | "
                     f"{_ratio(t, times['onnxruntime fp32'])} | {_ratio(t, times['onnxruntime int8'])} |")
    return "\n".join(lines)


# ---- MiniLM ---------------------------------------------------------------------------------------
def _sentences() -> tuple[list[str], list[str]]:
    lines = [ln.strip() for ln in SENTENCES.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    topics = [lines[i:i + PER_TOPIC] for i in range(0, len(lines), PER_TOPIC)]
    keep = PER_TOPIC - CALIBRATION_PER_TOPIC
    return [s for t in topics for s in t[:keep]], [s for t in topics for s in t[keep:]]


def _embed(predict: Callable[[dict[str, np.ndarray]], np.ndarray], sentences: list[str]) -> np.ndarray:
    from compiler.zoo.minilm import tokenize

    return np.concatenate([predict(tokenize([s])) for s in sentences])


def _neighbours(e: np.ndarray) -> np.ndarray:
    unit = e / np.linalg.norm(e, axis=1, keepdims=True)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    return np.asarray(sim.argmax(axis=1))


def minilm(folder: Path, repeat: int, keep: tuple[str, ...] | None = None) -> str:
    """The MiniLM table; ``keep`` limits effarch's rows to those labels (fp32 always stays: the reference)."""
    from compiler.zoo.minilm import tokenize

    test, calib_sentences = _sentences()
    tokens = [tokenize([s]) for s in calib_sentences]
    calib_arrays = {k: np.concatenate([t[k] for t in tokens]) for k in ("input_ids", "attention_mask")}
    calib = folder / "minilm_calib.npz"
    np.savez(calib, **calib_arrays)  # type: ignore[arg-type]  # numpy's stub types the first keyword as allow_pickle
    variants = [Variant("fp32", []), Variant("int8 dynamic", ["--quantize", "int8-dynamic"]),
                Variant("int8 static", ["--quantize", "int8", "--calibration", str(calib)]),
                # The budget is scored on the calibration sentences (cosine to fp32), never on the test ones.
                Variant("int8 static, budget 0.3", ["--quantize", "int8", "--calibration", str(calib),
                                                    "--accuracy-data", str(calib), "--max-accuracy-drop", "0.3"]),
                Variant("int8 weights", ["--quantize", "int8-weights"]),
                Variant("int4 weights", ["--quantize", "int4-weights"])]
    variants = [v for v in variants if keep is None or v.label in ("fp32", *keep)]
    for v in variants:
        _compile("minilm", v, folder)
    fp32_onnx = _reference_onnx("minilm", folder)
    ort_int8 = ort_quantize_dynamic(fp32_onnx, folder / "minilm_ort_int8.onnx")
    predictors = {f"effarch {v.label}": _run_artifact(v.path) for v in variants if v.path is not None}
    predictors |= {"onnxruntime fp32": _run_onnx(fp32_onnx), "onnxruntime int8": _run_onnx(ort_int8)}
    embeddings = {label: _embed(p, test) for label, p in predictors.items()}
    base = embeddings["effarch fp32"]
    nn = _neighbours(base)
    quality = {label: f"{float(np.mean(cosine_per_sample(e, base))):.4f} | "
                      f"{100.0 * float(np.mean(_neighbours(e) == nn)):.1f}%" for label, e in embeddings.items()}
    jobs = [(f"effarch {v.label}", "effarch", str(v.path)) for v in variants]
    jobs += [("onnxruntime fp32", "onnxruntime", str(fp32_onnx)), ("onnxruntime int8", "onnxruntime", str(ort_int8))]
    times = _timings(jobs, tokenize([test[0]]), repeat)
    sizes = {f"effarch {v.label}": v.size for v in variants}
    sizes |= {"onnxruntime fp32": fp32_onnx.stat().st_size, "onnxruntime int8": ort_int8.stat().st_size}
    title = (f"### MiniLM-L6 (real weights; {len(test)} real sentences; calibration: {len(calib_sentences)} others; "
             "onnxruntime int8 = its quant_pre_process + quantize_dynamic)")
    return _speed_table(title, times, sizes, quality)


SECTIONS: dict[str, Callable[[Path, int], str]] = {
    "digits": digits,
    "resnet18": lambda folder, repeat: cnn("resnet18", folder, repeat),
    "mobilenetv2": lambda folder, repeat: cnn("mobilenetv2", folder, repeat),
    "minilm": minilm,
    # The int8 latency rows alone (fp32, int8 dynamic, int8 static and onnxruntime): minutes, not an hour.
    "minilm-int8": lambda folder, repeat: minilm(folder, repeat, keep=("int8 dynamic", "int8 static")),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(SECTIONS))
    parser.add_argument("--repeat", type=int, default=40, help="timed runs per runtime, over 3 rounds")
    args = parser.parse_args()
    unknown = [m for m in args.models.split(",") if m not in SECTIONS]
    if unknown:
        print(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    header = [f"Measured {datetime.date.today()} on {machine_description()}, 2 threads per runtime,",
              f"with `python tools/compression_report.py {' '.join(sys.argv[1:])}`.".replace(" `", " `", 1), ""]
    print("\n".join(header), flush=True)
    with tempfile.TemporaryDirectory(prefix="effarch-compression-") as tmp:
        for name in args.models.split(","):
            print(SECTIONS[name](Path(tmp), args.repeat) + "\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
