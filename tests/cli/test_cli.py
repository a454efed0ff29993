"""The effarch command line end to end: real subprocess-free calls of ``main`` on real models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from compiler.cli.main import main


def _small_onnx(path: Path) -> Path:
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], np.arange(12, dtype=np.float32).tolist())
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"), helper.make_node("Relu", ["h"], ["y"], name="act")],
        "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_ops_and_passes_list(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "ops")
    assert code == 0 and "Conv" in out and "LayerNormalization" in out
    code, out, _ = _run(capsys, "passes")
    assert code == 0 and "fold-constants" in out and "eliminate-dead-code" in out and "-O2:" in out


def test_inspect_reports_ops_params_flops(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "inspect", str(_small_onnx(tmp_path / "m.onnx")))
    assert code == 0
    assert "MatMul" in out and "Relu" in out and "12 parameters" in out
    assert "x: f32[2,4]" in out and "y: f32[2,3]" in out
    assert "MFLOP" in out  # 2*2*4*3 = 48 FLOPs for the MatMul plus the Relu


def test_compile_verify_run_roundtrip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _small_onnx(tmp_path / "m.onnx")
    art = tmp_path / "m.effarch"
    code, out, err = _run(capsys, "compile", str(model), "--target", "x86", "-o", str(art), "--verify")
    assert code == 0, err
    assert art.exists() and "Check against onnxruntime" in out and "MISMATCH" not in out
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    np.savez(tmp_path / "x.npz", x=x)
    code, _, err = _run(capsys, "run", str(art), "--inputs", str(tmp_path / "x.npz"),
                        "--outputs", str(tmp_path / "y.npz"))
    assert code == 0, err
    with np.load(tmp_path / "y.npz") as y:
        np.testing.assert_allclose(y["y"], np.maximum(x @ np.arange(12, dtype=np.float32).reshape(4, 3), 0),
                                   rtol=1e-6)


@pytest.mark.parametrize(("argv", "message"), [
    (["compile", "missing.onnx", "-o", "{tmp}/o.effarch"], "not found"),
    (["compile", "{model}", "--target", "vax", "-o", "{tmp}/o.effarch"], "vax"),
    (["compile", "{model}", "--cpu", "pentium-9000", "-o", "{tmp}/o.effarch"], "pentium-9000"),
    (["compile", "{model}", "--pipeline", "fold-constans", "-o", "{tmp}/o.effarch"], "fold-constants"),
    (["compile", "{model}", "--shape", "x=2xfour", "-o", "{tmp}/o.effarch"], "--shape"),
    (["inspect", "{tmp}/garbage.onnx"], "ONNX"),
    (["run", "{tmp}/garbage.effarch"], "garbage.effarch"),
])
def test_bad_input_is_one_line_error_and_no_output(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   argv: list[str], message: str) -> None:
    model = _small_onnx(tmp_path / "m.onnx")
    (tmp_path / "garbage.onnx").write_bytes(b"not a model")
    (tmp_path / "garbage.effarch").write_bytes(b"not an artifact")
    args = [a.format(tmp=tmp_path, model=model) for a in argv]
    code, _, err = _run(capsys, *args)
    assert code == 1
    lines = err.strip().splitlines()
    assert lines[-1].startswith("effarch: error: ") and message in lines[-1], err
    assert "Traceback" not in err
    assert not (tmp_path / "o.effarch").exists()


def test_run_rejects_wrong_input_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    art = tmp_path / "m.effarch"
    assert _run(capsys, "compile", str(_small_onnx(tmp_path / "m.onnx")), "-o", str(art))[0] == 0
    np.savez(tmp_path / "x.npz", x=np.zeros((3, 4), np.float32))
    code, _, err = _run(capsys, "run", str(art), "--inputs", str(tmp_path / "x.npz"), "--outputs",
                        str(tmp_path / "y.npz"))
    assert code == 1 and "'x'" in err and "(2, 4)" in err.replace("[2, 4]", "(2, 4)")
    assert not (tmp_path / "y.npz").exists()


def _foldable_onnx(path: Path) -> Path:
    """x @ Transpose(w): the transpose of a constant is folded at compile time."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 4], np.arange(12, dtype=np.float32).tolist())
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["w"], ["wt"], name="wt", perm=[1, 0]),
         helper.make_node("MatMul", ["x", "wt"], ["y"], name="mm")],
        "foldable", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_compile_prints_impact_and_changed_diffs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _foldable_onnx(tmp_path / "f.onnx")
    code, out, err = _run(capsys, "compile", str(model), "-O1", "-o", str(tmp_path / "f.effarch"),
                          "--print-changed", "--save-stages", str(tmp_path / "stages"))
    assert code == 0, err
    assert "Per-pass impact" in out and "fold-constants" in out
    assert "*** IR diff after fold-constants" in out
    assert "-  %wt = Transpose(%w)" in out.replace("  # wt", "")
    stages = sorted(p.name for p in (tmp_path / "stages").iterdir())
    assert stages[:2] == ["00-input.ir", "00-input.onnx"] and any("fold-constants" in s for s in stages)


def test_zero_size_model_compiles_and_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "empty",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [0, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [0, 3])])
    model = tmp_path / "zero.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(model))
    art = tmp_path / "zero.effarch"
    code, _, err = _run(capsys, "compile", str(model), "-o", str(art))
    assert code == 0, err
    code, out, err = _run(capsys, "run", str(art))
    assert code == 0, err
    assert "y: float32[0, 3]  (empty)" in out
