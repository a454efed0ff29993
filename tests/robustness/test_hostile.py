"""Hostile inputs through the real command line: every bad file, run input, artifact and device ends
in one ``effarch: error:`` line that names the problem, exit status 1, no traceback, no partial
output, and nothing written outside the output folder. Zero-size and NaN/Inf tensors compile and
run end to end instead (NaN weights with a warning)."""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from compiler.cli.main import main
from compiler.errors import EffarchError
from compiler.ir import Graph, Node

F = TensorProto.FLOAT
# Lines the CLI prints while it works, before any error: not part of the error.
PROGRESS = re.compile(r"^effarch: (loading |compiling for |running on )")


# ---- models --------------------------------------------------------------------------------------
def _vi(name: str, shape: list | None, elem: int = F) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _model(nodes: list, inputs: list, outputs: list, inits: list | None = None, opset: int = 17
           ) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "hostile", inputs, outputs, inits or [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _w(name: str, shape: list[int], value: float | None = None) -> onnx.TensorProto:
    n = int(np.prod(shape))
    data = np.arange(n, dtype=np.float32) if value is None else np.full(n, value, np.float32)
    return helper.make_tensor(name, F, shape, data.tolist())


def _ints(name: str, values: list[int]) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)


def small_model() -> onnx.ModelProto:
    """y = Relu(x[2,4] + w[4]): elementwise only, so it compiles in about a second."""
    return _model([helper.make_node("Add", ["x", "w"], ["h"], name="add"),
                   helper.make_node("Relu", ["h"], ["y"], name="act")],
                  [_vi("x", [2, 4])], [_vi("y", [2, 4])], [_w("w", [4])])


def _relu(x_shape: list | None, elem: int = F) -> onnx.ModelProto:
    return _model([helper.make_node("Relu", ["x"], ["y"], name="r")], [_vi("x", x_shape, elem)],
                  [_vi("y", None, elem)])


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())  # onnx.save would check or move external data
    return path


