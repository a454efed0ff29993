"""A fused attention kernel for CUDA: the scores GEMM, their epilogue, softmax and the product with V in
one kernel on WMMA tensor cores, written directly in TIR (``targets.attention_fusion`` finds the
pattern in a Relax graph and builds this).

One thread block takes ``row_tiles`` tiles of 16 query rows of one (batch, head) pair (two where the
sequence and shared memory allow: they share the block's copies of K and V), each tile with
``col_warps`` warps splitting the columns of each product between them:

1. The block's rows of Q and all of K and V are copied into shared memory (every load in flight before
   the first store), in 16-byte vectors where the operand's source is contiguous and aligned along the
   head dimension. ``Operand.index`` reads through the head split, so the kernel loads from the fused QKV
   projection's output directly.
2. Warp ``c`` of a row tile multiplies its 16 rows by every ``col_warps``-th 16-key tile of K^T (float32
   accumulators) into shared memory.
3. ``2 * col_warps`` lanes per row apply the graph's epilogue as the unfused graph computes it (the scores
   rounded to the 16-bit type, then the scale and mask steps in that type), take the row's softmax in
   float32 (the lanes combine their maxima and sums by warp shuffles) and store the probabilities in
   the 16-bit type.
4. Warp ``c`` multiplies its rows' probabilities by every ``col_warps``-th 16-column tile of V, and the
   block writes its rows in the output's layout: the head merge after attention is the output's index
   map, not a kernel.

A warp's work is one long chain of dependent steps, so the kernel is as fast as it has warps resident
per SM: splitting the columns across warps took GPT's attention at batch 32 (128 heads of 64 rows) from
10.1 us a launch (a warp per 16 whole rows, 2 warps a block) to 5.5; two row tiles a block to 5.35.

Sizes it takes (``plan``): every edge a multiple of 16, head dims up to 128, up to 128 keys (a softmax
lane holds its keys in registers), and the block's shared memory within 48 KiB. Anything else stays
unfused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import tvm
from tvm import sym, tirx

from targets.kernel_ir import broadcast, when
from targets.schedules.gpu_rules import KERNEL_ATTR

FRAG = 16
WARP = 32
SHARED_LIMIT = 48 * 1024  # shared memory (static and dynamic) a block may use without opting in
MAX_HEAD_DIM = 128
MAX_KEYS = 128  # a softmax lane holds keys / (2 * warps) of its row in registers: 64 at most
PAD_16 = 8  # row padding of 16-bit tiles in elements: rows stay 16-byte aligned, banks spread
PAD_32 = 4  # the same for float32 tiles
VECTOR = 8  # 16-bit elements in a 16-byte copy
OUT_VECTOR = 4  # output elements a lane converts and writes at once (float4 in, 8 bytes out)
MAX_WARPS = 4  # warps of a row tile, splitting the products' column tiles
MAX_ROW_TILES = 2  # 16-row query tiles of a block

IndexFn = Callable[[Sequence[tirx.Expr]], list[tirx.Expr]]


@dataclass(frozen=True)
class Operand:
    """How the kernel reads a [batch, head, row, col] operand: input ``arg`` at ``index(b, h, r, c)``;
    ``vector``: the source is contiguous and 16-byte aligned along ``col`` (the head dimension)."""

    arg: int
    index: IndexFn
    vector: bool


@dataclass(frozen=True)
class Step:
    """One elementwise step between the scores and the softmax: ``op(scores, input arg)`` (``swap``:
    ``op(input, scores)``), the input broadcast to [batch, head, query, key] by numpy's rules."""

    op: str  # add, subtract, multiply, divide
    arg: int
    swap: bool = False


@dataclass(frozen=True)
class Attention:
    """One attention: scores = Q K^T rounded to ``dtype``, then ``steps`` in ``dtype``, softmax over the keys
    in float32, the probabilities rounded to ``dtype``, times V, rounded to ``dtype``."""

    dtype: str  # float16 or bfloat16
    batch: int
    heads: int
    sq: int
    skv: int
    dim: int  # Q and K's head dimension
    dim_v: int
    args: tuple[tuple[tuple[int, ...], str], ...]  # the kernel's inputs: (shape, dtype)
    q: Operand  # (b, h, query, d)
    k: Operand  # (b, h, key, d), whichever way the graph transposed K
    v: Operand  # (b, h, key, d)
    steps: tuple[Step, ...]
    out_shape: tuple[int, ...]
    out_index: IndexFn  # (b, h, query, d) -> the output's indices
    out_lanes: int = 1  # elements a lane writes at once (4: the output is contiguous and aligned along d)


