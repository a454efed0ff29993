"""The compression view of ``effarch diff``: per Conv/MatMul/Gemm of A, what pruning and quantization
made of it in B, in text, JSON (through ONNX files, whose metadata carries the pass notes) and HTML.

B comes from the real passes on a small graph: conv1 (8 channels) -> Relu -> conv2 -> y, and a
batched MatMul of two inputs. prune-channels{ratio=0.5} halves conv1's channels (conv2 reads half as many;
its own output is a graph output, so it keeps its channels), quantize-static makes both convs
int8 and refuses the MatMul, whose weight is not a constant.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from compiler.cli.main import main
from compiler.compression.notes import NOTES_KEY, layer_notes, to_metadata
from compiler.debugging.diff import GraphDiff, diff_graphs
from compiler.debugging.diff.render_html import render_html
from compiler.debugging.diff.render_text import render_text
from compiler.errors import EffarchError
from compiler.ir import DType, Graph, Provenance, TensorType, parse_graph
from tests.debugging.diff.test_diff import BASE

PIPELINE = "prune-channels{ratio=0.5},quantize-static,eliminate-dead-code"


def _t(*shape: int) -> TensorType:
    return TensorType(DType.F32, shape)


def two_convs_and_a_matmul() -> Graph:
    rng = np.random.default_rng(0)
    g = Graph("net")
    x, z, k = g.add_input("x", _t(2, 3, 6, 6)), g.add_input("z", _t(2, 4, 5)), g.add_input("k", _t(2, 5, 3))
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    w1 = g.add_constant("w1", rng.normal(0, 1, (8, 3, 3, 3)).astype(np.float32))
    c1 = g.make_node("Conv", [x, w1], dict(conv), types=[_t(2, 8, 6, 6)], name="conv1",
                     provenance=Provenance("conv1"), output_names=["c1"])
    r = g.make_node("Relu", [c1.outputs[0]], types=[_t(2, 8, 6, 6)], provenance=Provenance("relu"))
    w2 = g.add_constant("w2", rng.normal(0, 1, (4, 8, 3, 3)).astype(np.float32))
    c2 = g.make_node("Conv", [r.outputs[0], w2], dict(conv), types=[_t(2, 4, 6, 6)], name="conv2",
                     provenance=Provenance("conv2"), output_names=["y"])
    mm = g.make_node("MatMul", [z, k], types=[_t(2, 4, 3)], name="mm", provenance=Provenance("mm"), output_names=["m"])
    g.outputs = [c2.outputs[0], mm.outputs[0]]
    return g


def compressed(a: Graph) -> Graph:
    """``a`` through PIPELINE, with the passes' notes in its metadata as ``effarch quantize`` keeps them."""
    import passes  # noqa: F401  (registers the passes)
    from compiler.compression import CompressionData
    from compiler.driver import optimize
    from compiler.numerics.datasets import Dataset

    rng = np.random.default_rng(1)
    samples = {v.name: rng.standard_normal((32, *v.type.static_shape()[1:])).astype(np.float32)  # type: ignore[union-attr]
               for v in a.inputs}
    b, records = optimize(a, PIPELINE, data=CompressionData(calibration=Dataset(samples, None, "random")))
    b.metadata[NOTES_KEY] = to_metadata(layer_notes(records, b))
    return b


@pytest.fixture(scope="module")
def graphs() -> tuple[Graph, Graph]:
    a = two_convs_and_a_matmul()
    return a, compressed(a)


@pytest.fixture(scope="module")
def diff(graphs: tuple[Graph, Graph]) -> GraphDiff:
    return diff_graphs(*graphs, "fp32", "compressed")


def test_each_layer_says_what_it_became(diff: GraphDiff) -> None:
    layers = {c.a.label: c for c in diff.compression}
    assert list(layers) == ["conv1", "conv2", "mm"]
    conv1, conv2, mm = layers["conv1"], layers["conv2"], layers["mm"]
    assert (conv1.scheme, conv1.weight, conv1.activation, conv1.channels) == ("int8", "i8", "u8 calibrated",
                                                                              "out 8 -> 4")
    assert (conv2.scheme, conv2.channels) == ("int8", "in 8 -> 4")
    assert any("8 -> 4 channels" in n for n in conv1.notes)  # prune-channels' own note
    assert any(n.startswith("quantize-static: did: int8") for n in conv2.notes)
    assert any("not pruned" in n and "graph output" in n for n in conv2.notes)
    assert (mm.scheme, mm.weight) == ("float", "f32")
    assert any("quantize-static: skipped: its weight is not a constant" in n for n in mm.notes)


