"""The numeric reference: seeded random inputs and onnxruntime runs of a graph or ONNX model.

onnxruntime runs on CPU with every graph optimisation disabled, so the reference is the model as
written, not onnxruntime's own rewrite of it.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from compiler.errors import EffarchError
from compiler.ir import DType, Graph, TensorType, Value

logger = logging.getLogger(__name__)

# Integer inputs are often indices or sizes; 0..2 stays in range for the small models we test.
INT_LOW, INT_HIGH = 0, 3
PROVIDERS = ["CPUExecutionProvider"]
PROTOBUF_LIMIT = 2**31 - 1


def random_inputs(g: Graph, seed: int = 0,
                  shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
    """One seeded random array per graph input; ``shapes`` fixes inputs with symbolic dims."""
    rng = np.random.default_rng(seed)
    shapes = shapes or {}
    return {v.name: _random_array(rng, v.type, _shape_of(v, shapes)) for v in g.inputs}


def _shape_of(v: Value, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    if v.name in shapes:
        return tuple(int(d) for d in shapes[v.name])
    assert v.type is not None, "graph inputs always have a type (the importer guarantees it)"
    if not v.type.is_static:
        example = "x".join(str(d) if isinstance(d, int) else "1" for d in v.type.shape or (1,))
        raise EffarchError(f"input '{v.name}' has shape {v.type} with symbolic or unknown dims; pass its "
                           f"shape, e.g. --shape {v.name}={example}")
    return v.type.static_shape()


def _random_array(rng: np.random.Generator, t: TensorType | None, shape: tuple[int, ...]) -> np.ndarray:
    assert t is not None
    if t.dtype.is_float:
        return rng.standard_normal(shape).astype(t.dtype.numpy)
    if t.dtype is DType.BOOL:
        return rng.integers(0, 2, shape).astype(np.bool_)
    return rng.integers(INT_LOW, INT_HIGH, shape).astype(t.dtype.numpy)


def run_onnxruntime(model: Graph | onnx.ModelProto | str | Path,
                    inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``model`` under onnxruntime (CPU, no graph optimisations); outputs by name."""
    import onnxruntime as ort  # heavy; only the reference needs it

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3  # warnings about unused initializers are noise here
    session = _session(ort, model, options)
    names = [o.name for o in session.get_outputs()]
    expected = {i.name for i in session.get_inputs()}
    missing = sorted(expected - inputs.keys())
    if missing:
        raise EffarchError(f"reference run is missing inputs {missing}; give every model input")
    feeds = {k: np.asarray(v) for k, v in inputs.items() if k in expected}
    try:
        results = session.run(names, feeds)
    except Exception as e:  # onnxruntime's own exception types: bad feeds or a failing kernel
        raise EffarchError(f"onnxruntime failed running the reference model: {_first_line(e)}") from None
    return dict(zip(names, results, strict=True))


def _session(ort: Any, model: Graph | onnx.ModelProto | str | Path, options: Any) -> Any:
    if isinstance(model, Graph):
        from compiler.frontends.onnx_export import to_onnx

        model = to_onnx(model)
    try:
        if not isinstance(model, onnx.ModelProto):
            if not Path(model).is_file():
                raise EffarchError(f"reference model '{model}' not found; check the path")
            return ort.InferenceSession(str(model), options, providers=PROVIDERS)
        if model.ByteSize() <= PROTOBUF_LIMIT:
            return ort.InferenceSession(model.SerializeToString(), options, providers=PROVIDERS)
        with tempfile.TemporaryDirectory(prefix="effarch-ref-") as tmp:
            # Protobuf cannot serialise 2 GiB in memory; onnxruntime reads the weights from a file.
            path = Path(tmp) / "model.onnx"
            onnx.save_model(model, str(path), save_as_external_data=True, location="model.onnx.data")
            return ort.InferenceSession(str(path), options, providers=PROVIDERS)
    except EffarchError:
        raise
    except Exception as e:  # onnxruntime raises its own exception types for invalid models
        raise EffarchError(f"onnxruntime cannot load the reference model: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class ReferenceSession:
    """One onnxruntime session of a graph for many batches: calibration and accuracy runs.

    ``extra`` names intermediate values to return too (calibration reads activations); onnxruntime
    runs with its graph optimisations off, so every named value exists as written."""

    def __init__(self, g: Graph, extra: list[str] | None = None) -> None:
        import onnxruntime as ort

        from compiler.frontends.onnx_export import to_onnx

        model = to_onnx(g)
        known = {vi.name: vi for vi in model.graph.value_info}
        present = {o.name for o in model.graph.output}
        model.graph.output.extend(known[n] for n in (extra or []) if n in known and n not in present)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        self.session = _session(ort, model, options)
        self.outputs = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return dict(zip(self.outputs, self.session.run(self.outputs, feeds), strict=True))
        except Exception as e:  # onnxruntime's own exception types
            raise EffarchError(f"onnxruntime failed running the reference model: {_first_line(e)}") from None
