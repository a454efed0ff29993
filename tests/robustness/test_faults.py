"""Faults and determinism, with real processes: a compile killed with SIGKILL at any moment leaves
no artifact and no temporary file, and the next compile succeeds; a run killed while it caches the
library leaves no cache entry; two processes writing the same artifact, or caching the same library,
at once both succeed; two processes compiling the same model give the same bytes."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from compiler.fileio import atomic_write
from targets.artifact import read_manifest
from tests.robustness.processes import KILLED, TIMEOUT_S, argv, cli_env, effarch, take_model

ART = "k.effarch"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return take_model(tmp_path_factory.mktemp("model") / "take.onnx")


@pytest.fixture(scope="module")
def reference(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model compiled once, undisturbed: every other compile must give these bytes."""
    out = tmp_path_factory.mktemp("reference") / ART
    done = effarch("compile", str(model), "-o", str(out), cache=out.parent / "cache")
    assert done.returncode == 0, done.stderr
    return out


# ---- atomic_write, in this process ------------------------------------------------------------------
def test_a_file_being_written_has_no_name(tmp_path: Path) -> None:
    with atomic_write(tmp_path / "f.bin") as f:
        f.write(b"half")
        assert list(tmp_path.iterdir()) == []  # nothing a kill now could leave behind
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"] and (tmp_path / "f.bin").read_bytes() == b"half"


def test_a_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    (tmp_path / "f.bin").write_bytes(b"old")
    with pytest.raises(ValueError), atomic_write(tmp_path / "f.bin") as f:
        f.write(b"new")
        raise ValueError
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"] and (tmp_path / "f.bin").read_bytes() == b"old"


def test_temporaries_of_dead_writers_are_removed_live_ones_kept(tmp_path: Path) -> None:
    orphan = tmp_path / f".f.bin.{_exited_pid()}.0a1b.tmp"
    live = tmp_path / f".f.bin.{os.getpid()}.0a1b.tmp"  # as if another thread of a live writer
    orphan.write_bytes(b"x")
    live.write_bytes(b"x")
    with atomic_write(tmp_path / "f.bin") as f:
        f.write(b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "f.bin"]


def _exited_pid() -> int:
    """The pid of a process that has ended and been waited for: nobody's, for a while."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# ---- SIGKILL ---------------------------------------------------------------------------------------
def _killed_when_it_prints(args: list[str], marker: str, env: dict[str, str]) -> None:
    """Start ``args`` and kill -9 it as soon as its stderr has a line containing ``marker``."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if marker in line:
            proc.kill()
            break
    proc.stderr.close()
    assert proc.wait(timeout=TIMEOUT_S) == KILLED, f"never printed {marker!r}:\n{''.join(seen)}"


def _orphans(folder: Path, name: str) -> list[Path]:
    """Everything in ``folder`` but ``name`` itself, checked to be temporaries of dead writers."""
    others = [p for p in folder.iterdir() if p.name != name]
    for p in others:
        match = re.fullmatch(rf"\.{re.escape(name)}\.(\d+)\.\w+\.tmp", p.name)
        assert match, f"stray file {p.name} next to {name}"
        with pytest.raises(ProcessLookupError):
            os.kill(int(match.group(1)), 0)
    return others


def test_compile_killed_leaves_no_artifact_and_the_next_succeeds(model: Path, reference: Path,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "out" / ART
    out.parent.mkdir()
    args = ["compile", str(model), "-o", str(out)]
    env = cli_env(tmp_path / "cache")
    # kill -9 from outside before any TVM work; then from inside: in the middle of the zip write (the
    # temporary file holds the manifest and the library), and between naming the finished file and
    # renaming it into place. Only the last can leave a file, a temporary of a dead writer.
    _killed_when_it_prints(argv(*args), "effarch: loading", env)
    assert not out.exists() and _orphans(out.parent, ART) == []
    for moment, orphans in [("zip-member:weights.safetensors", 0), (f"rename:{ART}", 1)]:
        killed = subprocess.run(argv(*args, kill_at=moment), capture_output=True, text=True, env=env,
                                timeout=TIMEOUT_S)
        assert killed.returncode == KILLED, f"not killed at {moment}: {killed.stderr}"
        assert not out.exists() and len(_orphans(out.parent, ART)) == orphans, moment
    done = effarch(*args, cache=tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    assert [p.name for p in out.parent.iterdir()] == [ART]  # the orphan is gone too
    assert out.read_bytes() == reference.read_bytes()


def test_run_killed_while_caching_the_library_leaves_no_entry(reference: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    killed = effarch("run", str(reference), cache=cache, kill_at=f"rename:{cache}")
    assert killed.returncode == KILLED, killed.stderr
    library = _library_entry(reference)
    assert not (cache / "lib" / library).exists()
    done = effarch("run", str(reference), cache=cache)
    assert done.returncode == 0, done.stderr
    _assert_only_entry(cache, reference)


def _library_entry(artifact: Path) -> str:
    member = read_manifest(artifact)["members"]["library"]
    return member["sha256"] + Path(member["name"]).suffix


def _assert_only_entry(cache: Path, artifact: Path) -> None:
    entry = _library_entry(artifact)
    assert [p.name for p in (cache / "lib").iterdir()] == [entry]
    assert hashlib.sha256((cache / "lib" / entry).read_bytes()).hexdigest() == entry.split(".")[0]


# ---- two processes at once -------------------------------------------------------------------------
def _together(*commands: list[str], env: dict[str, str]) -> list[subprocess.CompletedProcess[str]]:
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for c in commands]
    results = []
    for c, p in zip(commands, procs, strict=True):
        out, err = p.communicate(timeout=TIMEOUT_S)
        results.append(subprocess.CompletedProcess(c, p.returncode, out, err))
    return results


def test_two_compiles_to_one_path_at_once_give_the_reference_bytes(
        model: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / ART
    command = argv("compile", str(model), "-o", str(out))
    for done in _together(command, command, env=cli_env(tmp_path / "cache")):
        assert done.returncode == 0, done.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name != "cache"] == [ART]
    # Same model, pipeline and target in other processes: the same bytes, not just a valid file.
    assert out.read_bytes() == reference.read_bytes()


def test_two_runs_cache_one_library_at_once(reference: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    outputs = [tmp_path / "a.npz", tmp_path / "b.npz"]
    commands = [argv("run", str(reference), "--outputs", str(o)) for o in outputs]
    for done in _together(*commands, env=cli_env(cache)):
        assert done.returncode == 0, done.stderr
    a, b = (np.load(o) for o in outputs)
    assert a.files == ["y"] and np.array_equal(a["y"], b["y"])
    _assert_only_entry(cache, reference)
