"""The zoo registry and the cached ONNX export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from compiler import zoo
from compiler.errors import EffarchError

EXPECTED = ["mlp", "digits_cnn", "resnet18", "mobilenetv2", "minilm", "gpt"]


def test_names_and_descriptions() -> None:
    assert zoo.names() == EXPECTED
    for name in EXPECTED:
        model = zoo.get(name)
        assert model.name == name
        assert model.description and "\n" not in model.description


def test_unknown_name_lists_the_zoo() -> None:
    with pytest.raises(EffarchError) as info:
        zoo.get("resnet50")
    message = str(info.value)
    assert "resnet50" in message and all(n in message for n in EXPECTED) and "\n" not in message


def test_build_is_deterministic() -> None:
    model = zoo.get("mlp")
    (m1, ex1), (m2, ex2) = model.build(), model.build()
    assert not m1.training
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        assert np.array_equal(a.numpy(), b.numpy()), k
    assert np.array_equal(ex1[0].numpy(), ex2[0].numpy())


def test_sample_inputs_depend_on_seed_only() -> None:
    model = zoo.get("mlp")
    a, b, c = model.sample_inputs(1), model.sample_inputs(1), model.sample_inputs(2)
    assert list(a) == ["x"] and a["x"].shape == (8, 784) and a["x"].dtype == np.float32
    assert np.array_equal(a["x"], b["x"]) and not np.array_equal(a["x"], c["x"])


def test_export_is_cached_in_effarch_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EFFARCH_CACHE", str(tmp_path))
    model = zoo.get("mlp")
    path = model.onnx_path()
    assert path == tmp_path / "zoo" / f"mlp-{model.version}.onnx"
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["x"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert {o.domain: o.version for o in proto.opset_import}[""] == 21
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left behind
    mtime = path.stat().st_mtime_ns
    assert model.onnx_path() == path and path.stat().st_mtime_ns == mtime  # second call reuses the file


def test_export_is_quiet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                         capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EFFARCH_CACHE", str(tmp_path))
    zoo.get("gpt").onnx_path()
    out, err = capfd.readouterr()
    assert out == "" and err == ""
