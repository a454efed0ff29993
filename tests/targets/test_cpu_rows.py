"""CPU row kernels and attention: reductions along a row in vector partials, attention per row block.

The numbers are checked against numpy in float64 (float32 tolerances: the vector partials sum a
row in a different order than a serial loop); the structure is checked on the scheduled TIR and,
for x86, on the built code (no workspace allocation, exp inlined as vector arithmetic)."""

from __future__ import annotations

import numpy as np
import pytest

from targets.base import get_target
from targets.schedules import machine_of, schedule_kernel
from targets.schedules.row_kernels import EPS, row_kernel

X86 = ("x86", "znver3")  # AVX2: 8 float32 lanes
ARM = ("arm", "cortex-a72")  # NEON: 4 float32 lanes


def _target(where: tuple[str, str]) -> object:
    return get_target(where[0]).tvm_target(where[1])


def _build(func: object, target: object) -> object:
    import tvm

    return tvm.tirx.build(func.with_attr("global_symbol", "k"), target=target)  # type: ignore[attr-defined]


def _run(lib: object, arrays: list[np.ndarray]) -> np.ndarray:
    import tvm

    args = [tvm.runtime.tensor(a.copy(), tvm.cpu()) for a in arrays]
    lib["k"](*args)  # type: ignore[index]
    return args[-1].numpy()


def _vector_partial_blocks(script: str, lanes: int) -> int:
    """How many partial-result ('_rf') update blocks sit under a loop vectorised by ``lanes``."""
    lines = script.splitlines()
    found = 0
    for i, line in enumerate(lines):
        if 'T.sblock("' in line and '_rf_update"' in line:
            above = "\n".join(lines[max(i - 3, 0):i])
            found += any(f"T.vectorized({n})" in above for n in (lanes, f"T.int64({lanes})"))
    return found


@pytest.mark.parametrize("where", [X86, ARM], ids=["x86", "arm"])
def test_layer_norm_sums_rows_in_vector_partials(where: tuple[str, str]) -> None:
    target = _target(where)
    m = machine_of(target)
    func, rule = schedule_kernel(row_kernel("layer_norm", (32, 384)), target, m)
    assert rule == "row-reduction"
    assert _vector_partial_blocks(func.script(), m.lanes()) == 2  # the mean's sum and the variance's


def test_layer_norm_matches_numpy() -> None:
    target = _target(X86)
    func, _ = schedule_kernel(row_kernel("layer_norm", (32, 384)), target, machine_of(target))
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((32, 384)) * 3 + 1).astype(np.float32)
    gamma, beta = rng.standard_normal(384).astype(np.float32), rng.standard_normal(384).astype(np.float32)
    got = _run(_build(func, target), [x, gamma, beta, np.zeros_like(x)])
    x64 = x.astype(np.float64)
    mean = x64.mean(-1, keepdims=True)
    want = (x64 - mean) / np.sqrt(((x64 - mean) ** 2).mean(-1, keepdims=True) + EPS) * gamma + beta
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)  # float32 over a 384-wide row


def _attention(heads: int, seq: int, dim: int) -> object:
    """softmax(Q K^T * scale + mask) V as one kernel, the shape the attention fusion hands the CPU rules."""
    from tvm import te, topi

    q = te.placeholder((1, heads, seq, dim), name="q")
    kt = te.placeholder((1, heads, dim, seq), name="kt")
    mask = te.placeholder((1, 1, 1, seq), name="mask")
    v = te.placeholder((1, heads, seq, dim), name="v")
    k = te.reduce_axis((0, dim), name="k")
    scores = te.compute((1, heads, seq, seq),
                        lambda b, h, i, j: te.sum(q[b, h, i, k] * kt[b, h, k, j], axis=k), name="scores")
    scaled = te.compute(scores.shape, lambda b, h, i, j: scores[b, h, i, j] * (dim ** -0.5) + mask[b, 0, 0, j])
    p = topi.nn.softmax(scaled, axis=-1)
    r = te.reduce_axis((0, seq), name="r")
    out = te.compute((1, heads, seq, dim), lambda b, h, i, d: te.sum(p[b, h, i, r] * v[b, h, r, d], axis=r),
                     name="out")
    return te.create_prim_func([q, kt, mask, v, out])


