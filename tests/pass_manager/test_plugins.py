"""Passes from other installed packages: a throwaway plugin package is pip-installed into a folder,
found through the ``effarch.passes`` entry points, listed, used in pipeline text and in -O2; a
broken plugin beside it costs one warning line naming it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.debugging.models import small_onnx

ROOT = Path(__file__).resolve().parents[2]

PLUGIN = '''
from compiler.ir import Node
from compiler.pass_manager import Placement, register_pass
from compiler.pass_manager.rules import MatchResult, Rule, RuleSet, forward, producer


def _neg_neg(node: Node) -> MatchResult:
    # Neg(Neg(x)) -> x
    inner = producer(node.inputs[0], "Neg")
    return None if inner is None else forward(node, inner.inputs[0], absorbed=(inner,))


@register_pass
class CancelNegations(RuleSet):
    name = "cancel-negations"
    description = "Neg(Neg(x)) -> x"
    placement = Placement("folding", min_level=2)  # before fusion swallows the Negs into a group
    rules = (Rule("neg-neg", "Neg(Neg(x)) -> x", anchors=("Neg",), match=_neg_neg),)
'''

PYPROJECT = '''
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"

[project.entry-points."effarch.passes"]
{entry} = "{module}"
'''


def _package(root: Path, dist: str, module: str, entry: str, source: str) -> Path:
    (root / module).mkdir(parents=True)
    (root / module / "__init__.py").write_text(source)
    (root / "pyproject.toml").write_text(PYPROJECT.format(dist=dist, module=module, entry=entry))
    return root


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with two plugins pip-installed into it: a working one and one whose import fails."""
    tmp = tmp_path_factory.mktemp("plugins")
    good = _package(tmp / "good", "effarch-negations", "effarch_negations", "negations", PLUGIN)
    bad = _package(tmp / "bad", "effarch-broken", "effarch_broken", "broken",
                   "raise ImportError('needs libfoo, which is not installed')\n")
    target = tmp / "site"
    for pkg in (good, bad):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                        "--no-build-isolation", "--target", str(target), str(pkg)], check=True, timeout=300)
    return target


def _model(folder: Path) -> Path:
    """small_onnx's model with Neg(Neg(h)) between MatMul+Add and Relu."""
    import onnx
    from onnx import helper

    m = onnx.load(str(small_onnx(folder / "small.onnx")))
    act = next(n for n in m.graph.node if n.op_type == "Relu")
    act.input[0] = "neg2"
    at = list(m.graph.node).index(act)
    m.graph.node.insert(at, helper.make_node("Neg", ["neg1"], ["neg2"], name="neg_b"))
    m.graph.node.insert(at, helper.make_node("Neg", ["hb"], ["neg1"], name="neg_a"))
    path = folder / "negs.onnx"
    onnx.save(m, str(path))
    return path


def _effarch(site: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    return subprocess.run([sys.executable, "-c", "import sys; from compiler.cli.main import main; sys.exit(main())",
                           *argv], env=env, capture_output=True, text=True, timeout=600, cwd=site)


def _warned_once(err: str) -> None:
    lines = [line for line in err.splitlines() if "broken" in line]
    assert len(lines) == 1 and "effarch-broken" in lines[0] and "needs libfoo" in lines[0], err
    assert "Traceback" not in err


def test_plugin_passes_are_listed_with_their_package_and_join_o2(site: Path) -> None:
    run = _effarch(site, "passes")
    assert run.returncode == 0, run.stderr
    row = next(line for line in run.stdout.splitlines() if line.startswith("cancel-negations"))
    assert "effarch-negations" in row and "Neg(Neg(x)) -> x" in row
    levels = {line.split(":")[0]: line for line in run.stdout.splitlines() if line.startswith("-O")}
    assert "cancel-negations" not in levels["-O1"]
    assert levels["-O2"].endswith("fold-batchnorm,fold-constants,cancel-negations,fuse-operators,"
                                  "merge-sibling-matmuls,eliminate-dead-code")
    _warned_once(run.stderr)


def test_a_plugin_pass_runs_from_pipeline_text_and_from_o2(site: Path, tmp_path: Path) -> None:
    model = _model(tmp_path)
    run = _effarch(site, "explain", str(model), "--pass", "cancel-negations{max_sweeps=2}")
    assert run.returncode == 0, run.stderr
    assert "1 rewrites" in run.stdout and "neg_b" in run.stdout
    _warned_once(run.stderr)
    out = tmp_path / "m.effarch"
    run = _effarch(site, "compile", str(model), "-O2", "-o", str(out), "--verify")
    assert run.returncode == 0, run.stderr
    impact = run.stdout.split("Per-pass impact", 1)[1]
    row = next(line for line in impact.splitlines() if "cancel-negations" in line)
    assert "Neg -2" in row, impact  # the impact table counts the two Negs it removed
    assert out.exists()


def test_a_plugin_name_that_is_unknown_in_pipeline_text_suggests_the_close_one(site: Path, tmp_path: Path) -> None:
    run = _effarch(site, "explain", str(_model(tmp_path)), "--pass", "cancel-negation")
    assert run.returncode == 1 and "did you mean 'cancel-negations'" in run.stderr


# ---- in-process: the loader itself, on a .dist-info written into a folder on sys.path ----------------
CLASS_PLUGIN = '''
from compiler.pass_manager import Pass, PassResult


class Mine(Pass):
    name = "mine-pass"
    description = "a plugin pass named by its class"

    def run(self, graph, ctx):
        return PassResult(graph, False)


class Squatter(Mine):
    name = "simplify"  # taken by effarch's own pass
'''


@pytest.fixture
def dist_info(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A distribution 'effarch-class-plugin' with three entry points: good, missing, colliding."""
    import passes  # noqa: F401  (effarch's passes first, as always: the squatter collides with one)
    from compiler.pass_manager import registry

    (tmp_path / "effarch_class_plugin.py").write_text(CLASS_PLUGIN)
    meta = tmp_path / "effarch_class_plugin-0.1.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: effarch-class-plugin\nVersion: 0.1\n")
    (meta / "entry_points.txt").write_text("[effarch.passes]\nmine = effarch_class_plugin:Mine\n"
                                           "gone = effarch_class_plugin:Gone\n"
                                           "squat = effarch_class_plugin:Squatter\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_PACKAGE", dict(registry._PACKAGE))
    return tmp_path


def test_an_entry_point_naming_a_class_registers_it_and_bad_ones_only_warn(
        dist_info: Path, caplog: pytest.LogCaptureFixture) -> None:
    from compiler.pass_manager import get_pass, pass_package
    from compiler.pass_manager.plugins import load_plugins

    assert load_plugins() == ["mine-pass"]
    assert pass_package("mine-pass") == "effarch-class-plugin" and pass_package("simplify") == "effarch"
    assert get_pass("mine-pass").description == "a plugin pass named by its class"
    warnings = sorted(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert len(warnings) == 2 and all("(effarch-class-plugin) not loaded" in w for w in warnings)
    assert "plugin 'gone'" in warnings[0] and "AttributeError" in warnings[0]
    assert "plugin 'squat'" in warnings[1] and "pass name 'simplify' is taken" in warnings[1]
    assert all("\n" not in w for w in warnings)