# ---- the cases -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """``make(folder, artifact)`` writes the bad files into ``folder`` and returns the argv (with
    ``{out}`` where the output path goes); ``expect`` is a substring of the one error line."""

    id: str
    make: Callable[[Path, Path], list[str]]
    expect: str
    # Loads the library into effarch's content-addressed cache before the error shows.
    caches_library: bool = False


def compile_file(data: bytes, name: str = "model.onnx") -> Callable[[Path, Path], list[str]]:
    def make(d: Path, _art: Path) -> list[str]:
        (d / name).write_bytes(data)
        return ["compile", str(d / name), "-o", "{out}"]
    return make


def compile_model(build: Callable[[], onnx.ModelProto], *extra: str) -> Callable[[Path, Path], list[str]]:
    def make(d: Path, _art: Path) -> list[str]:
        return ["compile", str(_save(build(), d / "model.onnx")), *extra, "-o", "{out}"]
    return make


def _truncated() -> bytes:
    data = small_model().SerializeToString()
    return data[: len(data) // 2]


def _zip_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("model.onnx", small_model().SerializeToString())
    return buf.getvalue()


def _unknown_dtype_initializer() -> onnx.ModelProto:
    m = small_model()
    m.graph.initializer[0].data_type = 99
    return m


def _string_input() -> onnx.ModelProto:
    return _relu([2], TensorProto.STRING)


def _initializer_too_short() -> onnx.ModelProto:
    m = small_model()
    w = m.graph.initializer[0]
    w.raw_data = np.zeros(2, np.float32).tobytes()  # its dims say 4 floats
    del w.float_data[:]
    return m


def _cycle() -> onnx.ModelProto:
    return _model([helper.make_node("Add", ["x", "b"], ["a"], name="first"),
                   helper.make_node("Relu", ["a"], ["b"], name="second")],
                  [_vi("x", [2])], [_vi("b", [2])])


def _dangling() -> onnx.ModelProto:
    return _model([helper.make_node("Add", ["x", "nowhere"], ["y"], name="adder")],
                  [_vi("x", [2])], [_vi("y", [2])])


def _two_producers() -> onnx.ModelProto:
    return _model([helper.make_node("Relu", ["x"], ["h"], name="one"),
                   helper.make_node("Neg", ["x"], ["h"], name="two"),
                   helper.make_node("Abs", ["h"], ["y"], name="three")],
                  [_vi("x", [2])], [_vi("y", [2])])


def _unproduced_output() -> onnx.ModelProto:
    return _model([helper.make_node("Relu", ["x"], ["y"], name="r")], [_vi("x", [2])],
                  [_vi("y", [2]), _vi("ghost", [2])])


def _matmul_contradiction() -> onnx.ModelProto:
    return _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")],
                  [_vi("x", [2, 4])], [_vi("y", None)], [_w("w", [5, 3])])


def _gemm_contradiction() -> onnx.ModelProto:
    return _model([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)],
                  [_vi("x", [2, 4])], [_vi("y", None)], [_w("w", [3, 5])])


def _conv_contradiction() -> onnx.ModelProto:
    return _model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv1")],
                  [_vi("x", [1, 3, 8, 8])], [_vi("y", None)], [_w("w", [4, 2, 3, 3])])


def _add_contradiction() -> onnx.ModelProto:
    return _model([helper.make_node("Add", ["x", "b"], ["y"], name="bias_add")],
                  [_vi("x", [2, 4])], [_vi("y", None)], [_w("b", [3])])


def _reshape_contradiction() -> onnx.ModelProto:
    return _model([helper.make_node("Reshape", ["x", "s"], ["y"], name="flatten")],
                  [_vi("x", [2, 4])], [_vi("y", None)], [_ints("s", [3, 3])])


def _opset(version: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        m = small_model()
        m.opset_import[0].version = version
        return m
    return build


def _external(location: str, *, write: bytes | None = None, length: int | None = None
              ) -> Callable[[Path, Path], list[str]]:
    def make(d: Path, _art: Path) -> list[str]:
        m = small_model()
        w = m.graph.initializer[0]
        del w.float_data[:]
        w.data_location = TensorProto.EXTERNAL
        entries = {"location": location, **({"length": str(length)} if length is not None else {})}
        for k, v in entries.items():
            w.external_data.add(key=k, value=v)
        if write is not None:
            (d / location).write_bytes(write)
        return ["compile", str(_save(m, d / "model.onnx")), "-o", "{out}"]
    return make


def _outside_weights(d: Path, _art: Path) -> list[str]:
    (d.parent / "outside.bin").write_bytes(np.zeros(4, np.float32).tobytes())
    return _external("../outside.bin")(d, _art)


def _constant_of_shape(shape_node: list, *extra: str) -> Callable[[], onnx.ModelProto]:
    """y = x + ConstantOfShape(shape) where the shape is only known by evaluating ``shape_node``:
    64 GiB of float32 if anything evaluated it."""
    def build() -> onnx.ModelProto:
        return _model([*shape_node,
                       helper.make_node("ConstantOfShape", ["shape"], ["big"], name="fill"),
                       helper.make_node("Add", ["x", "big"], ["y"], name="add")],
                      [_vi("x", [1])], [_vi("y", None)], [_ints("s", [1 << 34])])
    return build


_ABS_SHAPE = [helper.make_node("Abs", ["s"], ["shape"], name="abs")]  # ONNX's data propagation stops here


def _expand_huge() -> onnx.ModelProto:
    return _model([helper.make_node("Abs", ["s"], ["shape"], name="abs"),
                   helper.make_node("Expand", ["one", "shape"], ["big"], name="expand"),
                   helper.make_node("Add", ["x", "big"], ["y"], name="add")],
                  [_vi("x", [1])], [_vi("y", None)], [_ints("s", [1 << 17, 1 << 17]), _w("one", [1], 1.0)])


def _range_huge() -> onnx.ModelProto:
    scalar = [helper.make_tensor(n, TensorProto.INT64, [], [v]) for n, v in
              (("start", 0), ("limit", 1 << 40), ("delta", 1))]
    return _model([helper.make_node("Range", ["start", "limit", "delta"], ["r"], name="range"),
                   helper.make_node("Cast", ["r"], ["rf"], name="cast", to=F),
                   helper.make_node("Add", ["x", "rf"], ["y"], name="add")],
                  [_vi("x", [1])], [_vi("y", None)], scalar)


def _tile_huge() -> onnx.ModelProto:
    return _model([helper.make_node("Abs", ["reps0"], ["reps"], name="abs"),
                   helper.make_node("Tile", ["w", "reps"], ["big"], name="tile"),
                   helper.make_node("Add", ["x", "big"], ["y"], name="add")],
                  [_vi("x", [1, 1])], [_vi("y", None)], [_w("w", [1, 1]), _ints("reps0", [1 << 17, 1 << 17])])


FILE_CASES = [
    Case("empty-file", compile_file(b""), "model.onnx"),
    Case("truncated-file", compile_file(_truncated()), "model.onnx"),
    Case("garbage-file", compile_file(bytes(range(256)) * 4), "model.onnx"),
    Case("zip-named-onnx", compile_file(_zip_bytes()), "model.onnx"),
    Case("unknown-suffix", compile_file(b"hello", "model.txt"), "suffix '.txt'"),
    Case("output-is-a-folder", lambda d, a: ["compile", str(_save(small_model(), d / "m.onnx")), "-o", str(d)],
         "is a directory"),
    Case("output-folder-missing", lambda d, a: ["compile", str(_save(small_model(), d / "m.onnx")), "-o",
                                                str(d / "no" / "m.effarch")], "does not exist"),
    Case("missing-file", lambda d, a: ["compile", str(d / "absent.onnx"), "-o", "{out}"], "not found"),
    Case("huge-declared-dims", compile_model(lambda: _relu([1 << 31, 1 << 31])), "'x'"),
    Case("negative-dims", compile_model(lambda: _relu([-3, 4])), "-3"),
    Case("unknown-dtype-initializer", compile_model(_unknown_dtype_initializer), "'w'"),
    Case("string-input", compile_model(_string_input), "string"),
    Case("initializer-shorter-than-dims", compile_model(_initializer_too_short), "'w'"),
    Case("cycle", compile_model(_cycle), "cycle"),
    Case("dangling-reference", compile_model(_dangling), "'nowhere'"),
    Case("two-producers", compile_model(_two_producers), "'two'"),
    Case("output-nobody-produces", compile_model(_unproduced_output), "graph output 'ghost' is not written"),
    Case("matmul-weight-contradicts-input", compile_model(_matmul_contradiction), "'proj'"),
    Case("gemm-weight-contradicts-input", compile_model(_gemm_contradiction), "'fc'"),
    Case("conv-channels-contradict", compile_model(_conv_contradiction), "'conv1'"),
    Case("add-bias-does-not-broadcast", compile_model(_add_contradiction), "'bias_add'"),
    Case("reshape-to-wrong-size", compile_model(_reshape_contradiction), "'flatten'"),
    Case("opset-too-old", compile_model(_opset(3)), "opset 3"),
    Case("opset-too-new", compile_model(_opset(99)), "opset 99"),
    Case("external-data-missing", _external("weights.bin"), "weights.bin"),
    Case("external-data-outside-folder", _outside_weights, "outside.bin"),
    Case("external-data-absolute-path", _external("/etc/hostname"), "/etc/hostname"),
    Case("external-data-too-short", _external("short.bin", write=b"\0" * 8, length=48), "'w'"),
]

CONSTEVAL_CASES = [
    Case("constant-of-shape-64gib-O2", compile_model(_constant_of_shape(_ABS_SHAPE)), "'fill'"),
    Case("constant-of-shape-64gib-O0", compile_model(_constant_of_shape(_ABS_SHAPE), "-O0"), "'fill'"),
    Case("constant-of-shape-64gib-lowering", compile_model(_constant_of_shape(_ABS_SHAPE), "--pipeline", ""),
         "'fill'"),
    Case("constant-of-shape-declared", compile_model(_constant_of_shape(
        [helper.make_node("Identity", ["s"], ["shape"], name="id")])), "'fill'"),
    Case("expand-64gib", compile_model(_expand_huge), "'expand'"),
    Case("range-8tib", compile_model(_range_huge), "'range'"),
    Case("tile-64gib", compile_model(_tile_huge), "'tile'"),
]


# ---- run inputs and artifacts (on one shared artifact) -----------------------------------------
def run_with(write_inputs: Callable[[Path], None], expect_args: tuple[str, ...] = ()
             ) -> Callable[[Path, Path], list[str]]:
    def make(d: Path, art: Path) -> list[str]:
        write_inputs(d / "in.npz")
        return ["run", str(art), "--inputs", str(d / "in.npz"), *expect_args, "--outputs", "{out}"]
    return make


def _npz(**arrays: object) -> Callable[[Path], None]:
    return lambda p: np.savez(p, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds oddly


X = np.zeros((2, 4), np.float32)


def _pickled_npz(p: Path) -> None:
    p.write_bytes(pickle.dumps({"x": X}))


def _npz_with_pickle_inside(p: Path) -> None:
    np.savez(p, x=np.array([X, None], dtype=object))


def _truncated_npz(p: Path) -> None:
    p.write_bytes(b"PK\x03\x04" + b"\0" * 20)


def _manifest_not_json(members: dict[str, bytes], _manifest: dict) -> None:
    members["manifest.json"] = b"{not json"


def _drop_weights(members: dict[str, bytes], manifest: dict) -> None:
    del members[manifest["members"]["weights"]["name"]]


def tampered(edit: Callable[[dict[str, bytes], dict], None]) -> Callable[[Path, Path], list[str]]:
    """A copy of the artifact whose members (and parsed manifest) ``edit`` changed."""
    def make(d: Path, art: Path) -> list[str]:
        with zipfile.ZipFile(art) as z:
            members = {n: z.read(n) for n in z.namelist()}
        manifest = json.loads(members["manifest.json"])
        edit(members, manifest)
        bad = d / "bad.effarch"
        with zipfile.ZipFile(bad, "w") as z:
            for name, data in members.items():
                z.writestr(name, data)
        return ["run", str(bad), "--outputs", "{out}"]
    return make


def _rewrite(change: Callable[[dict], None]) -> Callable[[dict[str, bytes], dict], None]:
    def edit(members: dict[str, bytes], manifest: dict) -> None:
        change(manifest)
        members["manifest.json"] = json.dumps(manifest).encode()
    return edit


def _flip_library(members: dict[str, bytes], manifest: dict) -> None:
    name = manifest["members"]["library"]["name"]
    lib = bytearray(members[name])
    lib[len(lib) // 2] ^= 0xFF
    members[name] = bytes(lib)


def _traversal(members: dict[str, bytes], manifest: dict) -> None:
    name = manifest["members"]["library"]["name"]
    evil = "../../evil.so"
    members[evil] = members.pop(name)
    manifest["members"]["library"]["name"] = evil
    members["manifest.json"] = json.dumps(manifest).encode()


def _truncated_artifact(d: Path, art: Path) -> list[str]:
    data = art.read_bytes()
    (d / "half.effarch").write_bytes(data[: len(data) // 2])
    return ["run", str(d / "half.effarch"), "--outputs", "{out}"]


def _set_target(**target: object) -> Callable[[dict[str, bytes], dict], None]:
    return _rewrite(lambda m: m["target"].update(target))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends


RUN_CASES = [
    Case("run-input-wrong-name", run_with(_npz(z=X)), "'x'"),
    Case("run-input-extra", run_with(_npz(x=X, extra=X)), "'extra'"),
    Case("run-input-wrong-shape", run_with(_npz(x=np.zeros((3, 4), np.float32))), "(3, 4)"),
    Case("run-input-wrong-dtype", run_with(_npz(x=X.astype(np.float64))), "float64"),
    Case("run-input-rank-0", run_with(_npz(x=np.float32(1))), "'x'"),
    Case("run-input-object-array", run_with(_npz_with_pickle_inside), "in.npz"),
    Case("run-input-pickle-file", run_with(_pickled_npz), "in.npz"),
    Case("run-input-missing-file", lambda d, art: ["run", str(art), "--inputs", str(d / "no.npz"),
                                                   "--outputs", "{out}"], "no.npz"),
    Case("run-input-truncated-npz", run_with(_truncated_npz), "in.npz"),
    Case("artifact-truncated", _truncated_artifact, "half.effarch"),
    Case("artifact-tampered-library", tampered(_flip_library), "sha256"),
    Case("artifact-manifest-not-json", tampered(_manifest_not_json),
         "manifest.json"),
    Case("artifact-manifest-wrong-types", tampered(_rewrite(lambda m: m.update(inputs="x", params=7))),
         "manifest"),
    Case("artifact-manifest-changed-input-shape",
         tampered(_rewrite(lambda m: m["inputs"][0].update(shape=[3, 4]))), "'x'", caches_library=True),
    Case("artifact-manifest-unknown-dtype", tampered(_rewrite(lambda m: m["inputs"][0].update(dtype="q7"))),
         "q7"),
    Case("artifact-zip-path-traversal", tampered(_traversal), "evil.so"),
    Case("artifact-missing-member", tampered(_drop_weights),
         "weights.safetensors"),
    Case("artifact-manifest-no-target-name", tampered(_rewrite(lambda m: m["target"].pop("name"))), "no target"),
    Case("artifact-future-format", tampered(_rewrite(lambda m: m.update(format_version=99))), "99"),
    Case("artifact-for-aarch64", tampered(_set_target(name="arm", arch="aarch64")), "aarch64"),
    Case("artifact-for-cuda-arch", tampered(_set_target(name="cuda", arch="aarch64")), "aarch64"),
    Case("artifact-for-unknown-target", tampered(_set_target(name="vax")), "vax"),
    # No x86 CPU has both: AMD's SSE4a and Intel's AMX.
    Case("artifact-for-another-cpu", tampered(_set_target(features=["sse4a", "amx-tile"])), "lacks"),
    Case("run-outputs-folder-missing", lambda d, art: ["run", str(art), "--outputs", str(d / "no" / "y.npz")],
         "does not exist"),
    Case("run-outputs-is-a-folder", lambda d, art: ["run", str(art), "--outputs", str(d)], "is a directory"),
    Case("artifact-for-cuda", tampered(_set_target(name="cuda")), "NVIDIA"),
    Case("device-unreachable", lambda d, art: ["run", str(art), "--device", f"rpc://127.0.0.1:{closed_port()}",
                                               "--device-timeout", "2", "--outputs", "{out}"], "127.0.0.1"),
    Case("device-bad-url", lambda d, art: ["run", str(art), "--device", "http://host", "--outputs", "{out}"],
         "http://host"),
]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small x86 artifact that the run and artifact cases read or copy."""
    d = tmp_path_factory.mktemp("artifact")
    art = d / "m.effarch"
    assert main(["compile", str(_save(small_model(), d / "m.onnx")), "-o", str(art)]) == 0
    return art


