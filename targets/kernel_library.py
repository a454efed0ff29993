"""Run and time the kernels of a library from ``targets.schedules.tensorcore_kernels.build_library``
with the runtime-only TVM (outside ``targets.schedules``, whose package needs TVM's compiler)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import tvm


def operand_shapes(kind: str, dims: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """matmul (m, n, k): [m, k] x [k, n]; bmm (b, m, n, k): [b, m, k] x [b, k, n]; conv (c, h, f, r) or
    (c, h, f, r, stride): x [1, c, h, h], w [f, c, r, r], padded by r // 2."""
    if kind == "matmul":
        m, n, k = dims
        return (m, k), (k, n)
    if kind == "bmm":
        b, m, n, k = dims
        return (b, m, k), (b, k, n)
    c, h, f, r, _ = conv_dims(dims)
    return (1, c, h, h), (f, c, r, r)


def conv_dims(dims: tuple[int, ...]) -> tuple[int, int, int, int, int]:
    """A convolution case's (c, h, f, r, stride): the stride is 1 where ``dims`` gives none."""
    c, h, f, r, *rest = dims
    return c, h, f, r, (rest[0] if rest else 1)


def forced_tiles(schedule: str) -> tuple[str, tuple[int, ...] | None]:
    """A kernel-check schedule name split into its base name and the tiles it forces: ``-t64x64x64w2x2s1``
    at its end gives (64, 64, 64, 2, 2, 1), ``Tiles``' fields in order; None where it forces none."""
    forced = re.search(r"-t(\d+)x(\d+)x(\d+)w(\d+)x(\d+)s(\d+)$", schedule)
    if forced is None:
        return schedule, None
    return schedule[:forced.start()], tuple(int(g) for g in forced.groups())


class KernelLibrary:
    """A library from ``build_library`` loaded on the GPU (runtime-only TVM; bfloat16 arrays travel
    as their uint16 bit patterns, so no ml_dtypes is needed)."""

    def __init__(self, path: Path) -> None:
        from targets.cuda import CudaTarget

        self.device = CudaTarget().device()
        self.module = tvm.runtime.load_module(str(path))

    def _tensor(self, array: np.ndarray, dtype: str) -> Any:
        return tvm.runtime.empty(array.shape, dtype, self.device).copyfrom(array)

    def run(self, name: str, inputs: list[np.ndarray], out_shape: tuple[int, ...], dtype: str,
            out_dtype: str | None = None) -> tuple[np.ndarray, list[Any]]:
        """The kernel's output (float16 as float16, bfloat16 as uint16 bits) and its argument tensors; inputs in
        ``dtype``, the output in ``out_dtype`` (default ``dtype``)."""
        out_dtype = out_dtype or dtype
        args = [self._tensor(a, dtype) for a in inputs] + [tvm.runtime.empty(out_shape, out_dtype, self.device)]
        self.module[name](*args)
        self.device.sync()
        out = args[-1]
        bits = out._create_view(out.shape, "uint16").numpy() if out_dtype == "bfloat16" else out.numpy()
        return bits, args

    def median_us(self, name: str, args: list[Any]) -> float:
        timer = self.module.time_evaluator(name, self.device, number=20, repeat=7, min_repeat_ms=20)
        return float(np.median(timer(*args).results)) * 1e6
