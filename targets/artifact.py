"""The ``.effarch`` file: one zip per model holding a manifest, the shared library and the weights.

Members:
- ``manifest.json``: everything needed to check and run the model (see ``build.py`` for its keys);
  ``manifest["members"]`` names the other members and records their sha256.
- the shared library (name in ``manifest["members"]["library"]``), with no weights inside;
- ``weights.safetensors``: the parameters, in a format that cannot execute code when read (no pickle).

Writing is atomic: a temporary file next to the output is renamed into place at the end, so a
failed build never leaves a partial or stale-but-new-looking file. This module does not import TVM,
so ``effarch inspect`` works anywhere.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from compiler.errors import EffarchError
from compiler.fileio import atomic_write
from compiler.ir.types import Dim, DType, TensorType

FORMAT_VERSION = 1
SUFFIX = ".effarch"
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A named tensor's dtype (``DType.short``) and shape (int, str for symbolic, None unknown)."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    @property
    def numpy_dtype(self) -> np.dtype:
        return DType.from_short(self.dtype).numpy

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(d["name"], d["dtype"], tuple(d["shape"]))

    @classmethod
    def of(cls, name: str, t: TensorType) -> TensorSpec:
        if t.shape is None:
            raise EffarchError(f"tensor '{name}' has unknown rank; run shape inference before building")
        return cls(name, t.dtype.short, tuple(t.shape))

    def __str__(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- writing ----------------------------------------------------------------------------------
def _weights_bytes(params: dict[str, np.ndarray]) -> bytes:
    # safetensors' numpy API lacks bf16: store its bits as u16; the manifest keeps the real dtype.
    stored = {k: (v.view(np.uint16) if v.dtype.name == "bfloat16" else v) for k, v in params.items()}
    return st_save({k: np.ascontiguousarray(v) for k, v in stored.items()})


def write_artifact(out_path: Path, manifest: dict[str, Any], library: Path,
                   params: dict[str, np.ndarray]) -> Path:
    """Write ``out_path`` atomically; fills in ``manifest["members"]`` (names and hashes)."""
    lib_bytes = library.read_bytes()
    weights = _weights_bytes(params)
    lib_name = "model" + library.suffix
    manifest["members"] = {
        "library": {"name": lib_name, "sha256": sha256_bytes(lib_bytes)},
        "weights": {"name": WEIGHTS, "sha256": sha256_bytes(weights)},
    }
    out_path = Path(out_path)
    with atomic_write(out_path) as f, zipfile.ZipFile(f, "w") as z:
        z.writestr(_member(MANIFEST, zipfile.ZIP_DEFLATED), json.dumps(manifest, indent=2, sort_keys=True))
        z.writestr(_member(lib_name, zipfile.ZIP_DEFLATED), lib_bytes)
        # Stored, not deflated: weights barely compress and are read back whole.
        z.writestr(_member(WEIGHTS, zipfile.ZIP_STORED), weights)
    return out_path


def _member(name: str, compression: int) -> zipfile.ZipInfo:
    """A member with a fixed date and mode: the same build gives the same bytes (zipfile stamps the
    current time otherwise)."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = compression
    info.external_attr = 0o644 << 16
    return info