@dataclass(frozen=True)
class Plan:
    col_warps: int  # warps splitting the key tiles of the scores and the column tiles of the output
    row_tiles: int  # 16-row query tiles a block takes (one warp group each), sharing its copies of K and V
    blocks: int
    shared_bytes: int

    @property
    def warps(self) -> int:
        return self.col_warps * self.row_tiles

    @property
    def rows(self) -> int:
        return FRAG * self.row_tiles

    @property
    def lanes_per_row(self) -> int:
        return self.warps * WARP // self.rows


def shared_bytes(a: Attention, rows: int = FRAG) -> int:
    tiles16 = (rows + a.skv) * (a.dim + PAD_16) + a.skv * (a.dim_v + PAD_16) + rows * (a.skv + PAD_16)
    tiles32 = rows * (max(a.skv, a.dim_v) + PAD_32)  # the scores, later the output, in one buffer
    return 2 * tiles16 + 4 * tiles32


def plan(a: Attention) -> Plan | None:
    """Warps per block and the grid; None for sizes the kernel does not take."""
    if a.dtype not in ("float16", "bfloat16"):
        return None
    if any(x % FRAG for x in (a.sq, a.skv, a.dim, a.dim_v)) or max(a.dim, a.dim_v) > MAX_HEAD_DIM \
            or a.skv > MAX_KEYS or shared_bytes(a) > SHARED_LIMIT:
        return None
    tiles = (a.skv // FRAG, a.dim_v // FRAG)
    col_warps = next(w for w in (MAX_WARPS, 2, 1) if all(t % w == 0 for t in tiles))
    row_tiles = next(r for r in range(MAX_ROW_TILES, 0, -1)
                     if a.sq % (r * FRAG) == 0 and shared_bytes(a, r * FRAG) <= SHARED_LIMIT)
    return Plan(col_warps, row_tiles, a.batch * a.heads * (a.sq // (row_tiles * FRAG)),
                shared_bytes(a, row_tiles * FRAG))


_OPS: dict[str, Callable[[tirx.Expr, tirx.Expr], tirx.Expr]] = {
    "add": lambda x, y: x + y, "subtract": lambda x, y: x - y,
    "multiply": lambda x, y: x * y, "divide": lambda x, y: x / y}


def _ptr(buf: tirx.Buffer, offset: tirx.Expr, extent: int, rw: int) -> tirx.Expr:
    """``tvm_access_ptr`` to ``extent`` elements of ``buf`` from ``offset`` (rw: 1 read, 2 write)."""
    from tvm.script.ir_builder import tirx as T

    return T.tvm_access_ptr(T.type_annotation(buf.dtype), buf.data, offset, extent, rw)


def build(a: Attention, p: Plan, name: str) -> tirx.PrimFunc:
    """The kernel, as a PrimFunc the GPU rules leave alone (``tirx.is_scheduled``)."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    dt, f32 = a.dtype, "float32"
    rows, tiles_q, threads, lanes_row = p.rows, a.sq // p.rows, p.warps * WARP, p.lanes_per_row
    ld_k, ld_v, ld_p = a.dim + PAD_16, a.dim_v + PAD_16, a.skv + PAD_16
    ld_w = max(a.skv, a.dim_v) + PAD_32
    analyzer = sym.Analyzer()

    def bound(var: tirx.Var, extent: int) -> None:
        analyzer.bind(var, tvm.ir.Range(0, extent))

    def fragment_load(frag: tirx.Buffer, index: tirx.Expr, src: tirx.Buffer, offset: tirx.Expr, ld: int,
                      layout: str) -> None:
        T.evaluate(T.tvm_load_matrix_sync(frag.data, FRAG, FRAG, FRAG, index, _ptr(src, offset, FRAG * ld, 1),
                                          ld, layout))

    def product(a_tile: tirx.Buffer, ld_a: int, steps: int, b_tile: tirx.Buffer, ld_b: int, b_layout: str,
                b_offset: Callable[[tirx.Expr, tirx.Expr], tirx.Expr], cols: int, warp: tirx.Expr) -> None:
        """For warp ``warp`` of the block: its row tile's 16 rows of A (``a_tile``, ``steps`` tiles deep) times
        B's column tiles c, c + col_warps, ... (16x16 tile (k, n) at ``b_offset(n, k)`` in ``b_tile``), on
        float32 accumulators, into those rows and columns of w_sh."""
        row0, col = warp // p.col_warps * FRAG, warp % p.col_warps
        a_frag = T.decl_buffer((FRAG, steps * FRAG), dt, scope="wmma.matrix_a")
        b_frag = T.decl_buffer((FRAG, FRAG), dt, scope="wmma.matrix_b")
        n_tiles = cols // FRAG // p.col_warps
        acc = T.decl_buffer((FRAG, n_tiles * FRAG), f32, scope="wmma.accumulator")
        with T.unroll(0, steps) as k:
            fragment_load(a_frag, k, a_tile, row0 * ld_a + k * FRAG, ld_a, "row_major")
        with T.unroll(0, n_tiles) as i:
            T.evaluate(T.tvm_fill_fragment(acc.data, FRAG, FRAG, FRAG, i, T.float32(0)))
            with T.unroll(0, steps) as k:
                fragment_load(b_frag, 0, b_tile, b_offset(col + i * p.col_warps, k), ld_b, b_layout)
                T.evaluate(T.tvm_mma_sync(acc.data, i, a_frag.data, k, b_frag.data, 0, acc.data, i))
        with T.unroll(0, n_tiles) as i:
            T.evaluate(T.tvm_store_matrix_sync(acc.data, FRAG, FRAG, FRAG, i,
                                               _ptr(w_sh, row0 * ld_w + (col + i * p.col_warps) * FRAG, FRAG * ld_w,
                                                    2), ld_w, "row_major"))

    with IRBuilder() as ib, T.prim_func():
        T.func_name(name)
        T.func_attr({"global_symbol": name, "tirx.noalias": True, "tirx.is_scheduled": True,
                     KERNEL_ATTR: "fused-attention"})
        ins = [T.arg(f"in{i}", T.buffer(shape, dtype)) for i, (shape, dtype) in enumerate(a.args)]
        out = T.arg("out", T.buffer(a.out_shape, dt))
        bx, wy, lx = T.env_thread("blockIdx.x"), T.env_thread("threadIdx.y"), T.env_thread("threadIdx.x")
        with T.launch_thread(bx, p.blocks), T.launch_thread(wy, p.warps), T.launch_thread(lx, WARP):
            for var, extent in ((bx, p.blocks), (wy, p.warps), (lx, WARP)):
                bound(var, extent)
            b, h, q0 = bx // (a.heads * tiles_q), bx // tiles_q % a.heads, bx % tiles_q * rows
            tid = wy * WARP + lx
            q_sh = T.decl_buffer((rows, ld_k), dt, scope="shared")
            k_sh = T.decl_buffer((a.skv, ld_k), dt, scope="shared")
            v_sh = T.decl_buffer((a.skv, ld_v), dt, scope="shared")
            p_sh = T.decl_buffer((rows, ld_p), dt, scope="shared")
            # the scores, then the output; dynamic shared memory, a pool of its own: StorageRewrite would
            # otherwise place it in a dead 16-bit tile, which tvm_access_ptr rejects
            w_sh = T.decl_buffer((rows, ld_w), f32, scope="shared.dyn")

            def copy(dst: tirx.Buffer, op: Operand, row0: tirx.Expr, n_rows: int, cols: int) -> None:
                # unrolled: every load of the tile is in flight before the first store to shared memory
                lanes = VECTOR if op.vector and cols % VECTOR == 0 else 1
                per_row = cols // lanes
                total = n_rows * per_row
                with T.unroll(0, (total + threads - 1) // threads) as it:
                    bound(it, (total + threads - 1) // threads)
                    e = it * threads + tid
                    r, c = e // per_row, e % per_row * lanes
                    with when(e < total if total % threads else None), T.vectorized(0, lanes) as v:
                        bound(v, lanes)
                        idx = [analyzer.simplify(x) for x in op.index([b, h, row0 + r, c + v])]
                        T.buffer_store(dst, ins[op.arg][tuple(idx)], [r, c + v])

            copy(q_sh, a.q, q0, rows, a.dim)
            copy(k_sh, a.k, tirx.IntImm("int32", 0), a.skv, a.dim)
            copy(v_sh, a.v, tirx.IntImm("int32", 0), a.skv, a.dim_v)
            # the softmax's lanes: ``lanes_row`` neighbours take a row, every lanes_row-th key each; the
            # scale and mask values they will need are loaded now, while the copies are in flight
            r, part = tid // lanes_row, tid % lanes_row
            keys = a.skv // lanes_row
            inputs = []
            for st in a.steps:
                shape, dtype = a.args[st.arg]
                n = 1 if all(x == 1 for x in shape) else keys
                held = T.decl_buffer((n,), dtype, scope="local")
                with T.unroll(0, n) as jj:
                    idx = broadcast(shape, [b, h, q0 + r, jj * lanes_row + part])
                    T.buffer_store(held, ins[st.arg][tuple(analyzer.simplify(x) for x in idx)], [jj])
                inputs.append((held, n))

            # scores: Q times this warp's key tiles of K^T ((d, key) is k_sh[key, d]: column-major)
            product(q_sh, ld_k, a.dim // FRAG, k_sh, ld_k, "col_major", lambda n, k: n * FRAG * ld_k + k * FRAG,
                    a.skv, wy)

            # softmax, in registers; the lanes of a row combine their maxima and sums by shuffles
            xs = T.decl_buffer((keys,), f32, scope="local")
            acc = T.decl_buffer((1,), f32, scope="local")
            top = T.decl_buffer((1,), f32, scope="local")
            T.buffer_store(acc, T.float32(float("-inf")), [0])
            with T.unroll(0, keys) as jj:
                j = jj * lanes_row + part
                x = tirx.Cast(dt, w_sh[r, j])
                for st, (held, n) in zip(a.steps, inputs, strict=True):
                    y = held[jj] if n > 1 else held[0]
                    y = y if str(held.dtype) == dt else tirx.Cast(dt, y)
                    x = _OPS[st.op](y, x) if st.swap else _OPS[st.op](x, y)
                T.buffer_store(xs, tirx.Cast(f32, x), [jj])
                T.buffer_store(acc, tirx.Max(acc[0], xs[jj]), [0])
            _across(acc, lanes_row, tirx.Max)
            T.buffer_store(top, acc[0], [0])
            T.buffer_store(acc, T.float32(0), [0])
            with T.unroll(0, keys) as jj:
                T.buffer_store(xs, tirx.exp(xs[jj] - top[0]), [jj])
                T.buffer_store(acc, acc[0] + xs[jj], [0])
            _across(acc, lanes_row, lambda x, y: x + y)
            with T.unroll(0, keys) as jj:
                T.buffer_store(p_sh, tirx.Cast(dt, xs[jj] / acc[0]), [r, jj * lanes_row + part])

            # output: P times this warp's column tiles of V, through w_sh, then out in its layout
            product(p_sh, ld_p, a.skv // FRAG, v_sh, ld_v, "row_major", lambda n, k: k * FRAG * ld_v + n * FRAG,
                    a.dim_v, wy)
            lanes = a.out_lanes
            per_row = a.dim_v // lanes
            with T.unroll(0, rows * per_row // threads) as it:
                bound(it, rows * per_row // threads)
                e = it * threads + tid
                rr, d = e // per_row, e % per_row * lanes
                with T.vectorized(0, lanes) as v:
                    bound(v, lanes)
                    idx = [analyzer.simplify(x) for x in a.out_index([b, h, q0 + rr, d + v])]
                    T.buffer_store(out, tirx.Cast(dt, w_sh[rr, d + v]), idx)
    return ib.get()


def _across(acc: tirx.Buffer, lanes: int, op: Callable[[tirx.Expr, tirx.Expr], tirx.Expr]) -> None:
    """``acc[0]`` combined by ``op`` over each group of ``lanes`` neighbouring lanes (a power of two)."""
    from tvm.script.ir_builder import tirx as T

    step = 1
    while step < lanes:
        T.buffer_store(acc, op(acc[0], T.tvm_warp_shuffle_xor(tirx.const(0xFFFFFFFF, "uint32"), acc[0], step, WARP,
                                                              WARP)), [0])
        step *= 2
