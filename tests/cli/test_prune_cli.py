"""``effarch compile --prune/--prune-flops`` and ``effarch explain --pass prune-channels`` on digits_cnn,
run as real processes, with its held-out split as the test set and training images as calibration."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

FOLDING = "canonicalize-patterns,fold-constants,fold-batchnorm,fold-constants"


def _effarch(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "compiler.cli", *argv], capture_output=True, text=True,
                          timeout=300)


def _data(tmp_path: Path) -> tuple[str, str]:
    from compiler.zoo.digits_cnn import _split

    train, _, test, labels = _split()
    np.savez(tmp_path / "calib.npz", images=train[:128])
    np.savez(tmp_path / "test.npz", images=test, labels=labels)
    return str(tmp_path / "calib.npz"), str(tmp_path / "test.npz")


def test_compile_prune_flops_within_a_budget_reports_each_layer(tmp_path: Path) -> None:
    calib, test = _data(tmp_path)
    out = tmp_path / "p.effarch"
    done = _effarch("compile", "zoo:digits_cnn", "--prune-flops", "0.25", "--accuracy-data", test,
                    "--max-accuracy-drop", "1.0", "--calibration", calib, "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "prune-channels{flops=0.25,importance=l1}" in done.stdout
    assert "Compression" in done.stdout and "sensitivity alone" in done.stdout
    assert "not pruned: its channels reach graph output %logits" in done.stdout
    assert out.exists()


def test_budget_flags_without_a_technique_are_one_line_errors(tmp_path: Path) -> None:
    done = _effarch("compile", "zoo:digits_cnn", "--max-accuracy-drop", "1", "-o", str(tmp_path / "x.effarch"))
    assert done.returncode != 0 and "need a compression flag" in done.stderr
    done = _effarch("compile", "zoo:digits_cnn", "--prune", "0.25", "--max-accuracy-drop", "1",
                    "-o", str(tmp_path / "x.effarch"))
    assert done.returncode != 0 and "needs --accuracy-data" in done.stderr


def test_explain_lists_removed_channels_and_refusals() -> None:
    done = _effarch("explain", "zoo:digits_cnn", "--pass", "prune-channels{ratio=0.5}", "--before", FOLDING)
    assert done.returncode == 0, done.stderr
    assert "16 -> 8 channels" in done.stdout and "32 -> 16 channels" in done.stdout
    assert "graph output %logits" in done.stdout
