"""tools/gpu_tensorcore_check.py's exact results, which it otherwise computes only on the GPU machine: each
case's float64 reference against the kernel effarch builds for it (``gemm_kernel``), compiled for this
CPU and run in float32."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import tvm

from targets.schedules.tensorcore_kernels import gemm_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import gpu_tensorcore_check as check  # noqa: E402  (tools/ is not a package)


@pytest.mark.parametrize(("kind", "dims"), [
    ("conv", (3, 20, 8, 7, 2)),   # a stem: 7x7, stride 2, 3 channels (ResNet-18's at 224: 3, 224, 64, 7, 2)
    ("conv", (4, 9, 5, 3)),       # 3x3, stride 1 (no stride given)
    ("conv", (6, 9, 4, 1, 2)),    # 1x1, stride 2, odd map
    ("matmul", (5, 7, 3)),
])
def test_reference_is_the_kernel_effarch_builds(kind: str, dims: tuple[int, ...]) -> None:
    x, w, x64, w64 = check._inputs(0, kind, dims, "float32")
    ref = check.reference(kind, dims, x64, w64)
    func = gemm_kernel(kind, dims, "float32").with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target="llvm")
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros(ref.shape, "float32"), dev)
    lib["main"](tvm.runtime.tensor(x, dev), tvm.runtime.tensor(w, dev), out)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-4, atol=1e-5)


def test_the_stem_case_is_resnet18s_stem() -> None:
    (kind, dims), = [(k, d) for name, k, d in check.CASES if name.startswith("stem")]
    x, w, x64, w64 = check._inputs(0, kind, dims, "float16")
    assert x.shape == (1, 3, 224, 224) and w.shape == (64, 3, 7, 7)
    assert check.reference(kind, dims, x64, w64).shape == (1, 64, 112, 112)


def test_schedule_names_take_forced_tiles_only_on_tensor_core_schedules() -> None:
    import argparse

    assert check._schedule("effarch-4warps-vec-ldsm-t64x64x64w2x2s1") == "effarch-4warps-vec-ldsm-t64x64x64w2x2s1"
    assert check._schedule("dlight") == "dlight"
    for bad in ("effarch-simt-t64x64x64w2x2s1", "dlight-t64x64x64w2x2s1", "effarch-nope", "effarch-t64x64"):
        with pytest.raises(argparse.ArgumentTypeError, match="unknown schedule"):
            check._schedule(bad)
