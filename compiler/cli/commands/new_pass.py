"""``effarch new-pass NAME [--dir DIR]``: write a pass module and its test, ready to edit.

The pass is a rule set with one example rule (``Mul(x, 1) -> x``, with a near miss when the constant
is not all ones); its test goes through the shared pass harness: expected IR text, numbers against
onnxruntime, honest ``modified``, a second run that changes nothing, and the near miss's reason.
Both pass as written; the test fails as soon as an edit makes the pass change the numbers.

Without ``--dir`` the pass goes into effarch's ``passes/`` (and its test into ``tests/passes/``,
using ``tests.passes.harness``); with ``--dir`` both go into DIR, the test importing the harness from
``compiler.debugging.pass_checks`` so that it runs outside this repository too.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

PASS_TEMPLATE = '''"""{name}: TODO say in one line what this pass does.

Rules (one law each; see docs/writing_passes.md):
- ``times-one``: Mul(x, 1) -> x      the constant may be either operand
"""

from __future__ import annotations

from compiler.ir import Node
from compiler.pass_manager import register_pass
from compiler.pass_manager.rules import MatchResult, Rule, RuleSet, const, forward, is_fill


def _times_one(node: Node) -> MatchResult:
    # Mul(x, 1) -> x
    for x, c in (node.inputs, reversed(node.inputs)):
        if const(c) is not None and const(x) is None:
            # A reason string is a near miss: `effarch explain` lists it.
            return forward(node, x) if is_fill(c, 1) else "the constant operand is not all ones"
    return None  # no constant operand: not a candidate at all


@register_pass
class {cls}(RuleSet):
    name = "{name}"
    description = "TODO one line: what {name} rewrites"
    rules = (Rule("times-one", "Mul(x, 1) -> x", anchors=("Mul",), match=_times_one),)
'''

TEST_TEMPLATE = '''"""{name}: the shared harness checks structure, numbers, honesty and idempotence."""

from __future__ import annotations

from compiler.ir.parser import parse_graph
from {harness} import check_not_fired, check_pass
from {module} import {cls}

TIMES_ONE = """
graph main(%x: f32[2,3]) -> (%y) {{
  %one = const f32[3] [1.0, 1.0, 1.0]
  %m = Mul(%one, %x) : f32[2,3]
  %y = Relu(%m) : f32[2,3]
}}
"""

TIMES_TWO = """
graph main(%x: f32[2,3]) -> (%y) {{
  %two = const f32[] [2.0]
  %m = Mul(%x, %two) : f32[2,3]
  %y = Relu(%m) : f32[2,3]
}}
"""


def test_times_one_is_removed() -> None:
    check_pass({cls}(), parse_graph(TIMES_ONE), expect="""
        graph main(%x: f32[2,3]) -> (%y) {{
          %one = const f32[3] [1.0, 1.0, 1.0]
          %y = Relu(%x) : f32[2,3]
        }}
    """)


def test_numbers_are_kept_where_it_fires_and_where_it_does_not() -> None:
    for text in (TIMES_ONE, TIMES_TWO):
        check_pass({cls}(), parse_graph(text))


def test_times_two_is_a_near_miss_with_its_reason() -> None:
    check_not_fired({cls}(), parse_graph(TIMES_TWO), "not all ones")
'''


def register(sub: Any) -> None:
    p = sub.add_parser("new-pass", help="write a new pass module and its test (through the shared harness)")
    p.add_argument("name", metavar="NAME", help="the pass name, kebab-case, e.g. fuse-gelu")
    p.add_argument("--dir", metavar="DIR", help="folder for both files (default: effarch's passes/ and tests/passes/)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.set_defaults(func=cmd_new_pass)


def cmd_new_pass(args: argparse.Namespace) -> int:
    from compiler.errors import EffarchError
    from compiler.pass_manager.registry import PASS_NAME

    if not PASS_NAME.fullmatch(args.name):
        raise EffarchError(f"pass name '{args.name}' must be kebab-case like 'fuse-gelu'")
    if args.name in _registered():
        raise EffarchError(f"a pass named '{args.name}' exists already ('effarch passes' lists them)")
    module = args.name.replace("-", "_")
    pass_path, test_path, import_path, harness = _places(module, args.dir)
    for path in (pass_path, test_path):
        if path.exists() and not args.force:
            raise EffarchError(f"{path} exists; pick another name or pass --force")
    values = {"name": args.name, "cls": _class_name(args.name), "module": import_path, "harness": harness}
    for path, template in ((pass_path, PASS_TEMPLATE), (test_path, TEST_TEMPLATE)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**values))
        print(f"wrote {path}")
    check = (f"`effarch check-pass {args.name}`" if args.dir is None else
             "`effarch check-pass` once it is installed as a plugin (docs/writing_passes.md)")
    print(f"next: edit the rule, then run `pytest {test_path}` and {check}")
    return 0


def _places(module: str, folder: str | None) -> tuple[Path, Path, str, str]:
    """(pass file, test file, the pass's import path, the harness's import path)."""
    if folder is not None:
        d = Path(folder)
        return d / f"{module}.py", d / f"test_{module}.py", module, "compiler.debugging.pass_checks"
    import passes

    package = Path(passes.__file__).parent
    tests = package.parent / "tests" / "passes"
    if not tests.is_dir():
        from compiler.errors import EffarchError

        raise EffarchError(f"no tests/passes/ beside {package}; pass --dir DIR for a pass outside effarch's tree")
    return package / f"{module}.py", tests / f"test_{module}.py", f"passes.{module}", "tests.passes.harness"


def _registered() -> dict[str, Any]:
    import passes  # noqa: F401  (registers every pass, plugins' too)
    from compiler.pass_manager import registered_passes

    return registered_passes()


def _class_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("-"))
