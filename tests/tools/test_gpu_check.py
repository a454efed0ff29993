"""The GPU check's pure parts (tools/gpu_report.py), which run only on the GPU machine otherwise:
error measures, best-of, SASS counts, kernel shares, bfloat16 bits, tables; and batch variants of the zoo."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import gpu_report as report  # noqa: E402  (tools/ is not a package)

SASS = """
        Function : tvmgen_matmul_kernel
        .headerflags    @"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                 /* 0x00000a00ff017b82 */
                                                                          /* 0x000fe20000000800 */
        /*0010*/                   HMMA.16816.F32 R4, R8, R12, R4 ;       /* 0x0000000c0804723c */
        /*0020*/              @!P0 HMMA.16816.F16 R4, R8, R12, R4 ;       /* 0x0000000c0804723c */
        /*0030*/                   HGMMA.64x128x16.F32 R24, gdesc[UR4], RZ ; /* 0x0 */
        /*0040*/               @P1 IMMA.16832.S8.S8 R4, R8, R12, R4 ;     /* 0x0 */
        /*0050*/                   IDP.4A.S8.S8 R3, R4, R5, R3 ;          /* 0x0 */
        /*0060*/                   IDP.2A.LO.S16.S8 R3, R4, R5, R3 ;      /* 0x0 */
        /*0070*/                   EXIT ;                                 /* 0x0 */
        Function : tvmgen_softmax_kernel
        /*0000*/                   BRA 0x0 ;                              /* 0x0 */
