"""``effarch diff`` on files of every format, its text (colour only when asked) and its JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from compiler.cli.main import main
from compiler.debugging.diff.load import load_graph
from compiler.errors import EffarchError
from compiler.ir import parse_graph, print_graph
from tests.debugging.diff.test_diff import BASE, edit

AFTER = edit("  %m = Mul(%c, %s) : f32[1,8,4,4]  # scale\n", "").replace(
    "%c = Conv(%x, %w) {pads=[0,0,0,0]} : f32[1,8,4,4]  # conv",
    "%m = Conv(%x, %w, %s) {pads=[0,0,0,0]} : f32[1,8,4,4]  # conv <fuse:conv-mul> {scale}").replace(
    "Sigmoid(%r)", "Tanh(%r)").replace("const f32[8,1,1]", "const f32[8]")  # a Conv bias is [C]


def write_pair(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a.ir", tmp_path / "b.ir"
    a.write_text(BASE)
    b.write_text(AFTER)
    return a, b


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["diff", *map(str, argv)]) == 0
    return capsys.readouterr().out


def test_text_names_every_kind_and_has_no_colour_when_not_a_terminal(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = run(capsys, *write_pair(tmp_path))
    assert "\x1b[" not in out
    assert "1 unchanged, 1 rewritten, 1 fused (from 2 nodes), 0 removed, 0 added" in out
    assert "* Conv 'conv' + Mul 'scale' => Conv 'conv'" in out and "by fuse:conv-mul" in out
    assert "~ Sigmoid 'out' => Tanh 'out'" in out and "op: Sigmoid -> Tanh" in out


def test_colour_on_request(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = run(capsys, *write_pair(tmp_path), "--color")
    assert "\x1b[35m* Conv 'conv'" in out


def test_json_follows_the_documented_schema(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads(run(capsys, *write_pair(tmp_path), "--json"))
    assert doc["schema"] == "effarch.diff/1"
    assert set(doc) == {"schema", "a", "b", "summary", "added", "removed", "rewritten", "fused", "constants",
                        "constants_added", "constants_removed", "matches", "compression"}
    assert doc["summary"]["fused"] == 1 and doc["summary"]["rewritten"] == 1
    [f] = doc["fused"]
    assert [s["label"] for s in f["sources"]] == ["conv", "scale"] and f["rules"] == ["fuse:conv-mul"]
    assert doc["rewritten"][0]["changes"][0] == {"what": "op", "key": "", "before": "Sigmoid", "after": "Tanh"}
    assert set(doc["rewritten"][0]["a"]) == {"index", "op", "label", "outputs", "provenance"}


def test_onnx_files_keep_provenance_through_export(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from compiler.frontends.onnx_export import save_onnx

    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    save_onnx(parse_graph(BASE), a)
    save_onnx(parse_graph(AFTER), b)
    doc = json.loads(run(capsys, a, b, "--json"))
    assert doc["summary"]["fused"] == 1 and doc["fused"][0]["rules"] == ["fuse:conv-mul"]


def test_saved_stages_by_number_and_pass_name(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    import passes  # noqa: F401  (registers the passes)
    from compiler.driver import load_model
    from compiler.pass_manager import PassManager, SaveStagesInstrument

    stages = tmp_path / "stages"
    graph = load_model("zoo:digits_cnn").graph
    count = len(graph.nodes)
    PassManager("fold-constants,eliminate-dead-code", instruments=[SaveStagesInstrument(stages)]).run(graph)
    doc = json.loads(run(capsys, stages / "0", stages / "eliminate-dead-code", "--json"))
    assert doc["summary"]["removed"] >= 1 and doc["summary"]["nodes_a"] == count
    with pytest.raises(EffarchError, match=r"no stage 'fuse' in .*; the saved stages are 00-input, "):
        load_graph(str(stages / "fuse"))
    with pytest.raises(EffarchError, match=r"holds saved stages; name one: .*/N or .*/PASS \(the saved stages"):
        load_graph(str(stages))


def test_pt2_program_against_its_ir_text(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.fc(x))

    pt2 = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(Net().eval(), (torch.randn(2, 4),)), str(pt2))
    graph = load_graph(str(pt2))
    ir = tmp_path / "net.ir"
    ir.write_text(print_graph(graph).replace("Relu(", "Sigmoid("))
    doc = json.loads(run(capsys, pt2, ir, "--json"))
    assert doc["summary"]["rewritten"] == 1 and doc["summary"]["matched"] == len(graph.nodes)
    assert doc["rewritten"][0]["changes"][0]["after"] == "Sigmoid"


def test_unreadable_ir_is_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ir"
    bad.write_text("graph main( {")
    with pytest.raises(EffarchError, match=r"^cannot parse IR text .*bad.ir: .*; is it a file written by effarch\?$"):
        load_graph(str(bad))


def test_html_is_written_whole_and_self_contained(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "report.html"
    text = run(capsys, *write_pair(tmp_path), "--html", out)
    assert "1 fused" in text
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "/*JS*/" not in page and "/*CSS*/" not in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing fetched from a network
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ir", "b.ir", "report.html"]  # no temp file left


def test_html_into_a_missing_folder_is_one_line_error(tmp_path: Path) -> None:
    from compiler.debugging.diff import diff_graphs
    from compiler.debugging.diff.render_html import write_html

    a, b = parse_graph(BASE), parse_graph(AFTER)
    with pytest.raises(EffarchError, match=r"^cannot write .*report.html: .*; check the folder exists"):
        write_html(diff_graphs(a, b), a, b, tmp_path / "nowhere" / "report.html")


def test_colour_by_default_only_on_a_terminal(tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import sys

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert "\x1b[35m* Conv 'conv'" in run(capsys, *write_pair(tmp_path))
    assert "\x1b[" not in run(capsys, *write_pair(tmp_path), "--no-color")
