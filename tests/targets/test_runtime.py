"""load_artifact: numbers match onnxruntime, inputs are checked, hosts are checked, libraries cached."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from compiler.errors import EffarchError
from compiler.ir.graph import Graph
from compiler.ir.types import DType, TensorType
from compiler.numerics.reference import random_inputs, run_onnxruntime
from targets.artifact import TensorSpec, read_manifest
from targets.build import build_artifact
from targets.runtime import LoadedArtifact, load_artifact
from tests.targets.test_artifact import rewrite
from tests.targets.test_x86_build import mlp_graph

# fp32 dot products of up to 512 terms, summed in a different order than onnxruntime's.
F32_TOL = {"rtol": 1e-4, "atol": 1e-5}


def two_in_two_out() -> Graph:
    """a[3,4] f32, n[3,4] i32 -> (Relu(a) + a as "sum", n + n as "twice"): output order and dtypes."""
    g = Graph("pair")
    a = g.add_input("a", TensorType(DType.F32, (3, 4)))
    n = g.add_input("n", TensorType(DType.I32, (3, 4)))
    r = g.make_node("Relu", [a], types=[TensorType(DType.F32, (3, 4))]).outputs[0]
    s = g.make_node("Add", [r, a], types=[TensorType(DType.F32, (3, 4))], output_names=["sum"]).outputs[0]
    t = g.make_node("Add", [n, n], types=[TensorType(DType.I32, (3, 4))], output_names=["twice"]).outputs[0]
    g.outputs = [t, s]
    return g


Built = tuple[Graph, LoadedArtifact, Path]


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> Built:
    tmp = tmp_path_factory.mktemp("runtime")
    g = mlp_graph(hidden=256, width=512, batch=4)
    path = build_artifact(g, tmp / "mlp.effarch")
    return g, load_artifact(path, cache_dir=tmp / "cache"), path


def test_round_trip_matches_onnxruntime(mlp: Built) -> None:
    g, art, _ = mlp
    for seed in (0, 1):
        inputs = random_inputs(g, seed=seed)
        got, want = art.run(inputs), run_onnxruntime(g, inputs)
        assert list(got) == ["y"]
        np.testing.assert_allclose(got["y"], want["y"], **F32_TOL)


def test_outputs_keep_names_order_and_dtypes(tmp_path: Path) -> None:
    g = two_in_two_out()
    art = load_artifact(build_artifact(g, tmp_path / "pair.effarch"), cache_dir=tmp_path / "cache")
    inputs = random_inputs(g, seed=3)
    got, want = art.run(inputs), run_onnxruntime(g, inputs)
    assert list(got) == ["twice", "sum"]
    assert got["twice"].dtype == np.int32
    np.testing.assert_array_equal(got["twice"], want["twice"])
    np.testing.assert_allclose(got["sum"], want["sum"], rtol=0, atol=0)  # exact: one add of a relu


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.pop("x"), r"missing input\(s\) 'x'; the model takes x: f32\[4,512\]"),
    (lambda d: d.update(z=np.zeros(1)), r"unexpected input\(s\) 'z'; the model takes only 'x'"),
    (lambda d: d.update(x=d["x"].astype(np.float64)),
     r"input 'x' has dtype float64 but the model expects float32 \(f32\)"),
    (lambda d: d.update(x=d["x"][:2]), r"input 'x' has shape \(2, 512\) but the model expects \(4, 512\)"),
    (lambda d: d.update(x=d["x"][None]), r"input 'x' has shape \(1, 4, 512\) but the model "
     r"expects \(4, 512\)"),
    (lambda d: d.update(x=d["x"].tolist()), r"input 'x' is a list; pass a numpy array of f32\[4, 512\]"),
])
def test_bad_inputs_are_one_line_errors(mlp: Built, change: Callable[[dict], object], message: str) -> None:
    g, art, _ = mlp
    inputs = random_inputs(g)
    change(inputs)
    with pytest.raises(EffarchError, match=message) as e:
        art.run(inputs)
    assert "\n" not in str(e.value)


def test_input_specs_come_from_the_manifest(mlp: Built) -> None:
    _, art, _ = mlp
    assert [(s.name, s.dtype, s.shape) for s in art.input_specs] == [("x", "f32", (4, 512))]
    assert art.manifest["target"]["name"] == "x86"


def test_time_run_gives_one_positive_time_per_repeat(mlp: Built) -> None:
    g, art, _ = mlp
    times = art.time_run(random_inputs(g), warmup=1, repeat=4)
    assert len(times) == 4 and all(0 < t < 10 for t in times)


def test_library_is_cached_by_hash_and_reused(mlp: Built, tmp_path: Path) -> None:
    _, _, path = mlp
    cache = tmp_path / "cache"
    load_artifact(path, cache_dir=cache)
    libs = list((cache / "lib").iterdir())
    sha = read_manifest(path)["members"]["library"]["sha256"]
    assert [p.name for p in libs] == [f"{sha}.so"]
    mtime = libs[0].stat().st_mtime_ns
    load_artifact(path, cache_dir=cache)
    assert list((cache / "lib").iterdir()) == libs and libs[0].stat().st_mtime_ns == mtime
    # A damaged cache entry is rewritten, not loaded. (Replaced, not written in place: the loaded
    # library is memory-mapped, and truncating it under the process would crash it.)
    damaged = tmp_path / "damaged.so"
    damaged.write_bytes(b"damaged")
    os.replace(damaged, libs[0])
    load_artifact(path, cache_dir=cache)
    assert libs[0].stat().st_size > len(b"damaged")


def test_symbolic_dims_must_agree_across_inputs(mlp: Built) -> None:
    art = copy.copy(mlp[1])
    art.input_specs = [TensorSpec("x", "f32", ("batch", 512)), TensorSpec("m", "bool", ("batch", None))]
    x = np.zeros((3, 512), np.float32)
    art.check_inputs({"x": x, "m": np.zeros((3, 7), bool)})  # any batch, any unknown dim
    mismatch = r"input 'm' has shape \(2, 7\) but the model expects \(batch, \?\) with batch=3 from earlier"
    with pytest.raises(EffarchError, match=mismatch):
        art.check_inputs({"x": x, "m": np.zeros((2, 7), bool)})


def with_target(path: Path, dst: Path, **changes: object) -> Path:
    manifest = read_manifest(path)
    manifest["target"].update(changes)
    return rewrite(path, dst, replace={"manifest.json": json.dumps(manifest).encode()})


def test_host_without_a_required_feature_is_refused(mlp: Built, tmp_path: Path) -> None:
    _, _, path = mlp
    features = [*read_manifest(path)["target"]["features"], "made-up-isa"]
    with pytest.raises(EffarchError, match=r"CPU lacks made-up-isa, which the artifact \(built for .*\)"):
        load_artifact(with_target(path, tmp_path / "x.effarch", features=features), cache_dir=tmp_path)


def test_other_architecture_is_refused(mlp: Built, tmp_path: Path) -> None:
    _, _, path = mlp
    with pytest.raises(EffarchError, match="built for aarch64 but this machine is x86_64"):
        load_artifact(with_target(path, tmp_path / "x.effarch", arch="aarch64"), cache_dir=tmp_path)