"""


def test_sass_counts_each_family_and_every_instruction_once() -> None:
    counts = report.sass_counts(SASS)
    assert counts["HMMA"] == 2  # predicated ones count
    assert counts["HGMMA"] == 1 and counts["IMMA"] == 1 and counts["IGMMA"] == 0
    assert counts["tensor_core"] == 4
    assert counts["IDP.4A"] == 1  # IDP.2A is not the int8 dot product
    assert counts["instructions"] == 9  # the second (encoding-only) line of an instruction is not one
    assert counts["kernels"] == 2


def test_errors_cosine_and_relative_errors() -> None:
    rng = np.random.default_rng(0)
    ref = [rng.standard_normal((4, 10)), rng.standard_normal(3)]
    same = report.errors([r.astype(np.float32) for r in ref], ref)
    assert same["cosine"] == pytest.approx(1.0, abs=1e-7) and same["max_rel_err"] < 1e-6
    noisy = [r + 0.01 * rng.standard_normal(r.shape) for r in ref]
    err = report.errors(noisy, ref)
    assert 0.999 < err["cosine"] < 1.0
    largest = max(float(np.abs(r).max()) for r in ref)
    expected = max(float(np.abs(n - r).max()) for n, r in zip(noisy, ref, strict=True)) / largest
    assert err["max_rel_err"] == pytest.approx(expected)
    assert report.errors([-ref[0], -ref[1]], ref)["cosine"] == pytest.approx(-1.0)


def test_errors_nan_fails_and_sizes_must_agree() -> None:
    ref = [np.ones(4)]
    bad = report.errors([np.array([1.0, np.nan, 1.0, 1.0])], ref)
    assert bad["cosine"] == 0.0 and not report.passes("fp16", bad)
    with pytest.raises(ValueError, match="sizes differ"):
        report.errors([np.ones(3)], ref)


def test_passes_per_precision() -> None:
    close = {"cosine": 0.9995, "rel_l2": 2e-3, "max_rel_err": 3e-3, "max_abs_err": 1e-3}
    assert report.passes("fp16", close) and report.passes("bf16", close)
    assert not report.passes("fp32", close)  # fp32 must match far closer
    assert not report.passes("bf16", {**close, "cosine": 0.998})
    assert report.passes("fp32", {**close, "rel_l2": 5e-6})


def test_best_of_skips_configurations_that_failed() -> None:
    assert report.best_of({"eager": 1.2, "compile": None, "reduce_overhead": 0.4}) == ("reduce_overhead", 0.4)
    assert report.best_of({"eager": 0.3, "compile": 0.5}) == ("eager", 0.3)
    assert report.best_of({"eager": None}) is None


def test_kernel_shares_rank_and_sum() -> None:
    events = [("gemm", 30.0), ("softmax", 5.0), ("gemm", 30.0), ("copy", 1.0)] + [(f"k{i}", 0.5) for i in range(12)]
    shares = report.kernel_shares(events, top=3)
    assert [s["kernel"] for s in shares] == ["gemm", "softmax", "copy"]
    assert shares[0]["calls"] == 2 and shares[0]["mean_us"] == 30.0
    assert shares[0]["share"] == pytest.approx(60.0 / 72.0)
    assert report.kernel_shares([]) == []


def test_bf16_bits_round_to_nearest_even() -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(1)
    a = (rng.standard_normal(50_000) * 10.0 ** rng.integers(-30, 30, 50_000)).astype(np.float32)
    a[:3] = [np.nan, np.inf, -0.0]
    want = a.astype(ml_dtypes.bfloat16).view(np.uint16)
    got = report.bf16_bits(a)
    assert got.dtype == np.uint16
    assert np.array_equal(got[1:], want[1:]) and np.isnan(got[:1].view(ml_dtypes.bfloat16).astype(np.float32)[0])
    # a tie (exactly half way) goes to the even neighbour
    tie = np.array([0x3F808000], dtype=np.uint32).view(np.float32)
    assert report.bf16_bits(tie)[0] == 0x3F80


def _row(**kw: object) -> dict[str, object]:
    row = {"model": "resnet18", "batch": 32, "precision": "bf16", "effarch_ms": 1.0, "eager_ms": 2.0,
           "compile_ms": 0.8, "reduce_overhead_ms": None, "cosine": 0.99971, "max_rel_err": 4e-3,
           "torch_cosine": 0.9999, "ok": True, "sass": {"HMMA": 12, "HGMMA": 0, "IMMA": 0, "IGMMA": 0, "QGMMA": 0}}
    return {**row, **kw}


def test_table_names_best_peer_and_ratio() -> None:
    text = report.table([_row(), _row(model="gpt", ok=False, sass={}), {"model": "minilm", "batch": 1,
                                                                        "precision": "fp32", "skipped": "x"}])
    lines = text.splitlines()
    assert len(lines) == 5 and all(line.count("|") == 15 for line in lines)
    assert "| compile | 1.25x | 0.999710 |" in lines[2] and "HMMA 12" in lines[2] and lines[2].endswith("yes |")
    assert "| n/a |" in lines[3] and lines[3].endswith("NO |")  # no SASS counts: said, not zero
    assert "skipped: x" in lines[4]


def test_table_names_the_variant_of_builds_timed_side_by_side() -> None:
    lines = report.table([_row(bundle="resnet18.b32.bf16~guards"), _row(bundle="resnet18.b32.bf16")]).splitlines()
    assert lines[2].startswith("| resnet18 ~guards | 32 |") and lines[3].startswith("| resnet18 | 32 |")


def test_profile_table_shares_in_percent() -> None:
    shares = [{"kernel": "fused_conv2d_add_relu_kernel", "share": 0.456, "per_call_us": 314.0, "per_call_launches": 1}]
    text = report.profile_table("resnet18 b1 bf16", 0.688, shares)
    assert "45.6%" in text and "314.0" in text and "0.688 ms" in text


def test_batched_inputs_stack_distinct_samples() -> None:
    import gpu_models

    one = gpu_models.batched_inputs("digits_cnn", 1)
    many = gpu_models.batched_inputs("digits_cnn", 40)
    assert one["images"].shape == (1, 1, 8, 8) and many["images"].shape == (40, 1, 8, 8)
    assert np.array_equal(many["images"][:1], one["images"])
    assert not np.array_equal(many["images"][:16], many["images"][16:32])  # seed 1's draw, not a copy of seed 0's
    assert gpu_models.native_batch("mlp") == 8
    assert gpu_models.batched_source("mlp", 8) == "zoo:mlp"


def test_int8_table_against_fp32_of_the_same_run() -> None:
    rows = [_row(precision="fp32", effarch_ms=2.0), _row(precision="int8", effarch_ms=0.5, cosine_vs_ort=0.99999,
                                                         effarch_over_best=0.6, sass={"IDP.4A": 80, "IMMA": 0}),
            _row(model="gpt", precision="int8", effarch_ms=1.0)]  # no fp32 row of gpt: no ratio
    lines = report.int8_table(rows).splitlines()
    assert len(lines) == 4
    assert "| resnet18 | 32 | int8 | 0.500 | 0.25 | 0.60 | 0.999990 |" in lines[2] and "| 80 | 0 |" in lines[2]
    assert "| gpt | 32 | int8 | 1.000 | n/a |" in lines[3]
    assert report.int8_table([_row(precision="fp32")]) == ""


def test_passes_int8_prefers_the_quantized_graph_reference() -> None:
    far = {"cosine": 0.95, "rel_l2": 0.3, "max_rel_err": 0.2, "max_abs_err": 1.0}
    assert report.passes("int8", far, {**far, "cosine": 0.99995})  # int8 loses accuracy; kernels are exact
    assert not report.passes("int8", far, {**far, "cosine": 0.99})
    assert not report.passes("int8-dynamic", far) and report.passes("int8", {**far, "cosine": 0.995})


def test_bn_fold_recipe_computes_the_folded_convolution() -> None:
    import gpu_check
    import torch

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, bias=True), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                 torch.nn.Conv2d(8, 4, 1, bias=False), torch.nn.BatchNorm2d(4)).eval()
    for bn in (module[1], module[4]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
    folds = gpu_check.bn_folds(module)
    assert {(f["conv"], f["bn"]) for f in folds} == {("0", "1"), ("3", "4")}
    assert {f["eps"] for f in folds} == {1e-5, float(np.float32(1e-5))}  # as given and as ONNX carries it
    state = {k: v.numpy() for k, v in module.state_dict().items()}
    x = torch.randn(2, 3, 6, 6)
    weight, bias = gpu_check._folded(state, next(f for f in folds if f["conv"] == "0"))
    folded = torch.nn.functional.conv2d(x, torch.from_numpy(weight), torch.from_numpy(bias))
    with torch.no_grad():
        torch.testing.assert_close(folded, module[1](module[0](x)), rtol=1e-5, atol=1e-5)
    assert gpu_check._param({"fold": folds[-1], "part": 1, "state_dict": None}, state, {}).shape == (4,)


def test_travelling_wheel_is_importable_where_its_package_is_missing(tmp_path: Path) -> None:
    import importlib
    import zipfile

    import gpu_check

    (tmp_path / "whl").mkdir()
    with zipfile.ZipFile(tmp_path / "whl" / "gpu_check_fake_pkg-1.0-py3-none-any.whl", "w") as z:
        z.writestr("gpu_check_fake_pkg/__init__.py", "VALUE = 3\n")
    gpu_check.use_travelling_wheels(tmp_path)
    assert importlib.import_module("gpu_check_fake_pkg").VALUE == 3
