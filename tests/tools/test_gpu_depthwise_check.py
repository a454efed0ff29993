"""tools/gpu_depthwise_check.py's parts that run only on the GPU machine otherwise: the NHWC reference, the NCHW
operands of the same layer, and the table."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import gpu_depthwise_check as check  # noqa: E402  (tools/ is not a package)


@pytest.mark.parametrize("stride", [1, 2])
def test_nhwc_reference_is_the_nchw_one_transposed(stride: int) -> None:
    inputs, exact = check._nhwc_inputs(0, 2, 8, 6, "float16")
    assert [a.shape for a in inputs] == [(2, 6, 6, 8), (3, 3, 1, 8), (1, 1, 1, 8)]
    nhwc = check._nhwc_reference(*exact, stride)
    x, w, b = check._to_nchw(exact)
    per_image = [check._reference(x[i:i + 1], w, b, stride) for i in range(2)]
    np.testing.assert_allclose(nhwc, np.concatenate(per_image).transpose(0, 2, 3, 1), rtol=1e-12, atol=1e-12)
    assert nhwc.shape == (2, 6 // stride, 6 // stride, 8)


def test_bf16_inputs_travel_as_bits_of_the_rounded_values() -> None:
    inputs, exact = check._nhwc_inputs(1, 1, 4, 3, "bfloat16")
    assert inputs[0].dtype == np.uint16
    np.testing.assert_array_equal(check._from_bf16_bits(inputs[0]).astype(np.float64), exact[0])


def test_table_compares_with_dlight_and_the_nchw_rule_and_lists_failures() -> None:
    def cell(us: float, cosine: float = 1.0) -> dict[str, float]:
        return {"us": us, "cosine": cosine, "rel_max_err": 1e-3, "gb_s": 1000.0}

    rows = [{"precision": "fp16", "kernel": "dw_32_112_s1_b32", "effarch": cell(10.0), "dlight": cell(200.0),
             "nchw": cell(25.0, 0.5)}]
    table = check._nhwc_table(rows, 32)
    assert "| fp16 | dw_32_112_s1_b32 | 1.000000 | 1.00e-03 | 10.0 | 1000 | 200.0 | 25.0 | 20.00x | 2.50x |" in table
    assert "Below cosine 0.999:" in table and "nchw: cosine 0.500000" in table
