"""The house's one-way flow, checked on the source: frontend -> IR -> passes -> lowering -> target.

Every ``import`` and ``from ... import`` (at module level or inside a function) of every module is
read with ``ast``; a rule names the folder it holds for and the modules that folder must not import.
ruff's banned-api setting (pyproject.toml) backs the tvm rule while editing.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Rule:
    folder: str  # relative to the repository root
    banned: tuple[str, ...]  # top modules or dotted prefixes
    why: str


RULES = (
    Rule("compiler/ir", ("passes", "targets", "compiler.pass_manager", "tvm"),
         "the IR knows no pass and no target"),
    Rule("compiler/pass_manager", ("passes", "targets", "tvm"),
         "passes depend on the pass manager, never the other way round"),
    Rule("passes", ("targets", "tvm"), "passes know no target"),
    Rule("compiler", ("tvm", "tvm_ffi"), "only targets/ imports tvm"),
)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in the file."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.lineno, node.module)]
            out += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return out


def violations(rule: Rule, root: Path = ROOT) -> list[str]:
    found = []
    for path in sorted((root / rule.folder).rglob("*.py")):
        for line, module in imported_modules(path):
            if any(module == b or module.startswith(b + ".") for b in rule.banned):
                found.append(f"{path.relative_to(root)}:{line} imports {module} ({rule.why})")
    return sorted(set(found))


@pytest.mark.parametrize("rule", RULES, ids=[r.folder for r in RULES])
def test_no_import_crosses_the_house_the_wrong_way(rule: Rule) -> None:
    assert violations(rule) == []


def test_a_new_violation_is_found_even_inside_a_function(tmp_path: Path) -> None:
    (tmp_path / "compiler" / "ir").mkdir(parents=True)
    (tmp_path / "compiler" / "ir" / "bad.py").write_text(
        "def f():\n    from passes.fold_constants import FoldConstants\n    import tvm.relax\n")
    assert violations(RULES[0], tmp_path) == [
        "compiler/ir/bad.py:2 imports passes.fold_constants (the IR knows no pass and no target)",
        "compiler/ir/bad.py:2 imports passes.fold_constants.FoldConstants (the IR knows no pass and no target)",
        "compiler/ir/bad.py:3 imports tvm.relax (the IR knows no pass and no target)",
    ]
