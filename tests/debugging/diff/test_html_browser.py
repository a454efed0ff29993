"""The HTML diff page in a real browser: Debian's headless Chromium loads it from a file:// URL.

``--dump-dom`` prints the DOM after the page's scripts ran, so the drawn SVG nodes, the detail
panel and the page's own error box (``#errors``, fed by ``window.onerror`` and ``console.error``)
can be read; ``--enable-logging=stderr`` also shows every console message on stderr, and the page
writes none when it works.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from compiler.debugging.diff import diff_graphs
from compiler.debugging.diff.render_html import write_html
from compiler.ir import Graph, parse_graph
from tests.debugging.diff.graphs import perturb, random_graph
from tests.debugging.diff.test_diff import BASE, edit

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0", "--window-size=1600,1000"]
CONSOLE = re.compile(r":CONSOLE[:(\d]")

# One of each: Mul fused into the Conv, Relu rewritten into LeakyRelu, Sigmoid removed, Tanh added.
AFTER = edit("  %m = Mul(%c, %s) : f32[1,8,4,4]  # scale\n", "").replace(
    "%c = Conv(%x, %w) {pads=[0,0,0,0]} : f32[1,8,4,4]  # conv",
    "%m = Conv(%x, %w, %s) {pads=[0,0,0,0]} : f32[1,8,4,4]  # conv <fuse:conv-mul> {scale}").replace(
    "Relu(%m)", "LeakyRelu(%m) {alpha=0.1}").replace(
    "%y = Sigmoid(%r) : f32[1,8,4,4]  # out", "%y = Tanh(%r) : f32[1,8,4,4]  # extra").replace(
    "const f32[8,1,1]", "const f32[8]")  # a Conv bias is [C]


def chromium(tmp_path: Path, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing; run tools/install-system-deps.sh to install Debian's chromium")
    profile = tmp_path / f"profile{len(list(tmp_path.glob('profile*')))}"
    return subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *extra, url],
                          capture_output=True, text=True, timeout=120, check=False)


def dump_dom(tmp_path: Path, page: Path, fragment: str = "") -> str:
    run = chromium(tmp_path, page.as_uri() + fragment, "--dump-dom")
    assert run.returncode == 0, run.stderr[-2000:]
    console = [line for line in run.stderr.splitlines() if CONSOLE.search(line)]
    assert not console, f"the page wrote to the console: {console}"
    errors = re.search(r'<div id="errors">(.*?)</div>', run.stdout, re.S)
    assert errors is not None and errors.group(1) == "", f"errors in the page: {errors and errors.group(1)}"
    assert 'data-ready="1"' in run.stdout, "the page's script did not finish"
    return run.stdout


def node_classes(dom: str) -> dict[str, str]:
    """data-id ("a:n0") -> status class of every drawn node."""
    return {m.group(2): m.group(1) for m in re.finditer(r'<g class="node (\w+)[^"]*" data-id="([^"]+)"', dom)}


def make_page(tmp_path: Path, a: Graph, b: Graph, name: str = "diff.html") -> Path:
    return write_html(diff_graphs(a, b, "before.ir", "after.ir"), a, b, tmp_path / name)


def test_highlighted_nodes_are_drawn_and_a_screenshot_is_saved(tmp_path: Path) -> None:
    page = make_page(tmp_path, parse_graph(BASE), parse_graph(AFTER))
    classes = node_classes(dump_dom(tmp_path, page))
    assert classes == {"a:i:x": "input", "a:i:w": "input", "a:n0": "fused", "a:n1": "fused", "a:n2": "rewritten",
                       "a:n3": "removed", "b:i:x": "input", "b:i:w": "input", "b:n0": "fused",
                       "b:n1": "rewritten", "b:n2": "added"}
    shot = tmp_path / "diff.png"
    run = chromium(tmp_path, page.as_uri(), f"--screenshot={shot}")
    assert run.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_a_selected_node_shows_provenance_attributes_and_changes(tmp_path: Path) -> None:
    page = make_page(tmp_path, parse_graph(BASE), parse_graph(AFTER))
    dom = dump_dom(tmp_path, page, "#select=b:n0")
    detail = re.search(r'<aside id="detail">(.*?)</aside>', dom, re.S)
    assert detail is not None
    text = re.sub(r"<[^>]+>", "|", detail.group(1))
    for want in ("Conv 'conv'", "fuse:conv-mul", "scale", "pads = [0,0,0,0]",
                 "fused from Conv 'conv' + Mul 'scale' by fuse:conv-mul"):
        assert want in text, f"{want!r} not in the detail panel: {text}"
    assert 'class="node fused selected" data-id="b:n0"' in dom
    assert 'class="node fused selected" data-id="a:n0"' in dom  # its counterpart is selected too


def test_thousand_node_model_is_collapsed_and_searchable(tmp_path: Path) -> None:
    g = random_graph(1000, seed=3)
    p = perturb(g, 10, seed=4)
    d = diff_graphs(g, p.graph)
    page = write_html(d, g, p.graph, tmp_path / "big.html")
    dom = dump_dom(tmp_path, page, "#q=Exp")
    classes = node_classes(dom)
    drawn = sum(1 for k in classes if k.startswith("a:"))
    assert "fold" in classes.values() and drawn < 1000 / 2  # unchanged runs folded by default
    # Every change is drawn, never folded away.
    assert {k for k, v in classes.items() if v == "removed"} == {f"a:n{r.index}" for r in d.removed}
    assert {k for k, v in classes.items() if v == "added"} == {f"b:n{r.index}" for r in d.added}
    added_exp = sum(1 for r in d.added if r.op == "Exp")
    assert added_exp >= 10 and len(re.findall(r'<g class="node added hit"', dom)) == added_exp
    assert re.search(r'<span id="hits">1 of \d+</span>', dom)
    shot = tmp_path / "big.png"
    assert chromium(tmp_path, page.as_uri() + "#select=b:n500", f"--screenshot={shot}").returncode == 0
    assert shot.stat().st_size > 20_000


def test_errors_in_a_page_are_caught(tmp_path: Path) -> None:
    """The checks above can fail: a page whose script throws is reported."""
    page = make_page(tmp_path, parse_graph(BASE), parse_graph(AFTER))
    broken = tmp_path / "broken.html"
    broken.write_text(page.read_text().replace("start();\n", "start();\nnoSuchFunction();\n"))
    with pytest.raises(AssertionError, match="noSuchFunction"):
        dump_dom(tmp_path, broken)
