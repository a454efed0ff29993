"""``effarch new-pass``: the written pass and test pass at once, and the test catches wrong numbers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from compiler.cli.commands.new_pass import _places
from compiler.cli.main import main


def _pytest(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)],
                          cwd=folder, capture_output=True, text=True, timeout=300)


def test_the_scaffold_passes_and_then_catches_a_pass_that_changes_the_numbers(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["new-pass", "drop-times-one", "--dir", str(tmp_path)]) == 0
    assert "wrote" in capsys.readouterr().out
    module = tmp_path / "drop_times_one.py"
    assert "class DropTimesOne(RuleSet)" in module.read_text()
    first = _pytest(tmp_path)
    assert first.returncode == 0 and "3 passed" in first.stdout, first.stdout
    # An edit that makes the rule fire on Mul(x, 2) too: x * 2 -> x changes the numbers.
    module.write_text(module.read_text().replace("is_fill(c, 1)", "is_fill(c, 2)"))
    second = _pytest(tmp_path)
    assert second.returncode != 0 and "differs after the pass" in second.stdout, second.stdout


def test_without_dir_the_files_go_beside_effarchs_passes_and_tests() -> None:
    pass_path, test_path, module, harness = _places("fuse_gelu", None)
    root = Path(__file__).resolve().parents[2]
    assert (pass_path, test_path) == (root / "passes" / "fuse_gelu.py", root / "tests" / "passes" / "test_fuse_gelu.py")
    assert (module, harness) == ("passes.fuse_gelu", "tests.passes.harness")


@pytest.mark.parametrize(("name", "says"), [("simplify", "exists already"), ("Bad_Name", "kebab-case")])
def test_bad_names_are_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str,
                                      says: str) -> None:
    assert main(["new-pass", name, "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("effarch: error: ") and says in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_existing_files_are_kept_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "my_pass.py").write_text("# mine\n")
    assert main(["new-pass", "my-pass", "--dir", str(tmp_path)]) == 1
    assert (tmp_path / "my_pass.py").read_text() == "# mine\n"
    assert main(["new-pass", "my-pass", "--dir", str(tmp_path), "--force"]) == 0
    assert "RuleSet" in (tmp_path / "my_pass.py").read_text()
