"""Printer and parser: exact round trips, every attribute kind, constants, errors, speed."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from compiler.ir import DType, Graph, Provenance, TensorType
from compiler.ir.parser import ParseError, parse_graph
from compiler.ir.printer import constant_digest, print_graph

F32 = DType.F32


def roundtrip(g: Graph) -> str:
    text = print_graph(g)
    assert print_graph(parse_graph(text)) == text
    return text


def rich_graph() -> Graph:
    g = Graph("main")
    g.metadata.update({"producer": "effarch", "multi word": " padded\nvalue", "quote": '"x'})
    x = g.add_input("x", TensorType(F32, (1, 3, 8, 8)))
    ids = g.add_input("a b", TensorType(DType.I64, ("batch", None, 128)))
    anyrank = g.add_input("onnx::Foo_1:", TensorType(DType.F16, None))
    w = g.add_constant("w", np.arange(4 * 3 * 3 * 3, dtype=np.float32).reshape(4, 3, 3, 3))
    b = g.add_constant("b", np.array([0.5, -1.25, np.inf, np.nan], dtype=np.float32))
    mask = g.add_constant("mask", np.array([[True, False]]))
    scalar = g.add_constant("s", np.array(7, dtype=np.int64))
    conv = g.make_node("Conv", [x, w, b], {"pads": [1, 1, 1, 1], "group": 1, "dilations": [1, 1]},
                       types=[TensorType(F32, (1, 4, 8, 8))], name="layer1.conv",
                       output_names=["y"])
    attrs = {
        "i": -3, "f": 1e-05, "nan": math.nan, "ninf": -math.inf, "big": 1.5e300, "whole": 2.0,
        "s": 'quote " and \\ and ü', "ints": [1, -2], "floats": [0.1, 2.0], "strs": ["a", "b,c"],
        "empty": [], "t": np.array([[1.5, -0.0]], dtype=np.float32), "ti": np.array([3], dtype=np.int64),
        "t0": np.array(2.5, dtype=np.float64),
    }
    t = TensorType(F32, (1, 2, 8, 8))
    split = g.make_node("Split", [conv.outputs[0], None], attrs, num_outputs=2, types=[t, None],
                        domain="com.effarch", output_names=["_", "part 2"],
                        provenance=Provenance("layer2", ("fuse:conv-bn", "dce:x"), ("a", "b")))
    g.make_node("Add", [split.outputs[0], anyrank], name="", provenance=Provenance("p <not> {odd}"),
                types=[t], output_names=["sum"])
    g.make_node("Where", [mask, ids, scalar], types=[TensorType(DType.I64, ("batch", None, 128))],
                name="where_7", provenance=Provenance("", ("only:rewrite",)))
    g.make_node("Weird op", [], {"attr key": 1}, num_outputs=0, domain="dom:ain")
    g.outputs = [split.outputs[1], g.nodes[2].outputs[0], x]
    return g


def test_rich_graph_round_trips_and_reads_as_documented() -> None:
    text = roundtrip(rich_graph())
    lines = text.splitlines()
    assert lines[0] == "# producer: effarch"
    assert '%"a b": i64[batch,?,128]' in text and "%onnx::Foo_1:: f16[*]" in text
    assert "%w = const f32[4,3,3,3] @" in text
    assert "%b = const f32[4] [0.5, -1.25, inf, nan]" in text
    assert "%mask = const bool[1,2] [true, false]" in text and "%s = const i64[] [7]" in text
    assert ("%y = Conv(%x, %w, %b) {dilations=[1,1], group=1, pads=[1,1,1,1]} : f32[1,4,8,8]"
            "  # layer1.conv") in text
    assert '%"_", %"part 2" = com.effarch::Split(%y, _) {big=1.5e+300' in text
    assert "t=tensor<f32[1,2]>[1.5, -0.0]" in text and "t0=tensor<f64[]>[2.5]" in text
    assert "empty=[], f=1e-05" in text and "ninf=-inf" in text and 'strs=["a","b,c"]' in text
    assert ': f32[1,2,8,8], ? name=""  # layer2 <fuse:conv-bn> <dce:x> {a,b}' in text
    assert '#= ["p <not> {odd}", [], []]' in text
    assert 'name="where_7"  # <only:rewrite>' in text
    assert '  "Weird op"() {"attr key"=1} name=""' not in text  # the domain is part of the op
    assert '"dom:ain"::"Weird op"() {"attr key"=1}' in text
    assert lines[-1] == "}" and text.endswith("}\n")


def test_parsed_graph_has_the_same_structure_and_values() -> None:
    g = rich_graph()
    p = parse_graph(print_graph(g), {"w": g.constants["w"].const})  # type: ignore[dict-item]
    assert p.metadata == g.metadata and p.name == g.name
    assert [v.name for v in p.inputs] == [v.name for v in g.inputs]
    assert [v.type for v in p.values()] == [v.type for v in g.values()]
    assert [v.name for v in p.outputs] == ["part 2", "sum", "x"] and p.outputs[2] is p.inputs[0]
    for a, b in zip(g.nodes, p.nodes, strict=True):
        assert (a.op, a.domain, a.name, a.provenance) == (b.op, b.domain, b.name, b.provenance)
        assert [None if v is None else v.name for v in a.inputs] == \
            [None if v is None else v.name for v in b.inputs]
        assert b.graph is p
    split = p.nodes[1]
    assert split.attrs["ints"] == [1, -2] and split.attrs["empty"] == [] and split.attrs["i"] == -3
    assert math.isnan(split.attrs["nan"]) and split.attrs["big"] == 1.5e300
    assert isinstance(split.attrs["whole"], float)
    assert split.attrs["t"].dtype == np.float32 and np.signbit(split.attrs["t"][0, 1])
    assert split.attrs["t0"].shape == () and split.attrs["ti"].dtype == np.int64
    assert p.constants["w"].const is g.constants["w"].const
    np.testing.assert_array_equal(p.constants["b"].const, g.constants["b"].const)  # type: ignore[arg-type]
    assert p.constants["mask"].const.dtype == np.bool_  # type: ignore[union-attr]
    assert p.nodes[0].outputs[0].uses == [(p.nodes[1], 0)]
    assert p.fresh_name("y") != "y"  # parsed names are reserved in the graph


def test_digest_constant_without_payload_keeps_the_digest() -> None:
    g = rich_graph()
    p = parse_graph(print_graph(g))
    w = p.constants["w"]
    assert w.const is None and w.const_digest == constant_digest(g.constants["w"].const)  # type: ignore[arg-type]
    assert w.type == TensorType(F32, (4, 3, 3, 3)) and w.is_constant


def test_digest_mismatch_is_an_error() -> None:
    with pytest.raises(ParseError, match=r"line 5, col \d+: expected a payload for %w"):
        parse_graph(print_graph(rich_graph()), {"w": np.zeros((4, 3, 3, 3), np.float32)})


def test_digest_depends_on_dtype_shape_and_bytes_and_follows_new_payloads() -> None:
    a = np.zeros(20, np.float32)
    digests = {constant_digest(a), constant_digest(a.reshape(4, 5)), constant_digest(a.view(np.int32)),
               constant_digest(np.ones(20, np.float32))}
    assert len(digests) == 4
    g = Graph()
    v = g.add_constant("c", a)
    assert f"@{constant_digest(a)}" in print_graph(g) and v.const_digest == constant_digest(a)
    v.const = np.ones(20, np.float32)  # a new payload must not print the old digest
    assert f"@{constant_digest(v.const)}" in print_graph(g)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, "bfloat16"])
def test_inline_floats_are_bit_exact(dtype: object) -> None:
    import ml_dtypes

    np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    for _ in range(20):
        bits = rng.integers(0, 2 ** (8 * np_dtype.itemsize), size=16, dtype=np.uint64)
        raw = bits.astype(f"u{np_dtype.itemsize}").view(np_dtype)
        raw = raw[~np.isnan(raw.astype(np.float64))]  # NaN payloads are not kept, only NaN
        g = Graph()
        g.add_constant("c", raw)
        parsed = parse_graph(roundtrip(g)).constants["c"].const
        assert parsed is not None and parsed.dtype == np_dtype
        assert parsed.tobytes() == raw.tobytes()


def test_float_attributes_are_bit_exact() -> None:
    rng = np.random.default_rng(1)
    values = [float(x) for x in rng.integers(0, 2**63, size=200).view(np.float64) if not math.isnan(x)]
    g = Graph()
    x = g.add_input("x", TensorType(F32, (1,)))
    g.make_node("Custom", [x], {"v": values, "one": values[0]}, domain="d", types=[None])
    parsed = parse_graph(roundtrip(g)).nodes[0].attrs
    assert parsed["v"] == values and parsed["one"] == values[0]


H = "graph g(%x: f32[1]) -> () {\n"


@pytest.mark.parametrize(("text", "message"), [
    ("graph g() -> () {\n", r"line 2, col 1: expected '}' closing the graph"),
    ("graf g() -> () {\n}\n", r"line 1, col 1: expected 'graph', found 'graf"),
    ("graph g(%x f32[1]) -> () {\n}\n", r"line 1, col 12: expected ':'"),
    ("graph g(%x: q8[1]) -> () {\n}\n", r"line 1, col 13: expected a dtype \(unknown dtype 'q8'"),
    ("graph g() -> (%y) {\n}\n", r"line 1, col 17: value %y is used but never defined"),
    (H + "  %y = Relu(%x : f32[1]\n}\n", r"line 2, col 16: expected ',', found ': f32"),
    (H + "  %x = Relu(%x) : f32[1]\n}\n", r"line 2, .*%x is already defined"),
    ("graph g() -> () {\n  %c = const f32[2] [1.0]\n}\n", r"line 2, col 21: expected 2 elements"),
    ("graph g() -> () {\n  %c = const f32[1] [x]\n}\n", r"line 2, .*expected a number, true or false"),
    ("graph g() -> () {\n  %c = const f32[1] @12\n}\n", r"line 2, col 21: expected '\[' elements or '@'"),
    (H + "  %y = Relu(%x) {a=[1,} : f32[1]\n}\n", r"line 2, col 23: expected an attr"),
    (H + "  %y = Relu(%x) : f32[1] extra\n}\n", r"line 2, col 26: expected end of line"),
    ("graph g() -> () {\n}\n}\n", r"line 3, col 1: expected end of text"),
])
def test_errors_say_where_and_what_was_expected(text: str, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        parse_graph(text)


def test_forward_references_comments_and_blank_lines_are_accepted() -> None:
    g = parse_graph("graph g(%x: f32[2]) -> (%z) {\n\n  # a comment\n  %z = Neg(%y) : f32[2]\n"
                    "  %y = Relu(%x) : f32[2]\n}\n")
    assert [n.op for n in g.nodes] == ["Neg", "Relu"] and g.nodes[0].inputs[0] is g.nodes[1].outputs[0]


def chain_text(n: int) -> str:
    g = Graph()
    v = g.add_input("x", TensorType(F32, ("batch", 64)))
    w = g.add_constant("w", np.ones((64, 64), np.float32))
    for i in range(n):
        op = ("MatMul", "Relu", "Add")[i % 3]
        ins = [v, w] if op != "Relu" else [v]
        attrs = {"alpha": 0.5, "axes": [0, 1]} if op == "Add" else {}
        v = g.make_node(op, ins, attrs, types=[TensorType(F32, ("batch", 64))],
                        name=f"layers.{i}.{op.lower()}").outputs[0]
    g.outputs = [v]
    return print_graph(g)


def test_parsing_5000_nodes_is_fast() -> None:
    text = chain_text(5000)
    start = time.perf_counter()
    g = parse_graph(text)
    elapsed = time.perf_counter() - start
    assert len(g.nodes) == 5000 and print_graph(g) == text
    assert elapsed < 1.5, f"parsing 5,000 nodes took {elapsed:.2f}s"
