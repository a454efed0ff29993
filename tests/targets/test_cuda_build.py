"""The CUDA target without a GPU: every zoo model compiles for sm_90 into a library holding SASS
(machine code) and no CUDA C source, the weights stay outside it, and running it where there is
no GPU, or on the wrong GPU, is refused with a one-line reason."""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import onnx
import pytest

from compiler import zoo
from compiler.driver import compile_model, load_model
from compiler.errors import EffarchError
from targets import cuda
from targets.artifact import open_artifact
from targets.base import get_target
from targets.runtime import load_artifact

BIG = {"resnet18", "mobilenetv2", "minilm", "gpt"}  # tens of seconds each on two cores


def _build(name: str, out: Path, arch: str = "sm_90") -> Path:
    path = out / f"{name}-{arch}.effarch"
    compile_model(load_model(f"zoo:{name}"), path, target="cuda", cpu=arch)
    return path


@pytest.fixture(scope="module")
def mlp_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build("mlp", tmp_path_factory.mktemp("cuda"))


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in zoo.names()])
def test_zoo_model_compiles_to_sass(name: str, tmp_path: Path) -> None:
    art = open_artifact(_build(name, tmp_path))
    library = art.library_bytes()
    report = cuda.machine_code_report(library)
    assert report == {"fatbin_entries": [("sass", "sm_90")], "cuda_source_kernels": 0}
    assert b".target sm_90" not in library  # no PTX either: nothing is left for a JIT compiler
    assert art.manifest["target"]["name"] == "cuda" and art.manifest["target"]["cpu"] == "sm_90"
    largest = max(art.weights(), key=lambda w: w.nbytes)
    assert largest.tobytes()[:256] not in library  # weights travel beside the library, not in it


def test_chosen_arch_is_the_machine_code_arch(tmp_path: Path) -> None:
    library = open_artifact(_build("digits_cnn", tmp_path, arch="sm_80")).library_bytes()
    assert cuda.machine_code_report(library)["fatbin_entries"] == [("sass", "sm_80")]


def test_blob_round_trip(mlp_artifact: Path) -> None:
    blob = cuda.join_imports_blob(b"\x04" + bytes(7) + bytes(32) + b"\x02" + bytes(7) + bytes(16),
                                  [(b"relax.VMExecutable", b"exe"), (b"_lib", None), (b"cuda", b"mod")])
    header, modules = cuda.split_imports_blob(blob)
    assert modules == [(b"relax.VMExecutable", b"exe"), (b"_lib", None), (b"cuda", b"mod")]
    assert cuda.join_imports_blob(header, modules) == blob
    with pytest.raises(EffarchError, match="unexpected layout.*TVM 0.27"):
        cuda.split_imports_blob(blob[:-1])


def test_cuda_module_split_keeps_function_table() -> None:
    payload = cuda._chunk(b"cuda") + b"\x01\x02fmap-bytes" + cuda._chunk(b"__global__ void k() {}")
    assert cuda.split_cuda_module(payload) == ("cuda", b"\x01\x02fmap-bytes", b"__global__ void k() {}")


def test_digit_leading_parameter_names_become_identifiers() -> None:
    src = "void k(float* __restrict__ 0_bias_ptr, float* x10_ptr) { 0_bias_ptr[0] = 0x0p+0f + 1e-05f; }"
    assert cuda.c_safe_source(src) == ("void k(float* __restrict__ v0_bias_ptr, float* x10_ptr) "
                                       "{ v0_bias_ptr[0] = 0x0p+0f + 1e-05f; }")


