"""`effarch run --device` end to end: compile for arm with the CLI, run on the emulated device, compare."""

from __future__ import annotations

from pathlib import Path

import pytest

from compiler.cli.main import main
from tests.arm.conftest import free_port


def test_cli_runs_artifact_on_emulated_device_and_compares(tmp_path: Path, a72_device,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    art = tmp_path / "digits.effarch"
    assert main(["compile", "digits_cnn", "--target", "arm", "--cpu", "cortex-a72", "-o", str(art)]) == 0
    capsys.readouterr()
    code = main(["run", str(art), "--device", a72_device.url, "--reference", "digits_cnn"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Check against onnxruntime" in out and " ok" in out and "MISMATCH" not in out


def test_cli_reports_unreachable_device_with_its_address(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    art = tmp_path / "mlp.effarch"
    assert main(["compile", "mlp", "--target", "arm", "-o", str(art)]) == 0
    capsys.readouterr()
    url = f"rpc://127.0.0.1:{free_port()}"
    code = main(["run", str(art), "--device", url, "--device-timeout", "2"])
    err = capsys.readouterr().err
    assert code == 1 and f"effarch: error: RPC device at {url}" in err and "Traceback" not in err
