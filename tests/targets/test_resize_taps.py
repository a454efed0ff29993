"""Resize's compile-time taps (lowering.resize) against ONNX's reference Resize, on 1-D inputs over
every mode, coordinate transformation, nearest rounding, antialias and exclude_outside, scaling up
and down: the conformance cases cover only some of these combinations."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from targets.lowering.resize import AxisPlan, _cubic, _linear, _nearest, taps

COORDS = ["half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
          "tf_crop_and_resize"]
KERNELS = [("nearest", mode, False) for mode in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")] + [
    (mode, "", antialias) for mode in ("linear", "cubic") for antialias in (False, True)]
ROI = (0.2, 0.9)


def _reference(x: np.ndarray, scale: float, coord: str, kernel: tuple[str, str, bool], exclude: bool) -> np.ndarray:
    mode, nearest, antialias = kernel
    attrs: dict[str, Any] = {"mode": mode, "coordinate_transformation_mode": coord, "exclude_outside": int(exclude),
             "antialias": int(antialias), "extrapolation_value": -7.0}
    if nearest:
        attrs["nearest_mode"] = nearest
    inits = [numpy_helper.from_array(np.array(ROI, np.float32), "roi"),
             numpy_helper.from_array(np.array([scale], np.float32), "scales")]
    node = helper.make_node("Resize", ["x", "roi", "scales"], ["y"], **attrs)
    graph = helper.make_graph([node], "r", [helper.make_tensor_value_info("x", onnx.TensorProto.DOUBLE, [x.size])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.DOUBLE, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    outputs: Any = ReferenceEvaluator(model).run(None, {"x": x})
    return np.asarray(outputs[0])


def _ours(x: np.ndarray, scale: float, coord: str, kernel: tuple[str, str, bool], exclude: bool) -> np.ndarray:
    mode, nearest, antialias = kernel
    coeffs = _nearest(nearest) if mode == "nearest" else _linear(antialias) if mode == "linear" else \
        _cubic(-0.75, antialias)
    scale32 = float(np.float32(scale))  # the model carries scales as float32
    plan = AxisPlan(x.size, int(np.floor(scale32 * x.size)), scale32, ROI if coord == "tf_crop_and_resize" else (0, 1))
    t = taps(coord, coeffs, plan, exclude)
    y = (x[t.index] * t.coeff).sum(axis=1)
    return np.where(t.outside, -7.0, y) if t.outside is not None else y


@pytest.mark.parametrize("coord", COORDS)
def test_taps_match_onnx_reference(coord: str) -> None:
    x = np.random.default_rng(0).standard_normal(7)
    for kernel, scale, exclude in itertools.product(KERNELS, (0.6, 1.7), (False, True)):
        if kernel[0] == "nearest" and exclude:
            continue
        want = _reference(x, scale, coord, kernel, exclude)
        # The reference mixes float32 (scales, attributes) into its float64 arithmetic: ~1e-7 apart.
        np.testing.assert_allclose(_ours(x, scale, coord, kernel, exclude), want, rtol=1e-5, atol=1e-6,
                                   err_msg=f"{coord} {kernel} scale {scale} exclude_outside {exclude}")