def test_attention_runs_per_row_block_without_workspace() -> None:
    target = _target(X86)
    m = machine_of(target)
    func, rule = schedule_kernel(_attention(12, 32, 32), target, m)
    assert rule == "stages"
    script = func.script()
    assert script.count("T.parallel(") == 1  # one launch of the thread pool, over (head, row block)
    assert _vector_partial_blocks(script, m.lanes()) == 2  # softmax's max and sum
    assert script.count("T.exp(") == 1  # exp once per score, not again in the normalisation
    ll = _build(func, target).inspect_source("ll")  # type: ignore[attr-defined]
    assert "load ptr, ptr @__TVMBackendAllocWorkspace" not in ll  # intermediates are stack arrays


def test_attention_on_neon_uses_its_vector_width() -> None:
    target = _target(ARM)
    m = machine_of(target)
    func, rule = schedule_kernel(_attention(12, 32, 32), target, m)
    script = func.script()
    assert rule == "stages" and m.lanes() == 4
    assert _vector_partial_blocks(script, 4) == 2 and script.count("T.exp(") == 1
    assert "fmla" in _build(func, target).inspect_source("asm")  # type: ignore[attr-defined]


@pytest.mark.parametrize("heads, seq, dim", [(12, 32, 32), (4, 64, 64), (2, 16, 8), (3, 1, 32)])
def test_attention_matches_numpy(heads: int, seq: int, dim: int) -> None:
    target = _target(X86)
    func, _ = schedule_kernel(_attention(heads, seq, dim), target, machine_of(target))
    rng = np.random.default_rng(1)
    q, kt, v = (rng.standard_normal(s).astype(np.float32) for s in ((1, heads, seq, dim), (1, heads, dim, seq),
                                                                   (1, heads, seq, dim)))
    mask = np.where(np.arange(seq) < max(seq - 5, 1), 0.0, -1e4).astype(np.float32).reshape(1, 1, 1, seq)
    got = _run(_build(func, target), [q, kt, mask, v, np.zeros_like(q)])
    s = q.astype(np.float64) @ kt.astype(np.float64) / np.sqrt(dim) + mask
    p = np.exp(s - s.max(-1, keepdims=True))
    want = (p / p.sum(-1, keepdims=True)) @ v.astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # float32 sums of up to 64 terms


def test_matmul_then_layer_norm_keeps_the_stage_by_stage_schedule() -> None:
    """A kernel that ends in a layer norm, not a contraction, has no row blocks to run: each stage
    is scheduled on its own, its row reductions in vector partials too, and computes the same numbers."""
    from tvm import te, topi

    x = te.placeholder((32, 64), name="x")
    w = te.placeholder((64, 96), name="w")
    gamma, beta = te.placeholder((96,), name="gamma"), te.placeholder((96,), name="beta")
    k = te.reduce_axis((0, 64), name="k")
    y = te.compute((32, 96), lambda i, j: te.sum(x[i, k] * w[k, j], axis=k), name="y")
    out = topi.nn.layer_norm(y, gamma, beta, axis=[1], epsilon=EPS)
    target = _target(X86)
    func, rule = schedule_kernel(te.create_prim_func([x, w, gamma, beta, out]), target, machine_of(target))
    assert rule == "stages"
    assert _vector_partial_blocks(func.script(), 8) >= 1  # the layer norm's sums in vector partials
    rng = np.random.default_rng(2)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in ((32, 64), (64, 96), (96,), (96,))]
    got = _run(_build(func, target), [*arrays, np.zeros((32, 96), np.float32)])
    y64 = arrays[0].astype(np.float64) @ arrays[1]
    mean = y64.mean(-1, keepdims=True)
    want = (y64 - mean) / np.sqrt(((y64 - mean) ** 2).mean(-1, keepdims=True) + EPS) * arrays[2] + arrays[3]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)  # float32 sums of 64 and 96 terms


def test_a_reduction_over_everything_uses_vector_partials() -> None:
    """No rows to spread: the single reduction (a global mean) still runs in vector partials."""
    from tvm import te

    x = te.placeholder((4096,), name="x")
    k = te.reduce_axis((0, 4096), name="k")
    total = te.compute((1,), lambda i: te.sum(x[k], axis=k), name="total")
    mean = te.compute((1,), lambda i: total[i] / 4096.0, name="mean")
    target = _target(X86)
    m = machine_of(target)
    func, rule = schedule_kernel(te.create_prim_func([x, mean]), target, m)
    assert rule == "row-reduction" and _vector_partial_blocks(func.script(), m.lanes()) == 1
    data = np.random.default_rng(3).standard_normal(4096).astype(np.float32)
    got = _run(_build(func, target), [data, np.zeros(1, np.float32)])
    np.testing.assert_allclose(got, [data.astype(np.float64).mean()], rtol=1e-5, atol=1e-6)  # 4096 float32 terms
