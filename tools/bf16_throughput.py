"""What one core of this CPU does per cycle in fp32 and in bf16: the numbers behind effarch's bf16 policy.

    python tools/bf16_throughput.py

1. ``vfmadd231ps`` against ``vdpbf16ps`` on zmm registers, 24 independent accumulators each (a C
   program built with gcc): nanoseconds per instruction, and the multiply-adds per ns that follow
   (16 per FMA, 32 per vdpbf16ps).
2. effarch's AMX micro-kernel (``targets.schedules.amx``) on a 32 x 32 x 512 block, called in a loop
   from a TIR function: multiply-adds per second, checked against numpy on the same bf16 operands.

Needs an x86 CPU with AVX512-BF16 (and AMX for the second part); prints the date, machine and command.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
import tempfile
from pathlib import Path

C_SOURCE = r"""
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
int main(void) {
  __m512 acc[24]; for (int i = 0; i < 24; i++) acc[i] = _mm512_setzero_ps();
  __m512 a = _mm512_set1_ps(1.0001f), b = _mm512_set1_ps(0.9999f);
  __m512bh ah = (__m512bh)_mm512_set1_epi32(0x3f803f80), bh = ah;
  long n = 20000000;
  double t0 = now();
  for (long r = 0; r < n; r++) {
    #pragma GCC unroll 24
    for (int i = 0; i < 24; i++) acc[i] = _mm512_fmadd_ps(a, b, acc[i]);
    __asm__ volatile("" : "+v"(a));
  }
  double t1 = now();
  for (long r = 0; r < n; r++) {
    #pragma GCC unroll 24
    for (int i = 0; i < 24; i++) acc[i] = _mm512_dpbf16_ps(acc[i], ah, bh);
    __asm__ volatile("" : "+v"(ah));
  }
  double t2 = now();
  float s = 0; for (int i = 0; i < 24; i++) s += _mm512_reduce_add_ps(acc[i]);
  printf("%.4f %.4f %g\n", (t1 - t0) / n / 24 * 1e9, (t2 - t1) / n / 24 * 1e9, s);
  return 0;
}
"""


def vector_throughput() -> tuple[float, float]:
    """(ns per vfmadd231ps, ns per vdpbf16ps) on one core."""
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "t.c", Path(tmp) / "t"
        src.write_text(C_SOURCE)
        subprocess.run(["gcc", "-O2", "-mavx512f", "-mavx512bf16", str(src), "-o", str(exe)], check=True)
        fma, dp, _ = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()
    return float(fma), float(dp)


def main() -> int:
    from compiler.benchmark.runner import machine_description

    fma, dp = vector_throughput()
    print(f"Measured {datetime.date.today()} on {machine_description()}, one core, with "
          f"`python tools/bf16_throughput.py`.\n")
    print(f"vfmadd231ps zmm: {fma:.3f} ns per instruction, {16 / fma:.0f} fp32 multiply-adds per ns")
    print(f"vdpbf16ps zmm:   {dp:.3f} ns per instruction, {32 / dp:.0f} bf16 multiply-adds per ns")
    from targets.schedules.amx import micro_kernel_throughput

    gmacs, error = micro_kernel_throughput()
    print(f"AMX micro-kernel (32 x 32 x 512 per call): {gmacs:.0f} GMAC/s (max abs error against numpy {error:.2g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
