"""The .effarch file: manifest contents, no pickle, validation of damaged or foreign files."""

from __future__ import annotations

import hashlib
import json
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import compiler
from compiler.errors import EffarchError
from compiler.ir.printer import print_graph
from targets.artifact import FORMAT_VERSION, WEIGHTS, open_artifact, read_manifest, write_artifact
from targets.base import get_target
from targets.build import build_artifact, lowering_options
from targets.lowering.to_relax import lower
from tests.targets.test_x86_build import mlp_graph


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("artifact") / "mlp.effarch"
    return build_artifact(mlp_graph(), out, manifest_extra={"verification": {"ok": True, "max_abs": 1e-6}})


def rewrite(src: Path, dst: Path, *, drop: str = "", replace: dict[str, bytes] | None = None) -> Path:
    """A copy of the zip ``src`` without member ``drop`` and with members replaced."""
    replace = replace or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            if name != drop:
                zout.writestr(name, replace.get(name, zin.read(name)))
    return dst


def edit_manifest(src: Path, dst: Path, **changes: Any) -> Path:
    manifest = read_manifest(src)
    manifest.update(changes)
    return rewrite(src, dst, replace={"manifest.json": json.dumps(manifest).encode()})


def test_manifest_describes_model_target_and_versions(built: Path) -> None:
    import tvm
    import tvm_ffi

    m = read_manifest(built)
    assert m["format_version"] == FORMAT_VERSION
    assert m["inputs"] == [{"name": "x", "dtype": "f32", "shape": [2, 32]}]
    assert m["outputs"] == [{"name": "y", "dtype": "f32", "shape": [2, 8]}]
    lowered = lower(mlp_graph(), **lowering_options(get_target("x86"), None, 2))  # which constants are parameters
    assert [(p["name"], p["dtype"], p["shape"]) for p in m["params"]] == [
        (n, "f32", list(a.shape)) for n, a in zip(lowered.param_names, lowered.params, strict=True)]
    assert {p["name"].split("_")[0] for p in m["params"]} == {"w1", "w2"}  # packed: w1_p16, ...
    assert set(m["target"]) == {"name", "tvm_target", "cpu", "features", "arch"}
    assert m["versions"]["effarch"] == compiler.__version__
    assert (m["versions"]["tvm"], m["versions"]["tvm_ffi"]) == (tvm.__version__, tvm_ffi.__version__)
    assert {"numpy", "python"} <= set(m["versions"])
    assert not {"created", "timings_s"} & set(m), "a date or a timing makes two builds differ"
    assert m["verification"] == {"ok": True, "max_abs": 1e-6}  # manifest_extra merged


def test_source_hash_is_the_printed_graph_unless_metadata_has_one(built: Path, tmp_path: Path) -> None:
    printed = print_graph(mlp_graph()).encode()
    assert read_manifest(built)["source_sha256"] == hashlib.sha256(printed).hexdigest()
    g = mlp_graph()
    g.metadata["source_sha256"] = "ab" * 32
    assert read_manifest(build_artifact(g, tmp_path / "m.effarch"))["source_sha256"] == "ab" * 32


def test_manifest_extra_cannot_replace_build_keys(tmp_path: Path) -> None:
    with pytest.raises(EffarchError, match="manifest_extra may not set inputs, target"):
        build_artifact(mlp_graph(), tmp_path / "m.effarch", manifest_extra={"target": 1, "inputs": 2})


def test_no_pickle_anywhere(built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with zipfile.ZipFile(built) as z:
        names = set(z.namelist())
        weights = z.read(WEIGHTS)
    assert names == {"manifest.json", "model.so", WEIGHTS}
    # safetensors: an 8-byte little-endian header length, then a JSON header.
    (header_len,) = struct.unpack("<Q", weights[:8])
    tensors = set(json.loads(weights[8:8 + header_len])) - {"__metadata__"}
    assert {name.split("_")[0] for name in tensors} == {"w1", "w2"}

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle used while reading an artifact")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    art = open_artifact(built)
    assert [w.shape for w in art.weights()] == [tuple(s.shape) for s in art.param_specs]
    # The weights hold the model's numbers, packed for the kernels: same elements, same values.
    sizes = sorted(w.size for w in art.weights())
    assert sizes == [64 * 8, 32 * 64]


def test_weights_round_trip_exactly_with_dtypes(tmp_path: Path) -> None:
    lib = tmp_path / "lib.so"
    lib.write_bytes(b"\x7fELF not really")
    params = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "h": np.array([1.5, -2], ml_dtypes.bfloat16),
              "i": np.array(7, np.int64), "m": np.array([True, False])}
    specs = [{"name": k, "dtype": d, "shape": list(v.shape)} for (k, v), d in
             zip(params.items(), ["f32", "bf16", "i64", "bool"], strict=True)]
    manifest = {"format_version": FORMAT_VERSION, "inputs": [], "outputs": [], "params": specs, "target": {}}
    art = open_artifact(write_artifact(tmp_path / "w.effarch", manifest, lib, params))
    for got, want in zip(art.weights(), params.values(), strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    assert art.library_bytes() == lib.read_bytes()


def test_not_a_zip_is_rejected(tmp_path: Path) -> None:
    bogus = tmp_path / "model.effarch"
    bogus.write_text("hello")
    with pytest.raises(EffarchError, match="is not an effarch artifact \\(not a zip archive\\)"):
        read_manifest(bogus)


def test_missing_file_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(EffarchError, match="does not exist"):
        read_manifest(tmp_path / "nothing.effarch")


def test_zip_without_manifest_is_rejected(built: Path, tmp_path: Path) -> None:
    with pytest.raises(EffarchError, match="no manifest.json"):
        read_manifest(rewrite(built, tmp_path / "x.effarch", drop="manifest.json"))


def test_missing_member_is_rejected(built: Path, tmp_path: Path) -> None:
    with pytest.raises(EffarchError, match="missing member 'model.so'; it is damaged"):
        open_artifact(rewrite(built, tmp_path / "x.effarch", drop="model.so"))


def test_unknown_format_version_is_rejected(built: Path, tmp_path: Path) -> None:
    future = edit_manifest(built, tmp_path / "x.effarch", format_version=FORMAT_VERSION + 1)
    with pytest.raises(EffarchError, match=f"format version {FORMAT_VERSION + 1}, this effarch reads"):
        read_manifest(future)


def test_unreadable_manifest_is_rejected(built: Path, tmp_path: Path) -> None:
    broken = rewrite(built, tmp_path / "x.effarch", replace={"manifest.json": b"{not json"})
    with pytest.raises(EffarchError, match="unreadable manifest.json") as e:
        read_manifest(broken)
    assert "\n" not in str(e.value)


def test_corrupted_library_fails_its_hash(built: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(built) as z:
        lib = bytearray(z.read("model.so"))
    lib[100] ^= 0xFF
    art = open_artifact(rewrite(built, tmp_path / "x.effarch", replace={"model.so": bytes(lib)}))
    with pytest.raises(EffarchError, match="'model.so' does not match its recorded sha256"):
        art.library_bytes()
