"""Reproducers: one .zip that replays the pass that broke the numbers, without the original model.

Members:
- ``input.onnx``     the graph just before the guilty pass
- ``pipeline.txt``   the guilty pass as pipeline text (one spec, options included)
- ``inputs.npz``     the inputs the check ran on
- ``expected.npz``   the original model's outputs on those inputs (onnxruntime)
- ``reproducer.json`` what was found: pass, step index, opt level, target, tolerances broken

``replay(path)`` imports ``input.onnx``, reruns the pass, and compares its output both with the
original's outputs and with the output of ``input.onnx`` itself, so the report shows the error the
pass alone introduced. A pass that raises is reported as such (the reproducer then replays a crash).
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compiler.debugging.numeric_check import Arrays, check_against, run_graph
from compiler.errors import EffarchError
from compiler.numerics.compare import OutputCheck

log = logging.getLogger(__name__)

FORMAT = "effarch-reproducer/1"
MEMBERS = ("input.onnx", "pipeline.txt", "inputs.npz", "expected.npz", "reproducer.json")


def write_reproducer(path: Path | str, before: Any, pipeline: str, inputs: Arrays, expected: Arrays,
                     info: dict[str, Any] | None = None) -> Path:
    """Write the reproducer zip; ``before`` is an IR graph or an ONNX ModelProto."""
    from compiler.frontends.onnx_export import to_onnx
    from compiler.pass_manager.pipeline import parse_pipeline

    parse_pipeline(pipeline, check=False)  # a reproducer that cannot be parsed back is useless
    model = before if not hasattr(before, "nodes") else to_onnx(before)
    meta = {"format": FORMAT, "pipeline": pipeline, **(info or {})}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("input.onnx", model.SerializeToString())
        z.writestr("pipeline.txt", pipeline + "\n")
        z.writestr("inputs.npz", _npz_bytes(inputs))
        z.writestr("expected.npz", _npz_bytes(expected))
        z.writestr("reproducer.json", json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    log.info("wrote reproducer %s for '%s'", path, pipeline)
    return path


def _npz_bytes(arrays: Arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]  # stubs read a key as the allow_pickle flag
    return buf.getvalue()


def _npz(data: bytes) -> Arrays:
    with np.load(io.BytesIO(data), allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


@dataclass
class ReplayResult:
    pipeline: str
    info: dict[str, Any]
    against_original: list[OutputCheck] = field(default_factory=list)
    against_input: list[OutputCheck] = field(default_factory=list)
    error: str = ""  # the pass (or running its output) failed with this

    @property
    def ok(self) -> bool:
        return not self.error and all(c.ok for c in self.against_original + self.against_input)

    def report(self) -> str:
        head = f"reproducer: pass '{self.pipeline}'"
        if self.info.get("step"):
            head += f" (step {self.info['step']} of {self.info.get('pipeline_text') or 'the pipeline'})"
        lines = [head]
        if self.error:
            lines.append(f"  the pass failed: {self.error}")
        for title, checks in (("vs the original model", self.against_original),
                              ("vs the pass's own input", self.against_input)):
            if checks:
                lines.append(f"  {title}:")
                lines += [f"    {c.line()}" for c in checks]
        verdict = "reproduced: the pass breaks tolerance" if not self.ok else "not reproduced: all within tolerance"
        lines.append(f"  {verdict}")
        return "\n".join(lines)


def read_reproducer(path: Path | str) -> tuple[bytes, str, Arrays, Arrays, dict[str, Any]]:
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            missing = [m for m in MEMBERS if m not in names]
            if missing:
                raise EffarchError(f"{path} is not an effarch reproducer (missing {', '.join(missing)}); "
                                   "write one with 'effarch verify --bisect'")
            info = json.loads(z.read("reproducer.json"))
            return (z.read("input.onnx"), z.read("pipeline.txt").decode().strip(), _npz(z.read("inputs.npz")),
                    _npz(z.read("expected.npz")), info)
    except FileNotFoundError:
        raise EffarchError(f"reproducer {path} not found; check the path") from None
    except zipfile.BadZipFile:
        raise EffarchError(f"{path} is not a zip file; give the reproducer that 'effarch verify' wrote") from None


def replay(path: Path | str) -> ReplayResult:
    """Rerun the reproducer's pass on its input graph and compare the numbers; see the module doc."""
    model_bytes, pipeline, inputs, expected, info = read_reproducer(path)
    result = ReplayResult(pipeline, info)
    graph = _import(model_bytes)
    own = run_graph(graph, inputs)
    try:
        after = _run_pipeline(graph, pipeline, info)
        got = run_graph(after, inputs)
    except EffarchError as exc:
        result.error = str(exc)
        return result
    result.against_original = check_against(got, expected)
    result.against_input = check_against(got, own)
    return result


def _import(model_bytes: bytes) -> Any:
    from compiler.frontends.onnx import import_onnx

    with tempfile.TemporaryDirectory(prefix="effarch-repro-") as tmp:
        path = Path(tmp) / "input.onnx"
        path.write_bytes(model_bytes)
        return import_onnx(path)


def _run_pipeline(graph: Any, pipeline: str, info: dict[str, Any]) -> Any:
    import passes  # noqa: F401  (registers every pass)
    from compiler.pass_manager.base import PassContext
    from compiler.pass_manager.manager import PassManager
    from compiler.pass_manager.pipeline import parse_pipeline

    ctx = PassContext(opt_level=int(info.get("opt_level", 2)), target=str(info.get("target", "x86")))
    return PassManager(parse_pipeline(pipeline), ctx).run(graph.clone()).graph


def replay_and_report(path: Path | str, write: Callable[[str], None]) -> int:
    """What ``effarch compile --reproduce FILE`` does: replay, write the report, 1 if reproduced."""
    result = replay(path)
    write(result.report())
    return 0 if result.ok else 1
