"""CUDA: attention as one kernel (``targets.attention_fusion``, ``targets.attention_kernel``).

Checked without a GPU: which graphs the pass fuses and which it leaves, the index maps it reads q, k and v
through (against numpy's reshape / slice / transpose), and the kernel's machine code. Its numbers are
checked on the H200 (``tools/gpu_check.py``: every zoo transformer against PyTorch's float32 output)."""

from __future__ import annotations

import itertools
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tvm
from tvm import relax, sym, tirx
from tvm.relax import op as R

from compiler.driver import compile_model, load_model
from targets import attention_kernel as ak
from targets import cuda
from targets.artifact import open_artifact
from targets.attention_fusion import contiguous, find_attention, fuse_attention, layout_chain
from targets.relax_match import Bindings
from tests.targets.test_cuda_cast_fusion import ARCH, cuda_target, launches, zoo_module

B, S, HEADS, HEAD = 2, 32, 4, 16
D = HEADS * HEAD


def _heads_minilm(bb: relax.BlockBuilder, qkv: relax.Expr, i: int, axes: list[int], s: int = S) -> relax.Expr:
    """MiniLM's head split: a slice of the last axis, a reshape, a transpose."""
    part = bb.emit(R.strided_slice(qkv, axes=[2], begin=[i * D], end=[(i + 1) * D]))
    return bb.emit(R.permute_dims(bb.emit(R.reshape(part, (B, s, HEADS, HEAD))), axes))


def _emit_attention(bb: relax.BlockBuilder, qkv: relax.Expr, mask: relax.Expr, dtype: str, skv: int,
                    axis: int = -1) -> tuple[relax.Expr, relax.Expr]:
    """(the merged heads, the scores) of one attention over ``qkv``."""
    wide = dtype == "bfloat16"  # bfloat16 products accumulate in float32, then cast
    q, k_t, v = (_heads_minilm(bb, qkv, i, axes, skv)
                 for i, axes in enumerate(([0, 2, 1, 3], [0, 2, 3, 1], [0, 2, 1, 3])))

    def product(x: relax.Expr, y: relax.Expr) -> relax.Expr:
        if wide:
            return bb.emit(R.astype(bb.emit(R.matmul(x, y, out_dtype="float32")), dtype))
        return bb.emit(R.matmul(x, y, out_dtype=dtype))

    scores = product(q, k_t)
    scaled = bb.emit(R.multiply(scores, bb.emit(R.astype(relax.const(0.25, "float32"), dtype))))
    masked = bb.emit(R.add(scaled, mask))
    probs = bb.emit(R.astype(bb.emit(R.nn.softmax(bb.emit(R.astype(masked, "float32")), axis=axis)), dtype))
    heads = bb.emit(R.permute_dims(product(probs, v), [0, 2, 1, 3]))
    return bb.emit(R.reshape(heads, (B, skv, D))), scores


def attention(dtype: str = "float16", *, skv: int = S, scores_out: bool = False, axis: int = -1) -> tvm.IRModule:
    """A transformer's attention as ``mixed_precision`` leaves it: one QKV tensor split into heads, the
    scores scaled and masked in ``dtype``, softmax in float32, the heads merged after the product."""
    qkv = relax.Var("qkv", relax.TensorType((B, skv, 3 * D), dtype))
    mask = relax.Var("mask", relax.TensorType((B, 1, 1, skv), dtype))
    bb = relax.BlockBuilder()
    with bb.function("main", [qkv, mask], attrs={"num_input": 2}):
        with bb.dataflow():
            y, scores = _emit_attention(bb, qkv, mask, dtype, skv, axis)
            out = bb.emit_output(relax.Tuple([y, scores]) if scores_out else y)
        bb.emit_func_output(out)
    return bb.get()


def test_attentions_of_two_sizes_get_a_kernel_each() -> None:
    """Two sequence lengths, two kernels, each with its own symbol; the same size twice shares one."""
    ins = [relax.Var(f"qkv{i}", relax.TensorType((B, n, 3 * D), "float16")) for i, n in enumerate((S, 2 * S, S))]
    masks = [relax.Var(f"mask{i}", relax.TensorType((B, 1, 1, n), "float16")) for i, n in enumerate((S, 2 * S, S))]
    bb = relax.BlockBuilder()
    with bb.function("main", [*ins, *masks]):
        with bb.dataflow():
            ys = [_emit_attention(bb, x, m, "float16", n)[0] for x, m, n in zip(ins, masks, (S, 2 * S, S), strict=True)]
            out = bb.emit_output(relax.Tuple(ys))
        bb.emit_func_output(out)
    after = _fused(bb.get())
    assert launches(after) == ["fused_attention", "fused_attention_1", "fused_attention"]
    assert [str(after[n].attrs["global_symbol"]) for n in ("fused_attention", "fused_attention_1")] == [
        "fused_attention", "fused_attention_1"]