def _has_driver() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def test_run_without_gpu_is_refused(mlp_artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if _has_driver():  # on a GPU machine, make the driver look absent
        real = ctypes.CDLL

        def no_libcuda(name: str, *args: Any, **kwargs: Any) -> ctypes.CDLL:
            if name == "libcuda.so.1":
                raise OSError("libcuda.so.1: cannot open shared object file")
            return real(name, *args, **kwargs)

        monkeypatch.setattr(cuda.ctypes, "CDLL", no_libcuda)
    with pytest.raises(EffarchError, match="no NVIDIA driver.*run it on a machine with an NVIDIA GPU") as err:
        load_artifact(mlp_artifact, cache_dir=mlp_artifact.parent / "cache")
    assert "\n" not in str(err.value)


def test_wrong_gpu_is_refused() -> None:
    cuda.check_gpu_runs("sm_80", (8, 6))  # SASS runs on later minor versions of its major
    cuda.check_gpu_runs("sm_90", (9, 0))
    with pytest.raises(EffarchError, match="holds GPU code for sm_90 but this GPU is sm_86; rebuild it with "
                                           "--arch sm_86"):
        cuda.check_gpu_runs("sm_90", (8, 6))
    with pytest.raises(EffarchError, match="this GPU is sm_80"):
        cuda.check_gpu_runs("sm_86", (8, 0))


def test_unknown_arch_lists_the_known_ones() -> None:
    spec = get_target("cuda")
    assert spec.resolve_cpu(None) == "sm_90"
    with pytest.raises(EffarchError, match="unknown CUDA architecture 'sm_91'; pass --arch one of: "
                                           "sm_75, sm_80, sm_86, sm_87, sm_89, sm_90"):
        spec.resolve_cpu("sm_91")


def test_missing_nvcc_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.setattr(cuda, "DEFAULT_NVCC", tmp_path / "nvcc")
    with pytest.raises(EffarchError, match="needs nvcc.*install it, or set CUDA_HOME"):
        cuda.find_nvcc()


def test_target_dict_has_arch_and_llvm_host() -> None:
    target = get_target("cuda").tvm_target("sm_86")
    assert str(target.attrs["arch"]) == "sm_86" and target.host.kind.name == "llvm"


class _RaisesOnTranspose:
    """A rule with dlight's Transpose bug: it raises on every kernel that transposes."""

    def apply(self, func: Any, target: Any, tunable: bool) -> None:
        if "T_transpose" in func.script():
            raise ValueError("Cannot use and / or / not operator to Expr.")
        return None


def test_a_rule_raising_on_one_kernel_hands_it_to_the_next(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """dlight stops the build when a rule raises; effarch's per-kernel application logs it and goes on."""
    shipped = cuda.gpu_rules
    monkeypatch.setattr(cuda, "gpu_rules", lambda: [("broken", _RaisesOnTranspose()), *shipped()])
    caplog.set_level("INFO")
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 64, 48])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 48, 64])
    nodes = [onnx.helper.make_node("Relu", ["x"], ["r"]),
             onnx.helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
             onnx.helper.make_node("Sigmoid", ["t"], ["y"])]
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph(nodes, "g", [x], [y])), tmp_path / "t.onnx")
    path = tmp_path / "t.effarch"
    compile_model(load_model(str(tmp_path / "t.onnx")), path, target="cuda", cpu="sm_90")
    messages = [r.getMessage() for r in caplog.records]
    raised = [m for m in messages if "rule broken raised" in m]
    assert raised and all("Cannot use and / or / not operator" in m for m in raised)
    taken = dict(m.split()[1::3][:2] for m in messages if m.startswith("kernel ") and " scheduled by " in m)
    transposes = {k: r for k, r in taken.items() if "transpose" in k}
    assert transposes and "broken" not in transposes.values()
    assert cuda.machine_code_report(open_artifact(path).library_bytes())["cuda_source_kernels"] == 0


def test_every_kernel_names_its_gpu_rule(mlp_artifact: Path) -> None:
    manifest = open_artifact(mlp_artifact).manifest
    counts = manifest["schedules"]
    # "tuned": a kernel that took its record in the shipped sm_90 database (the MLP's two GEMMs since 2026-12-04)
    assert counts and set(counts) <= {name for name, _ in cuda.gpu_rules()} | {"tuned"}
    assert counts.get("tuned", 0) == manifest["tuning"]["applied"]
