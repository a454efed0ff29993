"""Data a user hands to effarch: calibration sets (``--calibration``) and test sets (``--accuracy-data``).

Three forms, the same for both flags:

- ``FILE.npz``: one array per model input, keyed by the input's name, first axis = samples; a test
  set may add ``labels`` (an integer class per sample: accuracy is top-1), else the fp32 model's
  outputs are the reference (cosine similarity);
- a folder of such files, concatenated in name order;
- ``FILE.py:FUNCTION``: a function returning an iterable of such dicts (batches).

Arrays are checked against the model's inputs once, here, so every later step can feed them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compiler.errors import EffarchError
from compiler.fileio import import_python_file
from compiler.ir import Value

LABELS = "labels"


@dataclass(frozen=True)
class Dataset:
    """Samples keyed by input name (first axis), with optional integer ``labels``."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: str

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, n: int) -> Dataset:
        """The first ``n`` samples."""
        labels = None if self.labels is None else self.labels[:n]
        return Dataset({k: v[:n] for k, v in self.inputs.items()}, labels, self.source)

    def batches(self, batch: int) -> Iterator[tuple[dict[str, np.ndarray], int]]:
        """Batches of exactly ``batch`` samples (a compiled model has a static batch), with the
        number of real samples in each: the last one is padded by repeating its final sample."""
        for start in range(0, len(self), batch):
            chunk = {k: v[start:start + batch] for k, v in self.inputs.items()}
            real = len(next(iter(chunk.values())))
            pad = batch - real
            if pad:
                chunk = {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) for k, v in chunk.items()}
            yield chunk, real


def load_dataset(spec: str, inputs: list[Value], flag: str) -> Dataset:
    """Read ``spec`` and check it against the model's ``inputs``; ``flag`` names the option in errors."""
    arrays = _read(spec, flag)
    labels = arrays.pop(LABELS, None)
    data = {v.name: _checked(arrays, v, spec, flag) for v in inputs}
    n = {len(a) for a in data.values()}
    if len(n) != 1 or 0 in n:
        counts = ", ".join(f"{k}: {len(a)}" for k, a in data.items())
        raise EffarchError(f"{flag} {spec}: the inputs need the same, non-zero number of samples ({counts})")
    if labels is not None:
        labels = _checked_labels(labels, len(next(iter(data.values()))), spec, flag)
    return Dataset(data, labels, spec)


def _read(spec: str, flag: str) -> dict[str, np.ndarray]:
    if ".py:" in spec:
        return _from_function(spec, flag)
    path = Path(spec)
    if path.is_dir():
        files = sorted(path.glob("*.npz"))
        if not files:
            raise EffarchError(f"{flag} {spec}: the folder holds no .npz files; save arrays with numpy.savez")
        return _concatenate([_read_npz(f, flag) for f in files], spec, flag)
    if not path.is_file():
        raise EffarchError(f"{flag} {spec}: not found; give an .npz file, a folder of them, or FILE.py:FUNCTION")
    return _read_npz(path, flag)


def _read_npz(path: Path, flag: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise ValueError("not an .npz archive")
            return {k: data[k] for k in data.files}
    except (ValueError, OSError) as e:
        raise EffarchError(f"{flag} {path}: cannot read it as .npz ({e}); save arrays with numpy.savez") from None


def _concatenate(parts: list[dict[str, np.ndarray]], spec: str, flag: str) -> dict[str, np.ndarray]:
    keys = set(parts[0])
    if any(set(p) != keys for p in parts):
        raise EffarchError(f"{flag} {spec}: the batches hold different arrays ({sorted(keys)} and others); "
                           f"give every batch the same keys")
    try:
        return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in keys}
    except ValueError as e:
        raise EffarchError(f"{flag} {spec}: batches do not stack ({e}); give every sample the same shape") from None


def _from_function(spec: str, flag: str) -> dict[str, np.ndarray]:
    file_part, _, name = spec.rpartition(":")
    path = Path(file_part)
    if not path.is_file():
        raise EffarchError(f"{flag} {spec}: file '{path}' not found")
    module = import_python_file(path, "effarch_data")
    fn = getattr(module, name, None)
    if not callable(fn):
        raise EffarchError(f"{flag} {spec}: '{path}' has no function '{name}'")
    try:
        batches = [dict(b) for b in fn()]
    except Exception as e:  # the user's code may raise anything
        raise EffarchError(f"{flag} {spec}: the function failed: {type(e).__name__}: {e}") from None
    if not batches:
        raise EffarchError(f"{flag} {spec}: the function returned no batches")
    return _concatenate(batches, spec, flag)


def _checked(arrays: dict[str, np.ndarray], v: Value, spec: str, flag: str) -> np.ndarray:
    if v.name not in arrays:
        held = ", ".join(sorted(arrays)) or "nothing"
        raise EffarchError(f"{flag} {spec} has no array '{v.name}' (it holds: {held}); key the arrays by the "
                           f"model's input names")
    a = np.asarray(arrays[v.name])
    assert v.type is not None and v.type.shape is not None, "graph inputs are typed"
    sample = tuple(v.type.shape[1:])
    if a.ndim != len(v.type.shape) or any(isinstance(d, int) and d != s for d, s in zip(sample, a.shape[1:],
                                                                                      strict=True)):
        raise EffarchError(f"{flag} {spec}: array '{v.name}' has shape {list(a.shape)}, but the input takes "
                           f"samples of shape {list(sample)} (first axis = samples)")
    want = v.type.dtype.numpy
    if a.dtype != want and not np.can_cast(a.dtype, want, casting="same_kind"):
        raise EffarchError(f"{flag} {spec}: array '{v.name}' is {a.dtype}, the input is {want}")
    return a.astype(want, copy=False)


def _checked_labels(labels: np.ndarray, n: int, spec: str, flag: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n or not np.issubdtype(labels.dtype, np.integer):
        raise EffarchError(f"{flag} {spec}: 'labels' must be one integer class per sample ({n}), "
                           f"got {labels.dtype} of shape {list(labels.shape)}")
    return labels