def _fused(mod: tvm.IRModule) -> tvm.IRModule:
    with cuda_target():
        return fuse_attention()(mod)


def _ops(mod: tvm.IRModule) -> list[str]:
    names: list[str] = []

    def visit(e: Any) -> None:
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op):
            names.append(e.op.name)

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return names


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_attention_becomes_one_kernel(dtype: str) -> None:
    after = _fused(attention(dtype))
    relax.analysis.well_formed(after)  # raises on a malformed module
    assert launches(after) == ["fused_attention"]
    ops = _ops(after)
    # the head split, both products, the scale, mask and softmax and the head merge are gone; what is
    # left: the scale constant's cast (an input) and the output's reshape (a view)
    assert sorted(ops) == ["relax.astype", "relax.call_tir", "relax.reshape"], ops
    kernel = after["fused_attention"]
    assert kernel.attrs["tirx.is_scheduled"]
    # inputs: the QKV tensor once (q, k and v read through their index maps), the scale, the mask
    assert [tuple(int(d) for d in p.ty.shape) for p in kernel.params] == [
        (B, S, 3 * D), (), (B, 1, 1, S), (B, S, HEADS, HEAD)]


@pytest.mark.parametrize("case", [{"dtype": "float32"}, {"scores_out": True}, {"axis": 2}, {"skv": 256}])
def test_what_stays_unfused(case: dict[str, Any]) -> None:
    """float32 (CUDA cores; nothing fused), scores another binding reads, a softmax over the queries,
    more keys than a softmax lane holds in registers."""
    mod = attention(**case)
    assert launches(_fused(mod)) == [] and "relax.nn.softmax" in _ops(_fused(mod))


def test_zoo_transformers_fuse_every_layer() -> None:
    assert len(find_attention(zoo_module("gpt", "fp16")["main"])) == 4
    assert len(find_attention(zoo_module("gpt", "bf16")["main"])) == 4


def _evaluate(exprs: list[Any]) -> tuple[int, ...]:
    analyzer = sym.Analyzer()
    return tuple(int(analyzer.simplify(e)) for e in exprs)


def _operands(mod: tvm.IRModule) -> tuple[dict[str, relax.Expr], Bindings]:
    graph = Bindings(mod["main"])
    return {str(v.name): v for v in graph.value}, graph


def _chain(graph: Bindings, e: relax.Expr) -> tuple[relax.Expr, ak.IndexFn]:
    chain = layout_chain(graph, e)
    assert chain is not None
    return chain


def _check_chain(mod: tvm.IRModule, numpy_views: dict[str, Any], base_shape: tuple[int, ...]) -> None:
    """Every element of each operand read through ``layout_chain`` equals numpy's view of the base."""
    names, graph = _operands(mod)
    base = np.arange(int(np.prod(base_shape))).reshape(base_shape)
    for name, view in numpy_views.items():
        src, index = _chain(graph, names[name])
        assert tuple(int(d) for d in src.ty.shape) == base_shape
        want = view(base)
        for i in itertools.product(*(range(n) for n in want.shape)):
            got = base[_evaluate(index([tirx.IntImm("int32", x) for x in i]))]
            assert got == want[i], (name, i)


def test_index_maps_match_numpy_minilm_split() -> None:
    mod = attention()
    views = {}
    for i, axes in enumerate(([0, 2, 1, 3], [0, 2, 3, 1], [0, 2, 1, 3])):
        views[["lv2", "lv5", "lv8"][i]] = (
            lambda x, i=i, axes=axes: x[:, :, i * D:(i + 1) * D].reshape(B, S, HEADS, HEAD).transpose(axes))
    _check_chain(mod, views, (B, S, 3 * D))


