"""build_artifact for x86: weights outside the library, CPUs (host and named), timings, failures."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from compiler.errors import EffarchError
from compiler.ir.graph import Graph
from compiler.ir.types import DType, TensorType
from targets.artifact import read_manifest
from targets.base import get_target, list_targets
from targets.build import build, build_artifact
from targets.x86 import _CPUINFO_FLAG, host_cpuinfo_flags


def f32(*shape: int) -> TensorType:
    return TensorType(DType.F32, shape)


def mlp_graph(hidden: int = 64, width: int = 32, batch: int = 2) -> Graph:
    """x[batch,width] -> MatMul(w1) -> Add(b1) -> Relu -> Gemm(w2, b2) -> y[batch,8]."""
    rng = np.random.default_rng(0)
    g = Graph("mlp")
    x = g.add_input("x", f32(batch, width))
    w1 = g.add_constant("w1", (rng.standard_normal((width, hidden)) / np.sqrt(width)).astype(np.float32))
    b1 = g.add_constant("b1", rng.standard_normal(hidden, dtype=np.float32))
    w2 = g.add_constant("w2", (rng.standard_normal((hidden, 8)) / np.sqrt(hidden)).astype(np.float32))
    b2 = g.add_constant("b2", rng.standard_normal(8, dtype=np.float32))
    h = g.make_node("MatMul", [x, w1], types=[f32(batch, hidden)]).outputs[0]
    h = g.make_node("Add", [h, b1], types=[f32(batch, hidden)]).outputs[0]
    h = g.make_node("Relu", [h], types=[f32(batch, hidden)]).outputs[0]
    y = g.make_node("Gemm", [h, w2, b2], types=[f32(batch, 8)], output_names=["y"]).outputs[0]
    g.outputs = [y]
    return g


def weight_bytes(g: Graph) -> int:
    return sum(v.const.nbytes for v in g.constants.values() if v.const is not None)


BuiltMLP = tuple[Graph, Path, dict[str, float]]


@pytest.fixture(scope="module")
def big_build(tmp_path_factory: pytest.TempPathFactory) -> BuiltMLP:
    """An MLP with ~4.5 MB of weights, built once for the host CPU."""
    g = mlp_graph(hidden=2048, width=512)
    out = tmp_path_factory.mktemp("build") / "mlp.effarch"
    result = build(g, out)
    return g, out, result.timings


def test_weights_stay_out_of_the_library(big_build: BuiltMLP) -> None:
    g, out, _ = big_build
    assert weight_bytes(g) > 4_000_000
    with zipfile.ZipFile(out) as z:
        lib_size = z.getinfo("model.so").file_size
        weights_size = z.getinfo("weights.safetensors").file_size
    assert lib_size < weight_bytes(g) / 10, f"library {lib_size} B holds the weights?"
    assert weights_size >= weight_bytes(g)


def test_build_reports_each_step_timing(big_build: BuiltMLP) -> None:
    _, out, timings = big_build
    assert set(timings) == {"lower", "prepare", "compile", "export", "pack"}  # prepare: precision rewrite
    assert all(t > 0 for t in timings.values())


def test_host_build_records_host_cpu_and_features_it_has(big_build: BuiltMLP) -> None:
    from tvm.target import codegen

    target = read_manifest(big_build[1])["target"]
    assert target["name"] == "x86" and target["arch"] == "x86_64"
    assert target["cpu"] == str(codegen.llvm_get_system_cpu())
    assert target["tvm_target"]["mcpu"] == target["cpu"] and target["tvm_target"]["kind"] == "llvm"
    flags = host_cpuinfo_flags()
    assert flags is not None and "sse2" in target["features"]
    assert [f for f in target["features"] if _CPUINFO_FLAG[f] not in flags] == []


def test_named_cpu_builds_and_records_its_features(tmp_path: Path) -> None:
    out = build_artifact(mlp_graph(), tmp_path / "m.effarch", cpu="skylake-avx512")
    target = read_manifest(out)["target"]
    assert target["cpu"] == "skylake-avx512" and target["tvm_target"]["mcpu"] == "skylake-avx512"
    assert {"avx512f", "avx512bw", "avx2", "fma"} <= set(target["features"])
    assert "avx512vnni" not in target["features"]  # Skylake-SP predates VNNI


def test_unknown_cpu_lists_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(EffarchError, match=r"unknown x86 CPU 'pentium9'.*skylake-avx512.*znver5") as e:
        build_artifact(mlp_graph(), tmp_path / "m.effarch", cpu="pentium9")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "m.effarch").exists()


def test_registry_finds_x86_and_rejects_unknown_targets() -> None:
    assert "x86" in [t.name for t in list_targets()]
    assert get_target("x86").arch == "x86_64"
    with pytest.raises(EffarchError, match=r"unknown target 'riscv'; pass one of: .*x86"):
        get_target("riscv")
    with pytest.raises(EffarchError, match="unknown target 'build'"):  # a helper module, not a target
        get_target("build")


def test_failed_build_leaves_no_file(tmp_path: Path) -> None:
    g = mlp_graph()
    g.make_node("NoSuchOp", [g.outputs[0]], types=[f32(2, 8)])
    with pytest.raises(EffarchError, match="NoSuchOp"):
        build_artifact(g, tmp_path / "bad.effarch")
    assert list(tmp_path.iterdir()) == []


def test_failure_while_packing_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "m.effarch"
    out.write_bytes(b"previous artifact")

    def broken_writestr(self: zipfile.ZipFile, name: str, data: bytes, *args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(zipfile.ZipFile, "writestr", broken_writestr)
    with pytest.raises(OSError, match="disk full"):
        build_artifact(mlp_graph(), out)
    assert out.read_bytes() == b"previous artifact"
    assert [p.name for p in tmp_path.iterdir()] == ["m.effarch"]  # no temp file left behind


def test_missing_output_directory_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(EffarchError, match="output directory .* does not exist"):
        build_artifact(mlp_graph(), tmp_path / "nope" / "m.effarch")