# ---- reading ----------------------------------------------------------------------------------
class Artifact:
    """An opened, validated ``.effarch`` file; members are read on demand and hash-checked."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._zip = _open_zip(self.path)
        self.manifest = _parse_manifest(self.path, self._zip)
        for member in self.manifest["members"].values():
            self._require(member["name"])

    def _require(self, name: str) -> None:
        if name not in self._zip.namelist():
            raise EffarchError(f"artifact '{self.path}' is missing member '{name}'; "
                               f"it is damaged, rebuild it")

    def _read(self, role: str) -> bytes:
        member = self.manifest["members"][role]
        data = self._zip.read(member["name"])
        if sha256_bytes(data) != member["sha256"]:
            raise EffarchError(f"artifact '{self.path}': member '{member['name']}' does not match its "
                               f"recorded sha256; the file is damaged, rebuild it")
        return data

    def library_bytes(self) -> bytes:
        return self._read("library")

    @property
    def library_sha256(self) -> str:
        return str(self.manifest["members"]["library"]["sha256"])

    @property
    def library_suffix(self) -> str:
        return Path(self.manifest["members"]["library"]["name"]).suffix

    def weights(self) -> list[np.ndarray]:
        """The parameters in manifest order, with their recorded dtypes and shapes."""
        stored = st_load(self._read("weights"))
        return [_restore(self.path, stored, spec) for spec in self.param_specs]

    @property
    def input_specs(self) -> list[TensorSpec]:
        return [TensorSpec.from_json(d) for d in self.manifest["inputs"]]

    @property
    def output_specs(self) -> list[TensorSpec]:
        return [TensorSpec.from_json(d) for d in self.manifest["outputs"]]

    @property
    def param_specs(self) -> list[TensorSpec]:
        return [TensorSpec.from_json(d) for d in self.manifest["params"]]

    def close(self) -> None:
        self._zip.close()


def _restore(path: Path, stored: dict[str, np.ndarray], spec: TensorSpec) -> np.ndarray:
    if spec.name not in stored:
        raise EffarchError(f"artifact '{path}' has no weight '{spec.name}'; it is damaged, rebuild it")
    arr = stored[spec.name]
    if arr.dtype != spec.numpy_dtype:
        arr = arr.view(spec.numpy_dtype)  # bf16 stored as u16 bits
    shape = tuple(d for d in spec.shape if isinstance(d, int))  # weights are static; else mismatch below
    if arr.shape != shape and arr.size == int(np.prod(shape)) and len(shape) == len(spec.shape):
        arr = arr.reshape(shape)  # safetensors stores 0-d tensors as shape (1,)
    if arr.shape != spec.shape:
        raise EffarchError(f"artifact '{path}': weight '{spec.name}' has shape {arr.shape}, manifest says "
                           f"{spec.shape}; the file is damaged, rebuild it")
    return arr


def _open_zip(path: Path) -> zipfile.ZipFile:
    if not path.is_file():
        raise EffarchError(f"artifact '{path}' does not exist; build it with `effarch compile`")
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise EffarchError(f"'{path}' is not an effarch artifact (not a zip archive); "
                           f"build one with `effarch compile`") from None


def _parse_manifest(path: Path, z: zipfile.ZipFile) -> dict[str, Any]:
    unsafe = [n for n in z.namelist() if n.startswith("/") or ".." in Path(n).parts]
    if unsafe:
        raise EffarchError(f"artifact '{path}' holds member '{unsafe[0]}', a path outside the archive; "
                           f"it was tampered with, rebuild it")
    if MANIFEST not in z.namelist():
        raise EffarchError(f"'{path}' is not an effarch artifact (no {MANIFEST}); "
                           f"build one with `effarch compile`")
    try:
        manifest = json.loads(z.read(MANIFEST))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EffarchError(f"artifact '{path}' has an unreadable {MANIFEST} ({exc}); rebuild it") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise EffarchError(f"artifact '{path}' has format version {version!r}, this effarch reads version "
                           f"{FORMAT_VERSION}; rebuild it with this effarch")
    missing = [k for k in ("inputs", "outputs", "params", "target", "members") if k not in manifest]
    if missing:
        raise EffarchError(f"artifact '{path}' manifest lacks {', '.join(missing)}; "
                           f"it is damaged, rebuild it")
    problem = _manifest_problem(manifest)
    if problem:
        raise EffarchError(f"artifact '{path}' has a damaged manifest: {problem}; rebuild it")
    return manifest


def _manifest_problem(manifest: dict[str, Any]) -> str | None:
    """What is malformed in the parts of a manifest that loading reads, or None."""
    for key in ("inputs", "outputs", "params"):
        specs = manifest[key]
        if not isinstance(specs, list):
            return f"'{key}' is a {type(specs).__name__}, not a list"
        for spec in specs:
            problem = _spec_problem(spec)
            if problem:
                return f"{key}: {problem}"
    target, members = manifest["target"], manifest["members"]
    if not isinstance(target, dict) or not isinstance(target.get("name", ""), str):
        return "'target' is not a mapping with a name"
    for role in ("library", "weights"):
        member = members.get(role) if isinstance(members, dict) else None
        if not isinstance(member, dict) or not all(isinstance(member.get(k), str) for k in ("name", "sha256")):
            return f"member '{role}' has no name and sha256"
        if not _plain_member_name(member["name"]):
            return f"member name '{member['name']}' is not a plain file name"
    return None


def _spec_problem(spec: Any) -> str | None:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(spec.get("shape"), list):
        return f"{str(spec)[:40]!r} is not a tensor with a name, dtype and shape"
    if not all(d is None or isinstance(d, (int, str)) and not isinstance(d, bool) for d in spec["shape"]):
        return f"tensor '{spec['name']}' has shape {spec['shape']}"
    try:
        DType.from_short(spec.get("dtype"))  # type: ignore[arg-type]  # a wrong type is reported here
    except ValueError as e:
        return f"tensor '{spec['name']}': {e}"
    return None


def _plain_member_name(name: str) -> bool:
    """A zip member effarch reads: no folder, no '..', not absolute (nothing can escape a folder)."""
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


def open_artifact(path: str | Path) -> Artifact:
    return Artifact(Path(path))


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The validated manifest of an artifact (for ``effarch inspect``)."""
    art = open_artifact(path)
    art.close()
    return art.manifest
