"""A GEMM with its elementwise epilogue for Hopper (sm_90a): ``wgmma`` tensor-core instructions reading both
operands from shared memory, written directly in TIR (``targets.gemm_fusion`` finds the pattern in a Relax
graph and builds this).

out = steps(round(X @ W)), X: [..., K] (rows flattened to M), W: [K, N] (or [N, K]); 16-bit operands, float32
accumulators, the product rounded to the matmul's output type, then each elementwise step (bias, residual,
GELU, casts) as the graph computes it.

One thread block of ``bm / 64`` warpgroups (128 threads each) takes a ``bm x bn`` tile of the output:

1. ``cp.async`` copies 64-deep K tiles of X and W into shared memory, ``stages`` buffers deep, laid out as
   wgmma's 128-byte swizzle expects (each 128-byte row of 16-byte chunks permuted by its row's low three
   bits: no bank conflicts on either side). X is K-major; W is read K-major ([N, K]) or MN-major ([K, N],
   ``wgmma``'s transposed B), so the weights need no transpose.
2. Each warpgroup issues four ``wgmma.mma_async`` m64nBNk16 per K tile, its 64 rows by the block's
   columns, accumulating in registers; with ``inflight`` one group stays in flight while the next tile's
   copies are issued.
3. The accumulators go to shared memory rounded to the matmul's output type, and the block writes its tile in
   16-byte vectors along the rows, applying the epilogue on the way: threads own 8 consecutive columns, so
   the epilogue's inputs (a bias, a residual) are read in 16-byte vectors too.

Sizes it takes (``plan``): K and N multiples of 64, any M (rows beyond M are zero-filled and not written).
Measured on the H200 (docs/cuda.md): the transformers' batch-32 projections 1.5-2.4x faster than the WMMA
kernels of ``targets.schedules.gpu_tensorcore``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import tvm
from tvm import sym, tirx

from targets.kernel_ir import broadcast, unravel, when
from targets.schedules.gpu_rules import KERNEL_ATTR

BK = 64  # K elements of a tile: 128 bytes of a 16-bit type, one swizzle row
SWIZZLE_ROW = 128  # bytes
SWIZZLE_ATOM = 1024  # 8 rows of 128 bytes: the unit wgmma's 128-byte swizzle repeats
WARPGROUP = 128
SMS = 132  # streaming multiprocessors of an H100 SXM / H200, for the wave count
SM_SHARED = 228 * 1024  # shared memory per SM; each block also holds 1 KiB the system reserves
BLOCK_RESERVED = 1024
MAX_BLOCK_SHARED = 227 * 1024
VECTOR = 8  # output columns a thread writes at once
MAX_GRID_Y = 65535  # row tiles run along blockIdx.y
NARROW = {"float16": "f16", "bfloat16": "bf16"}
BINARY = ("add", "subtract", "multiply", "divide", "maximum", "minimum")


@dataclass(frozen=True)
class Step:
    """One elementwise step on the product: a unary ``op``, ``astype`` to ``dtype``, or a binary ``op`` with
    kernel input ``arg`` (broadcast to the output by numpy's rules; ``swap``: ``op(input, product)``). Each
    result is rounded to ``dtype``, its tensor's type in the graph."""

    op: str
    dtype: str
    arg: int | None = None
    swap: bool = False


@dataclass(frozen=True)
class Gemm:
    dtype: str  # the operands' type, float16 or bfloat16
    product_dtype: str  # the matmul's output type: the product is rounded to it before the steps
    x_shape: tuple[int, ...]  # [..., K]
    n: int
    w_kmajor: bool  # W stored [N, K] (True) or [K, N]
    args: tuple[tuple[tuple[int, ...], str], ...]  # the kernel's inputs: X, W, then the steps' inputs
    steps: tuple[Step, ...]

    @property
    def k(self) -> int:
        return self.x_shape[-1]

    @property
    def m(self) -> int:
        return math.prod(self.x_shape[:-1])

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (*self.x_shape[:-1], self.n)

    @property
    def out_dtype(self) -> str:
        return self.steps[-1].dtype if self.steps else self.product_dtype


@dataclass(frozen=True)
class Plan:
    bm: int
    bn: int
    stages: int
    inflight: int  # wgmma groups left in flight while the next tile's copies are issued
    shared_bytes: int

    def grid(self, g: Gemm) -> tuple[int, int]:
        return g.n // self.bn, -(-g.m // self.bm)


def _bytes(dtype: str) -> int:
    return tvm.DataType(dtype).bits // 8


def shared_bytes(g: Gemm, bm: int, bn: int, stages: int) -> int:
    """Operand buffers (or, after the main loop, the product's tile in the same memory) plus the slack that
    aligns them to a swizzle atom."""
    operands = stages * (bm + bn) * BK * _bytes(g.dtype)
    tile = bm * (bn + 16 // _bytes(g.product_dtype)) * _bytes(g.product_dtype)
    return max(operands, tile) + SWIZZLE_ATOM


def plan(g: Gemm) -> Plan | None:
    """Tiles of 64 x 64 (wgmma's M per warpgroup; the transformers' GEMMs measured fastest so), as many
    buffers as keep every block resident in the fewest waves; None for what the kernel does not take."""
    if g.dtype not in NARROW or g.k % BK or g.n % 64 or g.product_dtype not in (g.dtype, "float32"):
        return None
    bm, bn = 64, 64
    if -(-g.m // bm) > MAX_GRID_Y:
        return None
    blocks = (g.n // bn) * -(-g.m // bm)

    def waves(stages: int) -> int:
        per_sm = min(SM_SHARED // (shared_bytes(g, bm, bn, stages) + BLOCK_RESERVED), 16)
        return -(-blocks // (SMS * per_sm))

    best = min(waves(s) for s in (4, 3))
    stages = next(s for s in (4, 3) if waves(s) == best)
    inflight = 1 if stages == 4 and g.k // BK > stages else 0
    size = shared_bytes(g, bm, bn, stages)
    return Plan(bm, bn, stages, inflight, size) if size <= MAX_BLOCK_SHARED else None


# ---- device helpers: CUDA source handed to TVM's codegen by name (tvm.backend.cuda cuda_func_call) ------------
_SMEM = "(unsigned)__cvta_generic_to_shared"
HELPERS = {
    "ea_cp16": f"""__device__ __forceinline__ void ea_cp16(void* dst, const void* src, int bytes) {{
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\\n" :: "r"({_SMEM}(dst)), "l"(src), "r"(bytes)
               : "memory");
}}
""",
    "ea_copy16": """__device__ __forceinline__ void ea_copy16(void* dst, const void* src) {
  *(uint4*)dst = *(const uint4*)src;
}
""",
    "ea_cp_commit": """__device__ __forceinline__ void ea_cp_commit() {
  asm volatile("cp.async.commit_group;\\n" ::: "memory");
}
""",
    **{f"ea_cp_wait{i}": f"""__device__ __forceinline__ void ea_cp_wait{i}() {{
  asm volatile("cp.async.wait_group {i};\\n" ::: "memory");
}}
""" for i in range(4)},
    "ea_align1024": f"""__device__ __forceinline__ int ea_align1024(const void* p) {{
  return (int)((1024u - ({_SMEM}(p) & 1023u)) & 1023u);
}}
""",
    "ea_wg_fence": """__device__ __forceinline__ void ea_wg_fence() {
  asm volatile("wgmma.fence.sync.aligned;\\n" ::: "memory");
}
""",
    "ea_wg_commit": """__device__ __forceinline__ void ea_wg_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\\n" ::: "memory");
}
""",
    **{f"ea_wg_wait{i}": f"""__device__ __forceinline__ void ea_wg_wait{i}() {{
  asm volatile("wgmma.wait_group.sync.aligned {i};\\n" ::: "memory");
}}
""" for i in range(2)},
}


def descriptor_helper(leading: int, stride: int) -> tuple[str, str]:
    """A function making wgmma's shared-memory matrix descriptor (128-byte swizzle) of an address, with the
    byte offsets between swizzle atoms along the leading and the strided dimension."""
    name = f"ea_desc_{leading}_{stride}"
    return name, f"""__device__ __forceinline__ unsigned long long {name}(const void* p) {{
  return (unsigned long long)(({_SMEM}(p) & 0x3FFFFu) >> 4) | ({leading >> 4}ull << 16) | ({stride >> 4}ull << 32)
         | (1ull << 62);
}}
"""


def wgmma_helper(n: int, ab: str, trans_b: int) -> tuple[str, str]:
    """``wgmma.mma_async`` m64{n}k16, float32 accumulators in ``d`` (n / 2 a thread), both operands by
    descriptor; ``trans_b``: B is MN-major."""
    regs = ", ".join(f"%{i}" for i in range(n // 2))
    outs = ", ".join(f'"+f"(d[{i}])' for i in range(n // 2))
    name = f"ea_wgmma_{ab}_n{n}_t{trans_b}"
    return name, f"""__device__ __forceinline__ void {name}(float* d, unsigned long long a, unsigned long long b) {{
  asm volatile("{{\\n.reg .pred p;\\nsetp.ne.b32 p, 1, 0;\\n"
               "wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{ab}.{ab} {{{regs}}}, %{n // 2}, %{n // 2 + 1}, "
               "p, 1, 1, 0, {trans_b};\\n}}\\n"
               : {outs} : "l"(a), "l"(b));
}}
"""


def _unary(op: str, x: tirx.Expr) -> tirx.Expr:
    from tvm.script.ir_builder import tirx as T

    one, half = T.float32(1), T.float32(0.5)
    if op == "gelu":
        return x * half * (one + tirx.erf(x * T.float32(0.7071067811865476)))
    if op == "gelu_tanh":
        inner = T.float32(0.7978845608028654) * (x + T.float32(0.044715) * x * x * x)
        return x * half * (one + tirx.tanh(inner))
    if op == "relu":
        return tirx.Max(x, T.float32(0))
    if op == "sigmoid":
        return one / (one + tirx.exp(-x))
    if op == "silu":
        return x / (one + tirx.exp(-x))
    if op == "tanh":
        return tirx.tanh(x)
    return x  # astype: the rounding below is the step


_BINARY: dict[str, Callable[[tirx.Expr, tirx.Expr], tirx.Expr]] = {
    "add": lambda x, y: x + y, "subtract": lambda x, y: x - y, "multiply": lambda x, y: x * y,
    "divide": lambda x, y: x / y, "maximum": tirx.Max, "minimum": tirx.Min}


def build(g: Gemm, p: Plan, name: str) -> tirx.PrimFunc:
    """The kernel, as a PrimFunc the GPU rules leave alone (``tirx.is_scheduled``)."""
    from tvm.backend.cuda.op import cuda_func_call
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    dt, ab = g.dtype, NARROW[g.dtype]
    esize = _bytes(dt)
    bm, bn, stages = p.bm, p.bn, p.stages
    threads = bm // 64 * WARPGROUP
    k_tiles = g.k // BK
    a_elems, b_elems = bm * BK, bn * BK
    grid_n, grid_m = p.grid(g)
    m_total = g.m
    guard_rows = m_total % bm != 0
    out_shape = g.out_shape
    k_desc, k_src = descriptor_helper(16, SWIZZLE_ATOM)  # K-major: 8-row groups one atom apart
    # MN-major: 64-column atoms one K tile apart along N (the leading offset), 8-row (k) groups one atom
    # apart (the stride); the other way round reads outside shared memory (measured on the H200)
    b_desc, b_src = (k_desc, k_src) if g.w_kmajor else descriptor_helper(BK * SWIZZLE_ROW, SWIZZLE_ATOM)
    wgmma, w_src = wgmma_helper(bn, ab, 0 if g.w_kmajor else 1)
    sources = {**HELPERS, k_desc: k_src, b_desc: b_src, wgmma: w_src}
    analyzer = sym.Analyzer()

    def call(fn: str, *args: tirx.Expr, ret: str = "void") -> tirx.Expr:
        return cuda_func_call(fn, *args, source_code=sources[fn], return_type=ret)

    def bound(var: tirx.Var, extent: int) -> None:
        analyzer.bind(var, tvm.ir.Range(0, extent))

    def simplify(idx: Sequence[tirx.Expr]) -> tuple[tirx.Expr, ...]:
        return tuple(analyzer.simplify(x) for x in idx)

    def copies(buf: tirx.Buffer, idx: Sequence[tirx.Expr], regs: tirx.Buffer, into_regs: bool) -> None:
        """VECTOR consecutive elements of ``buf`` from ``idx`` to (or from) the registers ``regs`` in 16-byte
        copies."""
        step = 16 // _bytes(str(regs.dtype))
        for i in range(0, VECTOR, step):
            at = T.address_of(buf[(*idx[:-1], idx[-1] + i)])
            pair = (T.address_of(regs[i]), at) if into_regs else (at, T.address_of(regs[i]))
            T.evaluate(call("ea_copy16", *pair))

    def read(buf: tirx.Buffer, idx: Sequence[tirx.Expr]) -> list[tirx.Expr]:
        regs = T.decl_buffer((VECTOR,), str(buf.dtype), scope="local")
        copies(buf, idx, regs, True)
        return [regs[i] for i in range(VECTOR)]

    def write(buf: tirx.Buffer, idx: Sequence[tirx.Expr], vals: list[tirx.Expr]) -> None:
        regs = T.decl_buffer((VECTOR,), str(buf.dtype), scope="local")
        for i, v in enumerate(vals):
            T.buffer_store(regs, v, [i])
        copies(buf, idx, regs, False)

    with IRBuilder() as ib, T.prim_func():
        T.func_name(name)
        T.func_attr({"global_symbol": name, "tirx.noalias": True, "tirx.is_scheduled": True,
                     KERNEL_ATTR: "wgmma-gemm"})
        ins = [T.arg(f"in{i}", T.buffer(shape, dtype)) for i, (shape, dtype) in enumerate(g.args)]
        out = T.arg("out", T.buffer(out_shape, g.out_dtype))
        x, w = ins[0], ins[1]
        bx, by, tx = T.env_thread("blockIdx.x"), T.env_thread("blockIdx.y"), T.env_thread("threadIdx.x")
        with T.launch_thread(bx, grid_n), T.launch_thread(by, grid_m), T.launch_thread(tx, threads):
            for var, extent in ((bx, grid_n), (by, grid_m), (tx, threads)):
                bound(var, extent)
            elems = p.shared_bytes // esize
            sm = T.decl_buffer((elems,), dt, scope="shared.dyn")
            # TVM names every dynamic shared array alike; extern arrays of one name must have one type in a
            # library, and the attention kernel's is float32
            IRBuilder.name(f"wgmma_shared_{ab}", sm)
            acc = T.decl_buffer((bn // 2,), "float32", scope="local")
            base = T.decl_buffer((1,), "int32", scope="local")
            T.buffer_store(base, tirx.shift_right(call("ea_align1024", T.address_of(sm[0]), ret="int32"),
                                                  esize.bit_length() - 1), [0])
            off = base[0]
            m0, n0 = by * bm, bx * bn

            def x_row(m: tirx.Expr) -> list[tirx.Expr]:
                return unravel(g.x_shape[:-1], m)

            def load(stage: tirx.Expr, kt: tirx.Expr) -> None:
                # X: row r's 16-byte chunk c at chunk c ^ (r % 8) of its 128-byte row
                with T.unroll(0, bm * 8 // threads) as it:
                    bound(it, bm * 8 // threads)
                    e = it * threads + tx
                    r, c = e // 8, e % 8
                    dst = off + stage * a_elems + r * BK + tirx.bitwise_xor(c, tirx.bitwise_and(r, 7)) * 8
                    row = m0 + r
                    if guard_rows:
                        ok = row < m_total
                        src = T.address_of(x[simplify([*x_row(tirx.Min(row, m_total - 1)), kt * BK + c * 8])])
                        size = tirx.Select(ok, tirx.IntImm("int32", 16), tirx.IntImm("int32", 0))
                    else:
                        src = T.address_of(x[simplify([*x_row(row), kt * BK + c * 8])])
                        size = tirx.IntImm("int32", 16)
                    T.evaluate(call("ea_cp16", T.address_of(sm[dst]), src, size))
                # W: K-major like X; MN-major as k rows of 64-column atoms
                with T.unroll(0, bn * 8 // threads) as it:
                    bound(it, bn * 8 // threads)
                    e = it * threads + tx
                    w_base = off + stages * a_elems + stage * b_elems
                    if g.w_kmajor:
                        r, c = e // 8, e % 8
                        dst = w_base + r * BK + tirx.bitwise_xor(c, tirx.bitwise_and(r, 7)) * 8
                        src = T.address_of(w[simplify([n0 + r, kt * BK + c * 8])])
                    else:
                        per_k = bn // 8  # 16-byte chunks along N of one k row
                        kk, col = e // per_k, e % per_k
                        atom, c = col // 8, col % 8
                        dst = (w_base + atom * BK * 64 + kk * 64
                               + tirx.bitwise_xor(c, tirx.bitwise_and(kk, 7)) * 8)
                        src = T.address_of(w[simplify([kt * BK + kk, n0 + col * 8])])
                    T.evaluate(call("ea_cp16", T.address_of(sm[dst]), src, tirx.IntImm("int32", 16)))

            with T.unroll(0, bn // 2) as i:
                T.buffer_store(acc, T.float32(0), [i])
            ahead = stages - 1 - p.inflight  # K tiles copied ahead of the one multiplied
            for s in range(ahead):
                if s < k_tiles:
                    load(tirx.IntImm("int32", s), tirx.IntImm("int32", s))
                T.evaluate(call("ea_cp_commit"))
            wg = tx // WARPGROUP
            with T.serial(0, k_tiles) as kt:
                bound(kt, k_tiles)
                T.evaluate(call(f"ea_cp_wait{ahead - 1}"))
                T.evaluate(T.tvm_storage_sync("shared"))
                nk = kt + ahead
                with T.If(nk < k_tiles), T.Then():
                    load(nk % stages, nk)
                T.evaluate(call("ea_cp_commit"))
                st = kt % stages
                T.evaluate(call("ea_wg_fence"))
                for k16 in range(BK // 16):
                    a_ptr = T.address_of(sm[off + st * a_elems + wg * 64 * BK + k16 * 16])
                    w_at = off + stages * a_elems + st * b_elems
                    b_ptr = T.address_of(sm[w_at + k16 * 16 if g.w_kmajor else w_at + k16 * 16 * 64])
                    T.evaluate(call(wgmma, acc.data, call(k_desc, a_ptr, ret="uint64"),
                                    call(b_desc, b_ptr, ret="uint64")))
                T.evaluate(call("ea_wg_commit"))
                T.evaluate(call(f"ea_wg_wait{p.inflight}"))
            if p.inflight:
                T.evaluate(call("ea_wg_wait0"))

            # the product, rounded to the matmul's type, into shared memory (row pitch padded by 16 bytes)
            pdt = g.product_dtype
            psize = _bytes(pdt)
            ld = bn + 16 // psize
            tile = T.decl_buffer((bm * ld,), pdt, data=sm.data, elem_offset=0, scope="shared.dyn")
            t_off = off * esize // psize
            T.evaluate(call("ea_cp_wait0"))
            T.evaluate(T.tvm_storage_sync("shared"))
            warp, lane = tx % WARPGROUP // 32, tx % 32
            with T.unroll(0, bn // 8) as n8, T.unroll(0, 2) as h, T.vectorized(0, 2) as j:
                row = wg * 64 + warp * 16 + lane // 4 + 8 * h
                col = n8 * 8 + lane % 4 * 2 + j
                T.buffer_store(tile, tirx.Cast(pdt, acc[n8 * 4 + h * 2 + j]), [t_off + row * ld + col])
            T.evaluate(T.tvm_storage_sync("shared"))

            # the epilogue, 8 columns a thread, 16-byte vectors in and out
            per_row = bn // VECTOR
            with T.unroll(0, bm * per_row // threads) as it:
                bound(it, bm * per_row // threads)
                e = it * threads + tx
                r, cc = e // per_row, e % per_row * VECTOR
                row, col = m0 + r, n0 + cc
                out_idx = [*unravel(out_shape[:-1], row), col]
                with when(row < m_total if guard_rows else None):
                    vals = read(tile, [t_off + r * ld + cc])
                    # each step's values kept in registers, so the next step's expression does not repeat it
                    held = T.decl_buffer((VECTOR,), "float32", scope="local")

                    def keep(values: list[tirx.Expr]) -> list[tirx.Expr]:
                        for i, v in enumerate(values):
                            T.buffer_store(held, v, [i])
                        return [held[i] for i in range(VECTOR)]

                    cur = keep([tirx.Cast("float32", v) for v in vals])
                    for st in g.steps:
                        if st.op in BINARY:
                            assert st.arg is not None
                            shape, idt = g.args[st.arg]
                            idx = broadcast(shape, out_idx)
                            if shape and shape[-1] == g.n:  # contiguous along the columns: 16-byte reads
                                ys = read(ins[st.arg], simplify(idx))
                            else:
                                y = ins[st.arg][simplify(idx)]
                                ys = [y] * VECTOR
                            fn = _BINARY[st.op]
                            cur = [fn(tirx.Cast("float32", y), v) if st.swap else fn(v, tirx.Cast("float32", y))
                                   for v, y in zip(cur, ys, strict=True)]
                        else:
                            cur = [_unary(st.op, v) for v in cur]
                        cur = keep([tirx.Cast("float32", tirx.Cast(st.dtype, v)) if st.dtype != "float32" else v
                                    for v in cur])
                    write(out, simplify(out_idx), [tirx.Cast(g.out_dtype, v) for v in cur])
    return ib.get()
