"""Winograd F(2x2, 3x3) (targets/lowering/winograd.py): the transforms' arithmetic, which convolutions
take it, and its error against direct convolution on real kernels (opt-in: build(..., winograd=True),
``effarch compile --winograd``)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper, numpy_helper

from compiler.driver import optimize, pipeline_for
from compiler.frontends.onnx import import_onnx
from targets.artifact import read_manifest
from targets.base import get_target
from targets.build import build
from targets.lowering import winograd
from targets.lowering.packed import panel_width
from targets.runtime import load_artifact


def _correlate(x: np.ndarray, w: np.ndarray, pads: list[int]) -> np.ndarray:
    """Direct NCHW 2-D convolution (ONNX's cross-correlation) in float64; pads [top, left, bottom, right]."""
    xp = np.pad(x.astype(np.float64), [(0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])])
    windows = sliding_window_view(xp, w.shape[2:], axis=(2, 3))  # [N, C, OH, OW, KH, KW]
    return np.einsum("nchwij,ocij->nohw", windows, w.astype(np.float64))


def test_weight_transform_and_tiles_reproduce_correlation() -> None:
    # Y = A^T [U * (B^T d B)] A on one 4x4 patch and channel, U from transform_weights (panel 8).
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 1, 3, 3))
    d = rng.standard_normal((4, 4))
    u = winograd.transform_weights(w, 8)  # [16, 1, 1, 8]
    v = winograd.BT @ d @ winograd.BT.T
    for o in range(8):
        y = winograd.AT @ (u[:, 0, 0, o].reshape(4, 4) * v) @ winograd.AT.T
        want = np.array([[np.sum(d[i:i + 3, j:j + 3] * w[o, 0]) for j in range(2)] for i in range(2)])
        np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("shape", "strides", "dilations", "groups", "nr", "ok"), [
    ((32, 16, 3, 3), [1, 1], [1, 1], 1, 16, True),
    ((32, 16, 3, 3), [2, 2], [1, 1], 1, 16, False),  # strided
    ((32, 16, 3, 3), [1, 1], [2, 2], 1, 16, False),  # dilated
    ((32, 8, 3, 3), [1, 1], [1, 1], 2, 16, False),  # grouped
    ((32, 16, 1, 1), [1, 1], [1, 1], 1, 16, False),  # 1x1
    ((24, 16, 3, 3), [1, 1], [1, 1], 1, 16, False),  # channels not whole panels
])
def test_only_dense_3x3_stride_1_convolutions_apply(shape: tuple[int, ...], strides: list[int],
                                                     dilations: list[int], groups: int, nr: int, ok: bool) -> None:
    assert winograd.applies(shape, strides, dilations, groups, nr) is ok


def _model(rng: np.random.Generator) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Two 3x3 convolutions: an odd, non-square map with symmetric pads and bias, then
    asymmetric pads (the last tile row and column cropped); a strided one stays direct."""
    ws = {"w1": rng.standard_normal((32, 16, 3, 3)) * 0.1, "b1": rng.standard_normal(32) * 0.1,
          "w2": rng.standard_normal((32, 32, 3, 3)) * 0.1, "w3": rng.standard_normal((16, 32, 3, 3)) * 0.1}
    ws = {k: v.astype(np.float32) for k, v in ws.items()}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["y"], pads=[0, 1, 1, 0]),
             helper.make_node("Conv", ["y", "w3"], ["z"], pads=[1, 1, 1, 1], strides=[2, 2])]
    graph = helper.make_graph(nodes, "w", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16, 9, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in ws.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), ws


def _reference(x: np.ndarray, ws: dict[str, np.ndarray]) -> np.ndarray:
    r1 = np.maximum(_correlate(x, ws["w1"], [1, 1, 1, 1]) + ws["b1"].reshape(1, -1, 1, 1), 0)
    return _correlate(r1, ws["w2"], [0, 1, 1, 0])


def _weight_names(path: Path) -> list[str]:
    """The weights an artifact carries (the safetensors header: 8-byte length, then JSON)."""
    member = read_manifest(path)["members"]["weights"]["name"]
    with zipfile.ZipFile(path) as z:
        data = z.read(member)
    n = int.from_bytes(data[:8], "little")
    return [k for k in json.loads(data[8:8 + n]) if k != "__metadata__"]


def _run(model: onnx.ModelProto, x: np.ndarray, tmp_path: Path, name: str,
         winograd: bool = False) -> tuple[dict[str, np.ndarray], list[str]]:
    graph, _ = optimize(import_onnx(model), pipeline_for(2, None))
    result = build(graph, tmp_path / f"{name}.effarch", winograd=winograd)
    assert result.manifest.get("winograd", False) == winograd
    assert "none" not in result.schedules.values()
    out = load_artifact(result.path, cache_dir=tmp_path / f"cache-{name}").run({"x": x})
    return out, _weight_names(result.path)


def test_winograd_convolution_error_against_direct(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    model, ws = _model(rng)
    x = rng.standard_normal((2, 16, 9, 7)).astype(np.float32)
    want = _reference(x, ws)  # float64
    direct, names_direct = _run(model, x, tmp_path, "direct")
    wino, names_wino = _run(model, x, tmp_path, "winograd", winograd=True)
    # The two stride-1 convolutions carry transformed weights, the strided one its packed panels.
    nr = panel_width(32, get_target("x86").pack_width(None))  # 16 on AVX2, 32 on AVX-512
    assert sorted(n for n in names_wino if "winograd" in n) == [f"w1_winograd{nr}", f"w2_winograd{nr}"], names_wino
    assert not any("winograd" in n for n in names_direct)
    scale = float(np.abs(want).max())
    err_direct = float(np.abs(direct["y"] - want).max()) / scale
    err_wino = float(np.abs(wino["y"] - want).max()) / scale
    print(f"max error / max |y|: direct {err_direct:.2e}, winograd {err_wino:.2e}")
    # fp32 rounding of K = 288 products: direct conv lands near 1e-7; F(2x2,3x3)'s transforms add
    # and subtract up to 4 terms of the patch, so its error is a few times larger, still far
    # within an fp32 model tolerance (1e-5 relative).
    assert err_direct < 2e-6 and err_wino < 1e-5
    np.testing.assert_allclose(wino["z"], direct["z"], rtol=1e-4, atol=1e-5)  # the strided conv, downstream


def test_winograd_is_refused_where_convolutions_are_not_channels_last() -> None:
    from compiler.errors import EffarchError
    from targets.base import get_target
    from targets.build import check_build_options

    with pytest.raises(EffarchError, match="--winograd applies to the CPU targets"):
        check_build_options(get_target("cuda"), None, "fp32", True, winograd=True)
    check_build_options(get_target("x86"), None, "fp32", True, winograd=True)  # accepted
