"""--calibration / --accuracy-data files: the three forms, checked against the model's inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compiler.errors import EffarchError
from compiler.ir import DType, Graph, TensorType
from compiler.numerics.datasets import load_dataset


def _graph() -> Graph:
    g = Graph()
    g.add_input("x", TensorType(DType.F32, (4, 3)))
    return g


def test_npz_folder_and_function_give_the_same_samples(tmp_path: Path) -> None:
    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    labels = np.arange(10)
    np.savez(tmp_path / "all.npz", x=x, labels=labels)
    (tmp_path / "parts").mkdir()
    np.savez(tmp_path / "parts" / "a.npz", x=x[:6], labels=labels[:6])
    np.savez(tmp_path / "parts" / "b.npz", x=x[6:], labels=labels[6:])
    (tmp_path / "data.py").write_text("import numpy as np\n"
                                      "def batches():\n"
                                      "    x = np.arange(30, dtype=np.float32).reshape(10, 3)\n"
                                      "    first = {'x': x[:4], 'labels': np.arange(4)}\n"
                                      "    return [first, {'x': x[4:], 'labels': np.arange(4, 10)}]\n")
    for spec in (tmp_path / "all.npz", tmp_path / "parts", f"{tmp_path / 'data.py'}:batches"):
        d = load_dataset(str(spec), _graph().inputs, "--accuracy-data")
        np.testing.assert_array_equal(d.inputs["x"], x)
        np.testing.assert_array_equal(d.labels, labels)
    batches = list(d.batches(4))
    assert [real for _, real in batches] == [4, 4, 2] and batches[-1][0]["x"].shape == (4, 3)  # padded


@pytest.mark.parametrize("arrays,message", [
    ({"y": np.zeros((2, 3), np.float32)}, "has no array 'x' (it holds: y)"),
    ({"x": np.zeros((2, 4), np.float32)}, "samples of shape [3]"),
    ({"x": np.zeros((2, 3), np.float32), "labels": np.zeros(3, np.int64)}, "one integer class per sample (2)"),
])
def test_data_that_does_not_fit_the_model_is_refused_in_one_line(tmp_path: Path, arrays: dict, message: str) -> None:
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(EffarchError) as info:
        load_dataset(str(tmp_path / "d.npz"), _graph().inputs, "--calibration")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_failing_data_function_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text("def batches():\n    raise ValueError('no data here')\n")
    with pytest.raises(EffarchError, match="the function failed: ValueError: no data here"):
        load_dataset(f"{tmp_path / 'bad.py'}:batches", _graph().inputs, "--calibration")
    with pytest.raises(EffarchError, match="has no function 'other'"):
        load_dataset(f"{tmp_path / 'bad.py'}:other", _graph().inputs, "--calibration")
