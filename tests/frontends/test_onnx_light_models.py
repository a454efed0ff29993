"""The ONNX package's nine model-zoo architectures compile from their opset-9 files and match onnxruntime.

They are converted to opset 21 on import (compiler.frontends.onnx_opsets); their ConstantOfShape
weights are replaced by seeded random ones first (compiler.benchmark.onnx_light), so the outputs
are not uniform and a wrong kernel shows.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from compiler.benchmark.onnx_light import NAMES, light_model
from compiler.cli.report import verify_artifact
from compiler.driver import compile_model, load_model


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_light_model_from_opset_9_matches_onnxruntime(name: str, tmp_path: Path) -> None:
    path = light_model(name, tmp_path / f"{name}.onnx")
    assert next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx")) == 9
    source = load_model(str(path))
    assert source.graph.metadata["source_opset"] == "9"
    artifact = tmp_path / f"{name}.effarch"
    compile_model(source, artifact, target="x86")
    checks = verify_artifact(source, artifact, seed=0)
    assert checks and all(c.ok for c in checks), [str(c) for c in checks]
