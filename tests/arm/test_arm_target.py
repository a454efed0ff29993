"""The arm target without a device: every zoo model cross-compiles to an aarch64 ELF library, CPU
features reach the manifest, and bad CPUs or a missing toolchain fail with one clear line."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from compiler import zoo
from compiler.errors import EffarchError
from targets.arm import TARGET, hwcap_names, missing_features
from targets.artifact import read_manifest
from tests.arm.conftest import compile_arm

EM_AARCH64 = 183  # ELF e_machine for AArch64 (the x86-64 value is 62)


def _elf_machine(lib: bytes) -> tuple[int, int]:
    """(EI_CLASS, e_machine) of a little-endian ELF file."""
    assert lib[:4] == b"\x7fELF", "not an ELF file"
    assert lib[5] == 1, "not little-endian"
    return lib[4], int.from_bytes(lib[18:20], "little")


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo.names())
def test_zoo_model_cross_compiles_to_aarch64_library(name: str, tmp_path: Path) -> None:
    _, path = compile_arm(name, "cortex-a72", tmp_path)
    manifest = read_manifest(path)
    with zipfile.ZipFile(path) as z:
        lib = z.read(manifest["members"]["library"]["name"])
    assert _elf_machine(lib) == (2, EM_AARCH64)  # ELFCLASS64, AArch64
    target = manifest["target"]
    assert (target["name"], target["arch"], target["cpu"]) == ("arm", "aarch64", "cortex-a72")
    assert "neon" in target["features"] and "dotprod" not in target["features"]


def test_dotprod_cores_record_and_enable_dotprod() -> None:
    for cpu in ("cortex-a55", "neoverse-n1", "cortex-a76"):
        assert "dotprod" in TARGET.required_features(cpu)
        assert "+dotprod" in TARGET.target_dict(cpu)["mattr"]
    assert "+dotprod" not in TARGET.target_dict("cortex-a72")["mattr"]
    assert "sve" in TARGET.required_features("neoverse-v1")
    assert TARGET.resolve_cpu(None) == "cortex-a72"


def test_unknown_cpu_lists_valid_ones() -> None:
    with pytest.raises(EffarchError, match=r"unknown arm CPU 'cortex-a99'; pass one of: .*cortex-a72"):
        TARGET.resolve_cpu("cortex-a99")


def test_missing_cross_compiler_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no aarch64-linux-gnu-gcc
    with pytest.raises(EffarchError, match="apt-get install gcc-aarch64-linux-gnu") as err:
        TARGET.tvm_target("cortex-a72")  # checked before compiling, not after minutes of it
    assert "\n" not in str(err.value)


def test_hwcap_words_decode_to_kernel_feature_names() -> None:
    # Bits from Linux's arch/arm64 hwcap.h: fp=0 asimd=1 aes=3 crc32=7 asimddp=20 sve=22; i8mm=13 in HWCAP2.
    assert hwcap_names((1 << 0) | (1 << 1) | (1 << 7), 0) == {"fp", "asimd", "crc32"}
    assert hwcap_names(1 << 20 | 1 << 22, 1 << 13) == {"asimddp", "sve", "i8mm"}


def test_missing_features_compares_llvm_names_with_hwcaps() -> None:
    a72_like = {"fp", "asimd", "aes", "pmull", "sha1", "sha2", "crc32", "cpuid"}
    assert missing_features(TARGET.required_features("cortex-a72"), a72_like) == []
    assert "dotprod" in missing_features(TARGET.required_features("neoverse-n1"), a72_like)


def test_aarch64_artifact_refused_on_this_x86_host(tmp_path: Path) -> None:
    from targets.runtime import load_artifact

    _, path = compile_arm("mlp", "cortex-a72", tmp_path)
    with pytest.raises(EffarchError, match="built for aarch64 but this machine is x86_64"):
        load_artifact(path)
