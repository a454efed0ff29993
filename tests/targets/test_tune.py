"""``effarch tune`` and ``effarch compile --tuning-db``: records are found, applied only where they beat
our schedules, survive Ctrl-C, and can be measured through an RPC tracker.

The tunes are real (MetaSchedule builds and times candidates) but tiny: the MLP, 8 candidates a round.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tvm
import tvm_ffi

from compiler.driver import load_model, optimize, pipeline_for
from targets.base import get_target
from targets.schedules import ScheduleReport
from targets.schedules.pipeline import cpu_pipeline
from targets.tuning import TunedSchedules, TuningDatabase, fused_module
from targets.tuning.kernels import model_kernels
from tests.arm.conftest import free_port

MODEL = "mlp"


def _effarch(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "compiler.cli", *argv], capture_output=True, text=True,
                          timeout=timeout)


def _tune_argv(db: Path, trials: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "compiler.cli", "tune", MODEL, "--db", str(db), "--trials", str(trials),
            "--chunk", "8", *extra]


def _index(db: Path) -> tuple[Path, dict]:
    (folder,) = [p for p in db.iterdir() if p.is_dir()]
    return folder, json.loads((folder / "kernels.json").read_text())


@pytest.fixture(scope="module")
def tuned_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database made by a tune that was interrupted with Ctrl-C after its first round, then resumed."""
    db = tmp_path_factory.mktemp("tune") / "db"
    proc = subprocess.Popen(_tune_argv(db, 16), stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, as a terminal's Ctrl-C reaches
    assert proc.stderr is not None
    for line in proc.stderr:
        if "8/16 trials" in line:
            os.killpg(proc.pid, signal.SIGINT)
            break
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "run the same command again" in err, err
    _, index = _index(db)
    assert sum(k["trials"] for k in index["kernels"].values()) == 8
    resumed = subprocess.run(_tune_argv(db, 16), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "16/16 trials" in resumed.stderr and "(8 trials this run)" in resumed.stdout, resumed.stdout
    return db


def test_interrupted_tune_resumes_where_it_stopped(tuned_db: Path) -> None:
    folder, index = _index(tuned_db)
    kernels = index["kernels"].values()
    assert sum(k["trials"] for k in kernels) == 16
    assert all(k["own_ms"] and k["own_ms"] > 0 for k in kernels), index  # our schedules timed, every kernel
    assert any(k["tuned_ms"] for k in kernels)
    records = (folder / "database_tuning_record.json").read_text().splitlines()
    assert len(records) >= 8


def _kernels_and_target() -> tuple[list, tvm.target.Target]:
    g, _ = optimize(load_model(f"zoo:{MODEL}").graph, pipeline_for(2, None))
    mod, tvm_target = fused_module(g, "x86", None)
    return model_kernels(mod), tvm_target


def _set_own_ms(db: Path, value: float) -> None:
    """Pretend our schedules measured ``value`` ms (to steer which side the build must pick)."""
    folder, index = _index(db)
    for entry in index["kernels"].values():
        if entry["tuned_ms"]:
            entry["own_ms"] = value
    (folder / "kernels.json").write_text(json.dumps(index))


def test_tuned_records_are_really_applied(tuned_db: Path, tmp_path: Path) -> None:
    db = tmp_path / "db"
    subprocess.run(["cp", "-r", str(tuned_db), str(db)], check=True)
    _set_own_ms(db, 1e9)  # every tuned kernel "beats" ours
    kernels, tvm_target = _kernels_and_target()
    g, _ = optimize(load_model(f"zoo:{MODEL}").graph, pipeline_for(2, None))
    from targets.build import lowering_options
    from targets.lowering.to_relax import lower
    from targets.x86 import TARGET

    tuned = TunedSchedules(db, tvm_target, "x86")
    report = ScheduleReport()
    mod = lower(g, **lowering_options(TARGET, None, 2)).mod
    with tvm_target:
        built = cpu_pipeline(tvm_target, report=report, stop_after_schedules=True, tuned=tuned)(mod)
    assert tuned.result.applied, tuned.result
    store = TuningDatabase(db, tvm_target, "x86")
    for name in tuned.result.applied:
        assert report.rules[name] == "tuned"
        kernel = next(k for k in kernels if k.name == name)
        expected = store.tuned_function(kernel)
        assert expected is not None, name
        assert tvm_ffi.structural_equal(built[name].body, expected.body), name  # the record's schedule, not ours
    out = tmp_path / "m.effarch"
    proc = _effarch("-v", "compile", MODEL, "--tuning-db", str(db), "-o", str(out), "--verify")
    assert proc.returncode == 0, proc.stderr
    assert "scheduled by tuned" in proc.stderr
    manifest = json.loads(subprocess.run(["unzip", "-p", str(out), "manifest.json"], capture_output=True,
                                         text=True, check=True).stdout)
    assert manifest["tuning"]["applied"] == len(tuned.result.applied)
    assert manifest["schedules"]["tuned"] == len(tuned.result.applied)


def test_our_faster_schedule_is_kept(tuned_db: Path, tmp_path: Path) -> None:
    db = tmp_path / "db"
    subprocess.run(["cp", "-r", str(tuned_db), str(db)], check=True)
    _set_own_ms(db, 1e-9)  # ours "beats" every tuned kernel
    out = tmp_path / "m.effarch"
    proc = _effarch("-v", "compile", MODEL, "--tuning-db", str(db), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "scheduled by tuned" not in proc.stderr
    assert "0 kernels tuned" in proc.stderr and "kept our faster schedule" in proc.stderr


def test_database_of_another_model_applies_nothing_and_says_so(tuned_db: Path, tmp_path: Path) -> None:
    proc = _effarch("compile", "digits_cnn", "--tuning-db", str(tuned_db), "-o", str(tmp_path / "d.effarch"))
    assert proc.returncode == 0, proc.stderr
    assert "holds no record for this model's kernels" in proc.stderr and "nothing was applied" in proc.stderr


def test_database_of_another_cpu_applies_nothing_and_names_what_it_holds(tuned_db: Path, tmp_path: Path) -> None:
    proc = _effarch("compile", MODEL, "--cpu", "sandybridge", "--tuning-db", str(tuned_db), "-o",
                    str(tmp_path / "m.effarch"))
    assert proc.returncode == 0, proc.stderr
    folder, _ = _index(tuned_db)
    assert "holds no record" in proc.stderr and f"it has records for: {folder.name}" in proc.stderr
    assert [p.name for p in tuned_db.iterdir()] == [folder.name]  # compiling created nothing in the database


@pytest.mark.parametrize(("argv", "message"), [
    (["compile", MODEL, "--tuning-db", "/nonexistent/db", "-o", "{out}"], "tuning database '/nonexistent/db' "
                                                                          "does not exist"),
    (["compile", MODEL, "-O1", "--tuning-db", "{tmp}", "-o", "{out}"], "--tuning-db needs -O2"),
    (["tune", MODEL, "--db", "{tmp}/db", "--target", "riscv"], "unknown target 'riscv'"),
    (["tune", "--db", "{tmp}/db", "--target", "cuda"], "holds no saved kernels; give a model"),
    (["tune", "--db", "{tmp}/db"], "effarch tune --target x86 needs a model"),
    (["tune", MODEL, "--db", "{tmp}/db", "--rpc", "rpc://127.0.0.1:9"], "tuning measures through a tracker"),
    (["tune", MODEL, "--db", "{tmp}/db", "--trials", "0"], "--trials and --chunk must be at least 1"),
])
def test_bad_tuning_options_fail_in_one_line(tmp_path: Path, argv: list[str], message: str) -> None:
    out = tmp_path / "m.effarch"
    proc = _effarch(*[a.format(tmp=tmp_path, out=out) for a in argv])
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("effarch: error:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_rpc_option_parses_to_the_tracker_address() -> None:
    from targets.remote import DeviceAddress
    from targets.tuning.measure import parse_rpc

    assert parse_rpc(None) is None
    assert parse_rpc("tracker://board.lan:9190/rasp4") == DeviceAddress("tracker", "board.lan", 9190, "rasp4")


def test_time_budget_and_durations() -> None:
    from compiler.cli.commands.tune import parse_duration

    assert parse_duration("90s") == 90 and parse_duration("20m") == 1200 and parse_duration("1.5h") == 5400
    assert parse_duration("45") == 45
    with pytest.raises(Exception, match="bad duration"):
        parse_duration("ten minutes")


@pytest.fixture
def x86_behind_tracker() -> Iterator[str]:
    """A tracker and one RPC server of this machine registered under key ``x86-test``."""
    from tvm import rpc
    from tvm.rpc.tracker import Tracker

    tracker = Tracker(host="127.0.0.1", port=free_port(), port_end=65535, silent=True)
    server = rpc.Server(host="127.0.0.1", port=free_port(), port_end=65535, key="x86-test",
                        tracker_addr=("127.0.0.1", int(tracker.port)), silent=True)
    deadline = time.monotonic() + 30
    while "x86-test" not in str(rpc.connect_tracker("127.0.0.1", int(tracker.port)).summary()):
        assert time.monotonic() < deadline, "RPC server did not register with the tracker"
        time.sleep(0.5)
    yield f"tracker://127.0.0.1:{int(tracker.port)}/x86-test"
    server.terminate()
    tracker.terminate()


def test_tune_measures_through_an_rpc_tracker(tmp_path: Path, x86_behind_tracker: str) -> None:
    db = tmp_path / "db"
    proc = subprocess.run(_tune_argv(db, 8, "--rpc", x86_behind_tracker), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    _, index = _index(db)
    assert all(k["own_ms"] for k in index["kernels"].values())  # ours timed on the device too
    assert sum(k["trials"] for k in index["kernels"].values()) == 8
    assert any(k["tuned_ms"] for k in index["kernels"].values())
    wrong_key = x86_behind_tracker.rsplit("/", 1)[0] + "/no-such-device"
    failed = _effarch("tune", MODEL, "--db", str(tmp_path / "db2"), "--trials", "8", "--rpc", wrong_key,
                      timeout=300)
    assert failed.returncode == 1 and "no-such-device" in failed.stderr, failed.stderr


def test_time_budget_stops_the_tune(tuned_db: Path, tmp_path: Path) -> None:
    db = tmp_path / "db"
    subprocess.run(["cp", "-r", str(tuned_db), str(db)], check=True)
    proc = subprocess.run(_tune_argv(db, 32, "--time-budget", "0.1s"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "stopped early (time budget of 0.1 s spent)" in proc.stderr
    assert "(0 trials this run)" in proc.stdout
    _, index = _index(db)
    assert sum(k["trials"] for k in index["kernels"].values()) == 16  # nothing spent past the budget


@pytest.mark.skipif(not get_target("x86").bf16_kernel(None),
                    reason="this CPU has no AVX512-BF16: x86 --precision bf16 is refused here")
def test_bf16_tune_times_our_bf16_kernels(tmp_path: Path) -> None:
    """Our bf16 kernels (AMX tiles on an AMX CPU) are timed in the runner's processes too: they need
    the tile state the artifact's loader asks Linux for, or the first tile instruction kills them."""
    db = tmp_path / "db"
    proc = subprocess.run(_tune_argv(db, 8, "--precision", "bf16", "--time-budget", "1s"), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "could not time" not in proc.stderr, proc.stderr
    _, index = _index(db)
    assert index["kernels"] and all(k["own_ms"] is not None for k in index["kernels"].values()), index
