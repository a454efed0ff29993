"""Reading one side of a diff: a model file, IR text, or a stage saved by ``--save-stages``.

- ``*.ir`` (IR text, as ``effarch compile --save-stages`` and ``print_graph`` write it) is parsed;
- ``*.onnx``, ``*.pt2``, ``FILE.py:FUNCTION`` and ``zoo:NAME`` go through ``load_model``;
- ``STAGES_DIR/N`` or ``STAGES_DIR/PASS`` names a saved stage by number (``3``, ``03``) or pass
  name (the last stage of that pass): its ``.ir`` file, which keeps everything the ONNX one does.

A ``.effarch`` artifact holds the compiled library and weights but not the graph, so it cannot be
a side; the error names what to diff instead.
"""

from __future__ import annotations

import re
from pathlib import Path

from compiler.errors import EffarchError
from compiler.ir import Graph, ParseError, parse_graph

STAGE_FILE = re.compile(r"(\d\d)-(.+)\.ir")
ARTIFACT_SUFFIX = ".effarch"  # targets.artifact.SUFFIX; compiler/ does not import targets


def load_graph(spec: str) -> Graph:
    path = Path(spec)
    if path.suffix == ARTIFACT_SUFFIX:
        raise EffarchError(f"{path} is an artifact, which keeps no graph (only its hash); diff the ONNX that "
                           f"'effarch quantize' writes, or a stage that 'effarch compile --save-stages DIR' "
                           f"saved (DIR/integer-ops, DIR/prune-channels)")
    if path.suffix == ".ir" and path.is_file():
        return read_ir(path)
    stage = find_stage(path)
    if stage is not None:
        return read_ir(stage)
    from compiler.driver import load_model

    return load_model(spec).graph


def read_ir(path: Path) -> Graph:
    try:
        return parse_graph(path.read_text())
    except ParseError as e:
        raise EffarchError(f"cannot parse IR text {path}: {e}; is it a file written by effarch?") from None


def find_stage(path: Path) -> Path | None:
    """The ``.ir`` file of a saved stage named ``DIR/N`` or ``DIR/PASS``; None when ``path`` is not one."""
    if path.is_dir() and any(STAGE_FILE.fullmatch(p.name) for p in path.iterdir()):
        raise EffarchError(f"{path} holds saved stages; name one: {path}/N or {path}/PASS "
                           f"(the saved stages are {_stage_names(path)})")
    if path.exists() or not path.parent.is_dir():
        return None
    stages = sorted(p for p in path.parent.iterdir() if STAGE_FILE.fullmatch(p.name))
    if not stages:
        return None
    want = path.name
    found = [p for p in stages if _stage_matches(p.name, want)]
    if not found:
        raise EffarchError(f"no stage '{want}' in {path.parent}; the saved stages are {_stage_names(path.parent)}")
    return found[-1]


def _stage_names(directory: Path) -> str:
    return ", ".join(sorted(p.stem for p in directory.iterdir() if STAGE_FILE.fullmatch(p.name)))


def _stage_matches(filename: str, want: str) -> bool:
    m = STAGE_FILE.fullmatch(filename)
    assert m is not None  # filtered by the caller
    number, label = m.groups()
    return (want.isdigit() and int(want) == int(number)) or want == label or want == f"{number}-{label}"