def test_index_maps_match_numpy_gpt_split() -> None:
    """GPT's split: the projection reshaped to [B, S, 3, H, D], one slice of axis 2 per operand."""
    x = relax.Var("x", relax.TensorType((B, S, 3 * D), "float16"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            view = bb.emit(R.reshape(x, (B, S, 3, HEADS, HEAD)))
            outs = []
            for i in range(3):
                part = bb.emit(R.reshape(bb.emit(R.strided_slice(view, axes=[2], begin=[i], end=[i + 1])),
                                         (B, S, HEADS, HEAD)))
                outs.append(bb.emit(R.permute_dims(part, [0, 2, 1, 3])))
            out = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(out)
    mod = bb.get()
    names, graph = _operands(mod)
    # the shared reshape has three readers: the chains stop there (Relax makes it a view)
    src, _ = _chain(graph, names["lv3"])
    assert str(src.name) == "lv"
    base = np.arange(B * S * 3 * D).reshape(B, S, 3, HEADS, HEAD)
    for name, i in (("lv3", 0), ("lv6", 1), ("lv9", 2)):
        src, index = _chain(graph, names[name])
        want = base[:, :, i].transpose(0, 2, 1, 3)
        for j in itertools.product(*(range(n) for n in want.shape)):
            assert base[_evaluate(index([tirx.IntImm("int32", x) for x in j]))] == want[j]


def test_contiguous_along_the_head_dimension() -> None:
    mod = attention()
    names, graph = _operands(mod)
    src, index = _chain(graph, names["lv2"])
    shape = tuple(int(d) for d in src.ty.shape)
    assert contiguous(shape, index, (B, HEADS, S, HEAD))
    # read across the heads instead (d and the sequence swapped): not a vector
    assert not contiguous(shape, lambda i: index([i[0], i[1], i[3], i[2]]), (B, HEADS, HEAD, S))
    # one element off the 8-element grid: contiguous but not aligned
    assert not contiguous(shape, lambda i: [*index(i)[:-1], index(i)[-1] + 1], (B, HEADS, S, HEAD - 8))


def test_plan_limits() -> None:
    def one(**kw: int) -> ak.Attention:
        sizes = {"batch": 32, "heads": 12, "sq": 32, "skv": 32, "dim": 32, "dim_v": 32, **kw}
        return ak.Attention("float16", sizes["batch"], sizes["heads"], sizes["sq"], sizes["skv"], sizes["dim"],
                            sizes["dim_v"], (), None, None, None, (), (), None)  # type: ignore[arg-type]

    # MiniLM: 2 key / column tiles, one warp each, both 16-row query tiles of a head in one block
    minilm = ak.plan(one())
    assert minilm is not None and (minilm.col_warps, minilm.row_tiles, minilm.blocks) == (2, 2, 32 * 12)
    assert minilm.lanes_per_row == 4
    gpt_b1 = ak.plan(one(batch=1, heads=4, sq=64, skv=64, dim=64, dim_v=64))
    assert gpt_b1 is not None and (gpt_b1.col_warps, gpt_b1.row_tiles, gpt_b1.blocks) == (4, 2, 8)
    odd_rows = ak.plan(one(sq=48, skv=64, dim=64, dim_v=64))  # 48 rows: 16-row tiles
    assert odd_rows is not None and (odd_rows.row_tiles, odd_rows.blocks) == (1, 32 * 12 * 3)
    assert ak.shared_bytes(one(sq=512, skv=64, dim=64, dim_v=64), 32) <= ak.SHARED_LIMIT
    # K, V and the float32 scores of 128 keys at head dim 64 need more than 48 KiB of shared memory
    assert ak.plan(one(sq=128, skv=128, dim=64, dim_v=64)) is None
    assert ak.plan(one(skv=40)) is None and ak.plan(one(skv=256)) is None and ak.plan(one(dim=256)) is None


def _sass(library: bytes, tmp: Path) -> str:
    tool = cuda.find_cuobjdump()
    env = {"PATH": f"{tool.parent}:/usr/bin:/bin"}
    out = []
    for i, fatbin in enumerate(cuda.fatbins_in(library)):
        path = tmp / f"{i}.fatbin"
        path.write_bytes(fatbin)
        out.append(subprocess.run([str(tool), "-sass", str(path)], capture_output=True, text=True, check=True,
                                  env=env).stdout)
    return "\n".join(out)


def test_gpt_library_runs_attention_on_tensor_cores(tmp_path: Path) -> None:
    """zoo GPT in fp16: one fused attention kernel, with HMMA for both products, 16-byte loads of q, k
    and v, and none of the unfused kernels (softmax, the scores GEMM) left."""
    path = tmp_path / "gpt.effarch"
    compile_model(load_model("zoo:gpt"), path, target="cuda", cpu=ARCH, precision="fp16")
    sass = _sass(open_artifact(path).library_bytes(), tmp_path)
    functions = re.split(r"\n\s*Function : ", sass)
    names = [f.split("\n", 1)[0] for f in functions[1:]]
    assert [n for n in names if n.startswith("fused_attention")] == ["fused_attention_kernel"], names
    assert not [n for n in names if "softmax" in n], names
    kernel = next(f for f in functions[1:] if f.startswith("fused_attention"))
    assert kernel.count("HMMA") >= 2 and "LDG.E.128" in kernel
