"""Fuzz passes and the x86 backend with seeded random graphs, against onnxruntime.

    python tools/fuzz.py --count 1000 --seed 0 [--jobs 2] [--batch 10] [--out fuzz-failures] [--no-x86]

Graph ``seed`` is ``compiler.debugging.fuzz_graphs.fuzz_case(seed)``. Each goes through onnxruntime
(CPU, every graph optimisation off) as the reference, then import, every semantics-preserving pass
alone, -O3, and an x86 build at -O2 through ``compile_model`` (``--batch`` graphs share one build);
see ``compiler.debugging.fuzz``. Each failure is printed with its seed and a reproducer folder
(model.onnx, inputs.npz, failures.txt); rerun one with ``--seed N --count 1``. The last line is the
summary; the exit status is 1 when anything failed.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import sys
import time
from pathlib import Path

from compiler.debugging.fuzz import Failure, check_passes, check_x86, reference, save_reproducer
from compiler.debugging.fuzz_graphs import fuzz_case


def run_batch(seeds: list[int], out: Path, x86: bool) -> list[tuple[Failure, str]]:
    """Every check on the graphs of ``seeds``; each failure with its reproducer folder."""
    failures: list[Failure] = []
    cases, refs = [], []
    for seed in seeds:
        case = fuzz_case(seed)
        try:
            expected = reference(case)
        except Exception as e:  # the generator made a graph onnxruntime refuses: a generator bug
            failures.append(Failure(seed, "reference", "crash", str(e).splitlines()[0][:300]))
            continue
        graph, found = check_passes(case, expected)
        failures += found
        if graph is not None and x86:
            cases.append(case)
            refs.append(expected)
    if cases:
        failures += check_x86(cases, refs, out.parent if out.parent.exists() else Path("."))
    by_seed = {s: [f for f in failures if f.seed == s] for s in seeds}
    return [(f, str(save_reproducer(fuzz_case(f.seed), by_seed[f.seed], out))) for f in failures]


def _worker(args: tuple[list[int], Path, bool]) -> tuple[list[int], list[tuple[Failure, str]]]:
    logging.disable(logging.WARNING)  # TVM and the passes log per graph; the summary is the output
    return args[0], run_batch(*args)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--seed", type=int, default=0, help="first seed; graphs use seed .. seed+count-1")
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.add_argument("--batch", type=int, default=10, help="graphs per x86 build")
    p.add_argument("--out", type=Path, default=Path("fuzz-failures"), help="where reproducers go")
    p.add_argument("--no-x86", action="store_true", help="check passes only, no builds")
    args = p.parse_args(argv)
    seeds = list(range(args.seed, args.seed + args.count))
    batches = [(seeds[i:i + args.batch], args.out, not args.no_x86) for i in range(0, len(seeds), args.batch)]
    t0 = time.perf_counter()
    failures: list[Failure] = []
    done = 0
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        for batch, found in pool.imap_unordered(_worker, batches):
            done += len(batch)
            for failure, where in found:
                print(f"FAIL {failure.line()}  [reproducer: {where}]", flush=True)
                failures.append(failure)
            print(f"... {done}/{len(seeds)} graphs, {len(failures)} failures, "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - t0
    mismatched = len({f.seed for f in failures if f.kind == "mismatch"})
    crashed = len({f.seed for f in failures if f.kind == "crash"})
    print(f"fuzz: {len(seeds)} graphs (seeds {args.seed}..{args.seed + args.count - 1}), "
          f"{mismatched} with mismatches, {crashed} with crashes, {len(failures)} failures, {seconds:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
