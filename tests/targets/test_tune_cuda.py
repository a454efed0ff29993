"""CUDA tuning without a GPU here: ``effarch tune --target cuda`` saves the kernels for the GPU machine,
and the tuning database shipped in ``targets/tuning/bundled`` (measured on an H200) is applied by
every sm_90 build exactly where its records beat our rules, and not where they lost or are left out."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tvm import tirx

from compiler.cli.report import manifest_summary
from compiler.driver import load_model, optimize, pipeline_for
from targets.base import get_target
from targets.build import build
from targets.cuda import BUNDLED_TUNING
from targets.tuning import TuningDatabase, fused_module
from targets.tuning.database import KernelEntry
from targets.tuning.kernels import model_kernels, tuning_form, workload_key
from targets.tuning.measure import measuring_device

ARCH = "sm_90"
FOLDER = BUNDLED_TUNING / f"cuda-{ARCH}"
NO_GPU_HERE = measuring_device(get_target("cuda").tvm_target(ARCH)) != ""


def _effarch(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "compiler.cli", *argv], capture_output=True, text=True,
                          timeout=600, check=False)


def _graph(name: str) -> Any:
    graph, _ = optimize(load_model(f"zoo:{name}").graph, pipeline_for(2, None), opt_level=2, target="cuda")
    return graph


def _winners(folder: Path) -> set[str]:
    kernels = json.loads((folder / "kernels.json").read_text())["kernels"]
    return {key for key, e in kernels.items() if KernelEntry(**e).tuned_wins}


@pytest.mark.skipif(not NO_GPU_HERE, reason="a GPU is here: effarch tune would measure instead of saving")
def test_tune_without_the_gpu_saves_the_kernels_for_the_gpu_machine(tmp_path: Path) -> None:
    db = tmp_path / "db"
    first = _effarch("tune", "mlp", "--target", "cuda", "--arch", ARCH, "--db", str(db))
    assert first.returncode == 0, first.stderr
    assert "kernels saved" in first.stderr and f"effarch tune --db {db} --target cuda --arch {ARCH}" in first.stderr
    mod, target = fused_module(_graph("mlp"), "cuda", ARCH)
    expected = {k.key: k.calls for k in model_kernels(mod)}
    saved = TuningDatabase(db, target, "cuda").load_tasks()
    assert {k.key: k.calls for k in saved} == expected
    # nn.Sequential's parameters are named 0.weight, 0.bias: a kernel's parameters must still be C
    # identifiers, since nvcc compiles each kernel alone on the GPU machine
    assert {p.name for k in saved for p in k.func.params} >= {"v0_bias", "v2_bias"}
    assert all(p.name.isidentifier() for k in saved for p in k.func.params)
    again = _effarch("tune", "--db", str(db), "--target", "cuda", "--arch", ARCH)  # no model: the saved kernels
    assert again.returncode == 0, again.stderr
    assert f"{len(expected)} kernels saved" in again.stderr
    empty = _effarch("tune", "--db", str(tmp_path / "none"), "--target", "cuda", "--arch", ARCH)
    assert empty.returncode != 0 and "holds no saved kernels; give a model" in empty.stderr
    assert "Traceback" not in empty.stderr
    (db / f"cuda-{ARCH}" / "tasks.json").write_text('{"format": 1, "kernels": [')  # cut short
    broken = _effarch("tune", "--db", str(db), "--target", "cuda", "--arch", ARCH)
    assert broken.returncode == 1 and "tasks.json is unreadable" in broken.stderr and "save them again" in broken.stderr
    assert "Traceback" not in broken.stderr


@pytest.fixture(scope="module")
def mlp() -> tuple[Any, dict[str, str]]:
    """The MLP's graph and every kernel of its sm_90 fp32 build -> workload key, computed here (its two
    GEMM kernels are among those the 2026-12-04 tune found faster schedules for)."""
    graph = _graph("mlp")
    mod, _ = fused_module(graph, "cuda", ARCH)
    keys = {gv.name_hint: workload_key(tuning_form(f)) for gv, f in mod.functions_items()
            if isinstance(f, tirx.PrimFunc)}
    return graph, keys


def _copy_bundled(tmp: Path) -> tuple[Path, dict[str, Any]]:
    """A copy of the bundled database under ``tmp`` and its index, to edit and write back."""
    db = tmp / "db"
    shutil.copytree(FOLDER, db / FOLDER.name)
    return db, json.loads((db / FOLDER.name / "kernels.json").read_text())


def test_bundled_records_are_applied_where_they_won_against_the_rule_that_schedules_the_kernel_now(
        mlp: tuple[Any, dict[str, str]], tmp_path: Path) -> None:
    graph, keys = mlp
    plain = build(graph, tmp_path / "p.effarch", target="cuda", cpu=ARCH, bundled_tuning=False)
    assert "tuned" not in plain.schedules.values() and "tuning" not in plain.manifest
    rule_now = plain.schedules  # kernel -> the rule that takes it without a database
    index = json.loads((FOLDER / "kernels.json").read_text())["kernels"]
    winners = {name for name, key in keys.items() if key in _winners(FOLDER)}
    assert winners, "the bundled sm_90 database holds no winning record for the MLP's kernels"
    fresh = {name for name in winners if index[keys[name]]["own_rule"] in ("", rule_now[name])}
    result = build(graph, tmp_path / "r.effarch", target="cuda", cpu=ARCH)
    assert {k for k, rule in result.schedules.items() if rule == "tuned"} == fresh
    assert result.manifest["tuning"]["db"] == "bundled"
    assert result.manifest["tuning"]["applied"] == len(fresh)
    assert result.manifest["tuning"]["stale"] == len(winners - fresh)
    assert f"bundled database: {len(fresh)} kernels tuned" in manifest_summary(result.manifest)  # effarch inspect

    # The same records, every one timed against the rule that takes its kernel now: all apply ...
    db, edited = _copy_bundled(tmp_path)
    for name in winners:
        edited["kernels"][keys[name]]["own_rule"] = rule_now[name]
    (db / FOLDER.name / "kernels.json").write_text(json.dumps(edited))
    current = build(graph, tmp_path / "c.effarch", target="cuda", cpu=ARCH, tuning_db=db)
    assert {k for k, rule in current.schedules.items() if rule == "tuned"} == winners
    # ... but one timed against another rule's schedule (ours changed since) and one whose own schedule
    # now measured faster keep our rules.
    stale, lost = sorted(keys[name] for name in winners)[:2]
    edited["kernels"][stale]["own_rule"] = "an-older-rule"
    edited["kernels"][lost]["own_ms"] = edited["kernels"][lost]["tuned_ms"] / 2
    (db / FOLDER.name / "kernels.json").write_text(json.dumps(edited))
    flipped = build(graph, tmp_path / "f.effarch", target="cuda", cpu=ARCH, tuning_db=db)
    now = {k for k, rule in flipped.schedules.items() if rule == "tuned"}
    assert now == {name for name in winners if keys[name] not in (stale, lost)}
    assert flipped.manifest["tuning"]["ours_faster"] >= 1 and flipped.manifest["tuning"]["stale"] >= 1


def test_shipped_database_holds_only_winning_records(tmp_path: Path) -> None:
    target = get_target("cuda").tvm_target(ARCH)
    shipped = TuningDatabase(BUNDLED_TUNING, target, "cuda")
    assert shipped.folder == FOLDER and shipped.records is not None
    records = shipped.records.get_all_tuning_records()
    keys = {workload_key(r.workload.mod["main"]) for r in records}
    assert keys == _winners(FOLDER) and len(records) == len(keys)
    assert shipped.export_winners(tmp_path) == len(keys)  # exporting again keeps them all, and only them


def test_shipping_a_second_tune_merges_by_the_better_time_and_keeps_one_record_per_kernel(tmp_path: Path) -> None:
    target = get_target("cuda").tvm_target(ARCH)
    first = tmp_path / "shipped"
    winners = _winners(FOLDER)
    assert len(winners) >= 2 and TuningDatabase(BUNDLED_TUNING, target, "cuda").export_winners(first) == len(winners)
    worse, other = sorted(winners)[:2]

    def second_tune(edit: Callable[[dict[str, Any]], None]) -> TuningDatabase:
        """A copy of what was shipped, edited as another tune would have left it, shipped over it."""
        second = tmp_path / "second"
        shutil.rmtree(second, ignore_errors=True)
        shutil.copytree(first, second)
        index = second / FOLDER.name / "kernels.json"
        data = json.loads(index.read_text())
        edit(data["kernels"])
        index.write_text(json.dumps(data))
        kept = TuningDatabase(second, target, "cuda").export_winners(first)
        merged = TuningDatabase(first, target, "cuda")
        assert merged.records is not None
        keys = [workload_key(r.workload.mod["main"]) for r in merged.records.get_all_tuning_records()]
        assert kept == len(keys) == len(set(keys))  # one record each
        return merged

    def found_less(kernels: dict[str, Any]) -> None:
        kernels[worse]["tuned_ms"] = kernels[worse]["own_ms"] * 2  # this tune found only a slower schedule
        kernels[other].update(trials=0, tuned_ms=None)  # this tune never reached it

    merged = second_tune(found_less)
    assert merged.entries[worse].tuned_wins and merged.entries[other].tuned_wins  # the better time stays
    assert _winners(first / FOLDER.name) == winners

    def ours_faster(kernels: dict[str, Any]) -> None:
        kernels[other]["own_ms"] = kernels[other]["tuned_ms"] / 2  # our rule got faster since

    merged = second_tune(ours_faster)
    assert not merged.entries[other].tuned_wins and merged.entries[worse].tuned_wins
    assert merged.records is not None
    keys = {workload_key(r.workload.mod["main"]) for r in merged.records.get_all_tuning_records()}
    assert keys == winners - {other}


def test_no_bundled_tuning_option_and_an_arch_without_records() -> None:
    spec = get_target("cuda")
    assert spec.bundled_tuning(ARCH) == BUNDLED_TUNING
    assert spec.bundled_tuning("sm_80") is None  # nothing was measured there: nothing applies
    assert get_target("x86").bundled_tuning("znver4") is None
    help_text = _effarch("compile", "--help").stdout
    assert "--no-bundled-tuning" in help_text


def test_an_entry_knows_the_rule_its_own_time_measured() -> None:
    old = KernelEntry("k", trials=32, own_ms=0.4, tuned_ms=0.1, own_rule="dlight-matmul")
    assert old.measured_against("dlight-matmul") and not old.measured_against("simt-matmul")
    assert KernelEntry("k", own_ms=0.4).measured_against("simt-matmul")  # older than the field: as before
    retimed = old.merged(KernelEntry("k", own_ms=0.03, tuned_ms=0.2, own_rule="simt-matmul"))
    assert (retimed.own_ms, retimed.own_rule, retimed.tuned_ms, retimed.trials) == (0.03, "simt-matmul", 0.1, 32)
    assert not retimed.tuned_wins
    # a record that won by less than MIN_SPEEDUP (within what a kernel timed alone tells of it in the model)
    # keeps our schedule; one that won by more, or had nothing of ours to beat, is taken
    assert not KernelEntry("k", own_ms=0.0086, tuned_ms=0.0084).tuned_wins
    assert KernelEntry("k", own_ms=0.0308, tuned_ms=0.0116).tuned_wins and KernelEntry("k", tuned_ms=1.0).tuned_wins
    untimed = old.merged(KernelEntry("k"))  # a tune that did not time ours keeps the earlier time and its rule
    assert (untimed.own_ms, untimed.own_rule) == (0.4, "dlight-matmul")
