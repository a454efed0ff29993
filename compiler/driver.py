"""The compile driver: load a model from any supported source, run the pass pipeline, lower it.

Data flows one way: source -> IR graph -> passes -> targets (lowering, build) -> artifact.
This module imports ``targets`` only inside functions, so the IR and passes stay usable without TVM.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compiler.errors import EffarchError
from compiler.ir import Graph

log = logging.getLogger(__name__)

ZOO_PREFIX = "zoo:"


@dataclass
class SourceModel:
    """A loaded model: its IR graph plus what the checks need to run the original."""

    graph: Graph
    kind: str  # "onnx", "torch", "pt2" or "zoo"
    spec: str
    reference_onnx: Any  # onnx.ModelProto or Path: what onnxruntime runs as the reference
    torch_spec: str | None = None  # how a worker process rebuilds the PyTorch module, if any
    sha256: str = ""


def _parse_shapes(shapes: dict[str, tuple[int, ...]] | None) -> dict[str, tuple[int, ...]]:
    return dict(shapes or {})


def parse_shape_args(args: list[str] | None) -> dict[str, tuple[int, ...]]:
    """``["x=1x3x224x224", "ids=1x128"]`` -> ``{"x": (1, 3, 224, 224), "ids": (1, 128)}``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for arg in args or []:
        name, sep, dims = arg.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            raise EffarchError(f"bad --shape '{arg}'; write it as NAME=1x3x224x224") from None
    return shapes


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fix_onnx_input_shapes(model: Any, shapes: dict[str, tuple[int, ...]]) -> Any:
    """Bind symbolic input dims before import, so shape inference makes the whole graph static."""
    names = {i.name for i in model.graph.input}
    unknown = sorted(set(shapes) - names)
    if unknown:
        raise EffarchError(f"--shape names unknown input(s) {unknown}; the model's inputs are {sorted(names)}")
    for inp in model.graph.input:
        if inp.name not in shapes:
            continue
        dims = inp.type.tensor_type.shape.dim
        if len(dims) != len(shapes[inp.name]):
            raise EffarchError(f"--shape {inp.name} has rank {len(shapes[inp.name])} but the input has rank "
                               f"{len(dims)}")
        for d, n in zip(dims, shapes[inp.name], strict=True):
            d.Clear()
            d.dim_value = n
    del model.graph.value_info[:]
    return model


def _load_onnx(path: Path, shapes: dict[str, tuple[int, ...]]) -> SourceModel:
    import onnx

    from compiler.frontends.onnx import import_onnx

    digest = _sha256_file(path)
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf raises several unrelated types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EffarchError(f"cannot read ONNX file {path}: {first}; is it a valid .onnx model?") from None
    if shapes:
        model = _fix_onnx_input_shapes(model, shapes)  # onnx.load already read any external data
    graph = import_onnx(model if shapes else path)
    graph.metadata["source_sha256"] = digest
    return SourceModel(graph, "onnx", str(path), model if shapes else path, None, digest)


def _load_torch_graph(kind: str, spec: str, build: Callable[[], Graph], torch_spec: str) -> SourceModel:
    from compiler.frontends.onnx_export import to_onnx

    graph = build()
    digest = graph.metadata.get("source_sha256") or hashlib.sha256(spec.encode()).hexdigest()
    graph.metadata["source_sha256"] = digest
    return SourceModel(graph, kind, spec, to_onnx(graph), torch_spec, digest)


def load_model(spec: str, shapes: dict[str, tuple[int, ...]] | None = None) -> SourceModel:
    """Load ``model.onnx``, ``program.pt2``, ``file.py:func`` or ``zoo:NAME`` into an IR graph."""
    shapes = _parse_shapes(shapes)
    if spec.startswith(ZOO_PREFIX):
        from compiler import zoo

        entry = zoo.get(spec[len(ZOO_PREFIX):])
        src = _load_onnx(entry.onnx_path(), shapes)
        return SourceModel(src.graph, "zoo", spec, src.reference_onnx, spec, src.sha256)
    if ".py:" in spec:
        from compiler.frontends.torch import import_torch, load_builder

        def build() -> Graph:
            module, example = load_builder(spec)
            return import_torch(module, example)

        return _load_torch_graph("torch", spec, build, spec)
    path = Path(spec)
    if not path.exists():
        raise EffarchError(f"model '{spec}' not found; give a .onnx or .pt2 file, FILE.py:FUNCTION, or zoo:NAME "
                           f"(see 'effarch zoo')")
    if path.suffix == ".onnx":
        return _load_onnx(path, shapes)
    if path.suffix == ".pt2":
        from compiler.frontends.torch import load_pt2

        return _load_torch_graph("pt2", spec, lambda: load_pt2(path), spec)
    raise EffarchError(f"don't know how to load '{spec}' (suffix '{path.suffix}'); expected .onnx, .pt2, "
                       f"FILE.py:FUNCTION or zoo:NAME")


@dataclass
class CompileResult:
    artifact: Path
    graph_before: Graph
    graph_after: Graph
    pipeline: str
    pass_records: list[Any] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def pipeline_for(opt_level: int, pipeline: str | None) -> str:
    from passes.pipelines import default_pipeline

    return pipeline if pipeline is not None else default_pipeline(opt_level)


def optimize(graph: Graph, pipeline_text: str, *, opt_level: int = 2, target: str = "x86",
             instruments: list[Any] | None = None, data: Any = None) -> tuple[Graph, list[Any]]:
    """Run the user's pipeline and then the passes lowering requires; returns (graph, pass records).

    ``data`` (a ``compiler.compression.CompressionData``) is what compression passes read."""
    import passes  # noqa: F401  (registers every pass)
    from compiler.pass_manager import PassContext, PassManager, parse_pipeline
    from passes.pipelines import REQUIRED_BEFORE_LOWERING

    text = ",".join(t for t in (pipeline_text, REQUIRED_BEFORE_LOWERING) if t)
    ctx = PassContext(opt_level=opt_level, target=target, data=data)
    result = PassManager(parse_pipeline(text), ctx, instruments=instruments or []).run(graph.clone())
    return result.graph, result.records


def compile_model(source: SourceModel, out: Path, *, target: str = "x86", cpu: str | None = None,
                  opt_level: int = 2, pipeline: str | None = None,
                  instruments: list[Any] | None = None, tuning_db: Path | None = None,
                  data: Any = None, precision: str = "fp32", cuda_graphs: bool = True,
                  winograd: bool = False, bundled_tuning: bool = True) -> CompileResult:
    from compiler.ir.consteval import check_sizes
    from targets.build import build_artifact

    text = pipeline_for(opt_level, pipeline)
    t0 = time.perf_counter()
    graph, records = optimize(source.graph, text, opt_level=opt_level, target=target, instruments=instruments,
                              data=data)
    check_sizes(graph)  # before TVM: it would fold a 64 GiB Tile or fill and run out of memory
    t1 = time.perf_counter()
    extra = {"pipeline": text, "opt_level": opt_level, "source": {"kind": source.kind, "spec": source.spec,
                                                                  "sha256": source.sha256}}
    build_artifact(graph, out, target=target, cpu=cpu, manifest_extra=extra, opt_level=opt_level,
                   tuning_db=tuning_db, precision=precision, cuda_graphs=cuda_graphs, winograd=winograd,
                   bundled_tuning=bundled_tuning)
    t2 = time.perf_counter()
    return CompileResult(out, source.graph, graph, text, records, {"passes": t1 - t0, "build": t2 - t1})
