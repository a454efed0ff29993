"""Integer kernels against the fp32 kernels of the same shapes, on this CPU, in one process.

    python tools/bench_int8.py [--rounds 5] [--cpu NAME]

Each workload is built three ways through the -O2 lowering and schedules: fp32 (MatMul/Conv on a
constant weight), int8 with full-range weights (|w| <= 127) and int8 with weights |w| <= 64 (on
AVX2 without VNNI these take different kernels: int16 vpmaddwd, vpmaddubsw). The builds are timed
in alternating rounds (the machine is shared); the table gives each one's median in ms and its
speed-up over fp32, with the kernel the int8 builds used.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from compiler.benchmark.runner import machine_description  # noqa: E402
from compiler.ir import Graph, parse_graph  # noqa: E402

# name -> (IR text with %w a constant, input shapes by name)
WORKLOADS: dict[str, tuple[str, dict[str, tuple[int, ...]]]] = {
    "matmul 128x768x768": (
        "graph main(%a: {t}[128,768]{za}) -> (%y) {{\n  %w = const {wt}[768,768] @?\n"
        "  %y = {op}(%a, %w{zargs}) : {o}[128,768]\n}}", {"a": (128, 768)}),
    "conv 3x3 64->64 56x56": (
        "graph main(%a: {t}[1,64,56,56]{za}) -> (%y) {{\n  %w = const {wt}[64,64,3,3] @?\n"
        "  %y = {conv}(%a, %w{zargs}) {{pads=[1,1,1,1]}} : {o}[1,64,56,56]\n}}", {"a": (1, 64, 56, 56)}),
    "conv 1x1 256->64 56x56": (
        "graph main(%a: {t}[1,256,56,56]{za}) -> (%y) {{\n  %w = const {wt}[64,256,1,1] @?\n"
        "  %y = {conv}(%a, %w{zargs}) : {o}[1,64,56,56]\n}}", {"a": (1, 256, 56, 56)}),
}


@dataclass
class Variant:
    label: str
    graph: Graph
    inputs: dict[str, np.ndarray]


def _variants(text: str, shapes: dict[str, tuple[int, ...]], rng: np.random.Generator) -> list[Variant]:
    fp32 = parse_graph(text.format(t="f32", za="", wt="f32", op="MatMul", conv="Conv", zargs="", o="f32"))
    fp32_in = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    int8_text = text.format(t="u8", za=", %za: u8[]", wt="i8", op="MatMulInteger", conv="ConvInteger",
                            zargs=", %za", o="i32")
    int8_in = {**{n: rng.integers(0, 256, s, dtype=np.uint8) for n, s in shapes.items()}, "za": np.asarray(3, np.uint8)}
    out = [Variant("fp32", _with_weight(fp32, lambda s: rng.standard_normal(s).astype(np.float32)), fp32_in)]
    for wmax in (127, 64):
        g = _with_weight(parse_graph(int8_text), lambda s, m=wmax: rng.integers(-m, m + 1, s, dtype=np.int8))
        out.append(Variant(f"int8 |w|<={wmax}", g, int8_in))
    return out


def _with_weight(g: Graph, make: Callable[[tuple[int, ...]], np.ndarray]) -> Graph:
    w = g.constants["w"]
    w.const = make(tuple(w.type.static_shape()))
    return g


def _build(v: Variant, cpu: str | None, folder: Path) -> tuple[Callable[[], float], str]:
    """A function timing one run (seconds, median of a few), and the int8 kernel used."""
    from targets.build import build
    from targets.runtime import load_artifact

    path = folder / f"{len(list(folder.iterdir()))}.effarch"
    result = build(v.graph, path, target="x86", cpu=cpu)
    loaded = load_artifact(path)
    params = [p["name"] for p in result.manifest["params"]]
    kernel = next((n.rsplit("_", 2)[-2] + "_" + n.rsplit("_", 1)[-1] for n in params if "colsum" not in n), "-")
    return lambda: float(np.median(loaded.time_run(v.inputs, warmup=2, repeat=10))), kernel


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cpu", default=None, help="x86 CPU to build for (default: this one)")
    args = parser.parse_args()
    os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))
    rng = np.random.default_rng(0)
    folder = Path(tempfile.mkdtemp(prefix="bench-int8-"))
    print(f"Measured {datetime.date.today()} on {machine_description()} ({os.environ['TVM_NUM_THREADS']} threads) "
          f"with `python tools/bench_int8.py {' '.join(sys.argv[1:])}`: median of {args.rounds} alternating rounds.\n")
    print("| workload | fp32 ms | int8 ms, full-range w (kernel) | vs fp32 | int8 ms, abs(w) <= 64 (kernel) "
          "| vs fp32 |")
    print("|---|---|---|---|---|---|")
    for name, (text, shapes) in WORKLOADS.items():
        built = [_build(v, args.cpu, folder) for v in _variants(text, shapes, rng)]
        times: list[list[float]] = [[] for _ in built]
        for _ in range(args.rounds):
            for t, (run, _k) in zip(times, built, strict=True):
                t.append(run())
        ms = [float(np.median(t)) * 1e3 for t in times]
        cells = [f"{ms[i]:.3f} ({built[i][1]}) | {ms[0] / ms[i]:.2f}x" for i in (1, 2)]
        print(f"| {name} | {ms[0]:.3f} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