def test_text_lists_the_layers_first(diff: GraphDiff) -> None:
    text = render_text(diff)
    section = text[text.index("compression per Conv/MatMul/Gemm: 1 float, 2 int8, 2 pruned (3)"):]
    assert "# Conv 'conv1' => int8: Conv, weight i8, activation u8 calibrated\n      channels out 8 -> 4" in section
    assert "# MatMul 'mm' => kept float: MatMul\n" in section and "its weight is not a constant" in section


def test_json_through_onnx_files_keeps_the_notes(graphs: tuple[Graph, Graph], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from compiler.frontends.onnx_export import save_onnx

    a, b = save_onnx(graphs[0], tmp_path / "a.onnx"), save_onnx(graphs[1], tmp_path / "b.onnx")
    assert main(["diff", str(a), str(b), "--json"]) == 0
    layers = {c["a"]["label"]: c for c in json.loads(capsys.readouterr().out)["compression"]}
    assert set(layers["conv1"]) == {"a", "b", "scheme", "product", "weight", "activation", "channels", "notes"}
    assert layers["conv1"]["b"]["op"] == "Conv" and layers["conv1"]["channels"] == "out 8 -> 4"
    assert layers["conv2"]["scheme"] == "int8" and layers["conv2"]["channels"] == "in 8 -> 4"
    assert any("its weight is not a constant" in n for n in layers["mm"]["notes"])


def test_html_puts_the_view_on_both_nodes_of_each_layer(graphs: tuple[Graph, Graph], diff: GraphDiff) -> None:
    page = render_html(diff, *graphs)
    data = json.loads(re.search(r'id="diff-data">(.*?)</script>', page, re.S).group(1).replace("<\\/", "</"))  # type: ignore[union-attr]
    assert [c["scheme"] for c in data["diff"]["compression"]] == ["int8", "int8", "float"]
    conv1 = next(c for c in diff.compression if c.a.label == "conv1")
    assert conv1.b is not None
    for side, index in (("a", conv1.a.index), ("b", conv1.b.index)):
        notes = data[side]["info"][f"n{index}"]["notes"]
        assert "compression: Conv 'conv1' => int8: Conv, weight i8, activation u8 calibrated" in notes
        assert "compression: channels out 8 -> 4" in notes


def test_an_uncompressed_diff_has_no_compression_view() -> None:
    base = parse_graph(BASE)
    d = diff_graphs(base, parse_graph(BASE.replace("Sigmoid(", "Tanh(")))
    assert d.compression == [] and "compression" not in render_text(d)


def test_an_artifact_is_refused_with_what_to_diff_instead(tmp_path: Path) -> None:
    from compiler.debugging.diff.load import load_graph

    artifact = tmp_path / "m.effarch"
    artifact.write_bytes(b"PK")
    with pytest.raises(EffarchError, match=r"keeps no graph.*effarch quantize.*--save-stages"):
        load_graph(str(artifact))


def test_html_page_lists_the_layers_and_shows_them_on_a_node(graphs: tuple[Graph, Graph], diff: GraphDiff,
                                                              tmp_path: Path) -> None:
    from compiler.debugging.diff.render_html import write_html
    from tests.debugging.diff.test_html_browser import dump_dom

    conv1 = next(c for c in diff.compression if c.a.label == "conv1")
    assert conv1.b is not None
    page = write_html(diff, *graphs, tmp_path / "diff.html")
    dom = dump_dom(tmp_path, page, f"#select=b:n{conv1.b.index}")
    nav = re.search(r'<nav id="changes">(.*?)</nav>', dom, re.S).group(1)  # type: ignore[union-attr]
    assert "compression (3)" in nav and "conv1: int8, out 8 -&gt; 4" in nav and "mm: float" in nav
    detail = re.sub(r"<[^>]+>", "|", re.search(r'<aside id="detail">(.*?)</aside>', dom, re.S).group(1))  # type: ignore[union-attr]
    assert "compression: Conv 'conv1' =&gt; int8: Conv, weight i8, activation u8 calibrated" in detail