def _library_sha(art: Path) -> str:
    with zipfile.ZipFile(art) as z:
        return str(json.loads(z.read("manifest.json"))["members"]["library"]["sha256"])


def _listing(*roots: Path) -> set[str]:
    return {str(p) for root in roots for p in root.rglob("*")}


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A case folder whose parent is the only place anything may appear: the working directory,
    temporary files and effarch's library cache all live under ``tmp_path``."""
    for sub in ("case", "cwd", "tmp", "cache"):
        (tmp_path / sub).mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setenv("EFFARCH_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "case"


@pytest.mark.parametrize("case", FILE_CASES + CONSTEVAL_CASES + RUN_CASES, ids=lambda c: c.id)
def test_hostile_input_is_one_line_error(case: Case, sandbox: Path, request: pytest.FixtureRequest,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    if case.id == "artifact-for-cuda" and Path("/dev/nvidiactl").exists():
        pytest.skip("this host has an NVIDIA GPU: a CUDA artifact is not foreign here")
    # Only the run cases need the artifact: the others stay fast when run on their own.
    artifact = request.getfixturevalue("artifact") if case in RUN_CASES else Path("unused.effarch")
    argv = case.make(sandbox, artifact)
    out = sandbox / ("out.npz" if argv[0] == "run" else "out.effarch")
    argv = [a.replace("{out}", str(out)) for a in argv]
    before = _listing(sandbox.parent)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not PROGRESS.match(line)]
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith("effarch: error: "), err
    assert case.expect in lines[0], err
    assert "internal error" not in err and "Traceback" not in err
    assert not out.exists()
    after = _listing(sandbox.parent)
    if case.caches_library:  # only the genuine library, under its hash, checked before it was written
        cache = sandbox.parent / "cache" / "lib"
        assert {p.name for p in cache.iterdir()} == {_library_sha(artifact) + ".so"}
        after -= _listing(sandbox.parent / "cache") | {str(sandbox.parent / "cache" / "lib")}
    assert after == before, (sorted(after - before), sorted(before - after))


def test_hostile_corpus_is_large_enough() -> None:
    cases = FILE_CASES + CONSTEVAL_CASES + RUN_CASES
    assert len(cases) >= 40 and len({c.id for c in cases}) == len(cases)


# ---- tensors that are odd but valid: compile and run end to end --------------------------------
def _compile_and_run(d: Path, model: onnx.ModelProto, capsys: pytest.CaptureFixture[str]
                     ) -> tuple[str, dict[str, np.ndarray]]:
    art, outputs = d / "m.effarch", d / "y.npz"
    code = main(["compile", str(_save(model, d / "m.onnx")), "-o", str(art)])
    compile_err = capsys.readouterr().err
    assert code == 0, compile_err
    code = main(["run", str(art), "--outputs", str(outputs)])
    run_out, run_err = capsys.readouterr()
    assert code == 0, run_err
    assert "internal error" not in compile_err + run_err
    with np.load(outputs) as y:
        return compile_err, {k: y[k] for k in y.files}


def test_zero_size_weight_compiles_and_runs(sandbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # x[2,0] @ w[0,3]: an empty contraction is all zeros, then a zero-size concat onto a real one.
    model = _model([helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
                    helper.make_node("Concat", ["h", "e"], ["y"], name="cat", axis=0)],
                   [_vi("x", [2, 0])], [_vi("y", [2, 3])], [_w("w", [0, 3]), _w("e", [0, 3])])
    _, outputs = _compile_and_run(sandbox, model, capsys)
    np.testing.assert_array_equal(outputs["y"], np.zeros((2, 3), np.float32))


def test_zero_size_output_compiles_and_runs(sandbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _model([helper.make_node("Add", ["x", "b"], ["y"], name="add")],
                   [_vi("x", [0, 3])], [_vi("y", [0, 3])], [_w("b", [3])])
    _, outputs = _compile_and_run(sandbox, model, capsys)
    assert outputs["y"].shape == (0, 3)


def test_nan_and_inf_weights_compile_and_run_with_a_warning(sandbox: Path, capsys: pytest.CaptureFixture[str],
                                                           caplog: pytest.LogCaptureFixture) -> None:
    w = np.array([[np.nan, 1.0], [np.inf, -np.inf]], np.float32)
    model = _model([helper.make_node("Add", ["x", "w"], ["y"], name="add")], [_vi("x", [2, 2])],
                   [_vi("y", [2, 2])], [helper.make_tensor("w", F, [2, 2], w.reshape(-1).tolist())])
    with caplog.at_level(logging.WARNING):
        _, outputs = _compile_and_run(sandbox, model, capsys)
    # The CLI prints warnings as 'effarch: WARNING: ...' lines; in-process, logging keeps them here.
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["initializer 'w' holds 1 NaN value(s) of 4; outputs computed from it will be NaN"]
    y = outputs["y"]
    assert np.isnan(y[0, 0]) and y[1, 0] == np.inf and y[1, 1] == -np.inf


def _wait_listening(port: int, server: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.poll() is None, "the RPC server exited"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"the RPC server did not listen on port {port} within {timeout_s} s")


def test_device_of_the_wrong_architecture_is_refused(sandbox: Path, artifact: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """An aarch64 artifact sent to an x86 RPC server (this host): refused before the model runs."""
    run = tampered(_set_target(name="arm", arch="aarch64", cpu="cortex-a72", features=[]))(sandbox, artifact)
    port = closed_port()
    server = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port",
                               str(port), "--port-end", str(port + 1)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "TVM_USE_RUNTIME_LIB": "1"})  # as on a board: runtime only
    try:
        _wait_listening(port, server)
        before = _listing(sandbox)
        capsys.readouterr()
        code = main([*run[:2], "--device", f"rpc://127.0.0.1:{port}", "--device-timeout", "20"])
        err = capsys.readouterr().err
    finally:
        server.terminate()
        server.wait(timeout=30)
    lines = [line for line in err.splitlines() if line.strip() and not PROGRESS.match(line)]
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith("effarch: error: ") and "cannot load aarch64 code" in lines[0], err
    assert _listing(sandbox) == before


# ---- the constant evaluators themselves refuse before allocating --------------------------------
def _fill_graph() -> tuple[Graph, Node]:
    """ConstantOfShape of a constant 2**36-element shape whose output type (so its dtype too) nobody
    inferred: the guards count it as one byte per element, 64 GiB."""
    g = Graph("fill")
    shape = g.add_constant("shape", np.array([1 << 36], np.int64))
    fill = g.make_node("ConstantOfShape", [shape], {}, types=[None], name="fill")
    g.outputs = [g.make_node("Relu", list(fill.outputs), types=[None], name="r").outputs[0]]
    return g, fill


def test_fold_constants_refuses_a_64gib_fill_before_evaluating() -> None:
    from passes.fold_constants import FoldConstants

    g, fill = _fill_graph()
    notes: list = []
    assert FoldConstants().try_fold(fill, notes) is None
    assert len(notes) == 1 and "size guard: output is 68719476736 bytes" in notes[0].reason


def test_lowering_consteval_refuses_a_64gib_fill_naming_the_node() -> None:
    from targets.lowering.consteval import evaluate

    _, fill = _fill_graph()
    with pytest.raises(EffarchError, match=r"node 'fill' \(ConstantOfShape\) would make a tensor of 68719476736"):
        evaluate(fill, [fill.inputs[0].const], [None])  # type: ignore[union-attr]  # the input is a constant


def test_real_process_prints_one_error_line(sandbox: Path) -> None:
    """The headline gap end to end in a real process (stderr at the file-descriptor level: native
    libraries' output would show here, capsys would miss it)."""
    model = _save(_matmul_contradiction(), sandbox / "model.onnx")
    out = sandbox / "out.effarch"
    proc = subprocess.run([sys.executable, "-m", "compiler.cli", "compile", str(model), "-o", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=Path.cwd())
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not PROGRESS.match(line)]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("effarch: error: invalid model: node #0 MatMul 'proj'"), proc.stderr
    assert proc.stdout == "" and not out.exists()
