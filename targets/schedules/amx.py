"""bf16 contractions on Intel AMX (``tdpbf16ps``): the ``bf16-contraction`` rule where the CPU has AMX-BF16.

On Sapphire Rapids ``vdpbf16ps`` retires one per two cycles, half the multiply-adds of fp32 FMAs
(measured here: 0.60 vs 0.15 ns per instruction), while one ``tdpbf16ps`` computes a 16 x 16 x 32
block: a micro-kernel below reached ~760 GMAC/s on one core, against ~105 for fp32 FMAs.

The same packed bf16 lowering serves both (``lowering.packed_bf16``; weights [N/16, Kp/2, 16, 2]
are exactly AMX's "VNNI" B-tile layout, 16 pairs of rows by 16 columns). The rule tiles the block

    [other spatial, N/32] (parallel)  [row tiles]  [other reductions]  [R rows x 32 cols x KC]

and replaces the innermost ``R x 32 x KC`` block (rows: output pixels along the width, or matmul
rows; KC: the contiguous reduction, a convolution's input channels) by one call of a micro-kernel
written in LLVM IR and imported into the kernel (``pragma_import_llvm``): it loads the 2 (R <= 16)
or 4 accumulator tiles from the ``local`` fp32 accumulator, runs ``tdpbf16ps`` over KC / 32 steps
of A and B tiles, and stores them back. LLVM configures the tiles itself (``ldtilecfg``), since the
micro-kernel uses its shape-carrying ``.internal`` intrinsics; TVM 0.27 has no ``x86_amx`` type to
name them from TIR.

Linux hands AMX's tile state to a process only on request (``enable_amx``): the runtime asks before
it runs an artifact built with AMX (``targets.x86``).
"""

from __future__ import annotations

import ctypes
import functools
import os

from tvm import s_tir, tirx
from tvm.s_tir import TensorIntrin
from tvm.s_tir.dlight.analysis.common_analysis import SBlockInfo
from tvm.s_tir.schedule import SBlockRV
from tvm.script import tirx as T

from targets.schedules.common import iterations, parallel_outer, vectorize_last
from targets.schedules.dot import widen
from targets.schedules.machine import Machine

AMX_FEATURES = frozenset({"amx-tile", "amx-bf16", "avx512bf16"})
COLS = 32  # output columns per call: two 16-column tiles
K_STEP = 32  # bf16 elements of the reduction per tdpbf16ps (a 64-byte tile row)
TILE_ROWS = 16

SYMBOL = "effarch_amx_bf16"


def has_amx(features: frozenset[str]) -> bool:
    return features >= AMX_FEATURES


def amx_rows(extent: int) -> int:
    """Rows per call for an output axis of ``extent``: the largest that divides it and fits one or
    two 16-row tiles of equal height (56 -> 28, 7 -> 7, 17 -> 0: none)."""
    for rows in range(min(extent, 2 * TILE_ROWS), 0, -1):
        if extent % rows == 0 and (rows <= TILE_ROWS or rows % 2 == 0):
            return rows if rows >= min(extent, 4) else 0
    return 0


def _tiles_ir() -> str:
    """The micro-kernel: ``C[R, 32] += A[R, KC] . B[KC, 32]`` on 2 or 4 accumulator tiles.

    (c, ldc bytes, a, lda bytes, b, ldb bytes (between the two 16-column panels), KC / 32 steps,
    rows per tile, 2 row tiles?) -> 0."""
    load, dp, store = ("@llvm.x86.tileloadd64.internal", "@llvm.x86.tdpbf16ps.internal",
                       "@llvm.x86.tilestored64.internal")
    body = [
        f"declare x86_amx {load}(i16, i16, ptr, i64)",
        f"declare x86_amx {dp}(i16, i16, i16, x86_amx, x86_amx, x86_amx)",
        f"declare void {store}(i16, i16, ptr, i64, x86_amx)",
    ]
    for two in (False, True):
        rows = [0, 1] if two else [0]

        def each_tile(line: str, rows: list[int] = rows) -> list[str]:
            """``line`` for every accumulator tile, ``{i}{j}`` its row and column tile."""
            return [line.format(i=i, j=j) for i in rows for j in (0, 1)]

        body += [
            f"define i32 @{SYMBOL}_{'2x2' if two else '1x2'}(ptr %c, i64 %ldc, ptr %a, i64 %lda, ptr %b, i64 %ldb, "
            "i64 %steps, i16 %r) {",
            "entry:",
            "  %r64 = zext i16 %r to i64",
            "  %a1off = mul i64 %r64, %lda",
            "  %a1 = getelementptr i8, ptr %a, i64 %a1off",
            "  %c1off = mul i64 %r64, %ldc",
            "  %c_10 = getelementptr i8, ptr %c, i64 %c1off",
            "  %c_00 = getelementptr i8, ptr %c, i64 0",
            "  %c_01 = getelementptr i8, ptr %c, i64 64",
            "  %c_11 = getelementptr i8, ptr %c_10, i64 64",
            "  %b1 = getelementptr i8, ptr %b, i64 %ldb",
            *each_tile(f"  %acc{{i}}{{j}} = call x86_amx {load}(i16 %r, i16 64, ptr %c_{{i}}{{j}}, i64 %ldc)"),
            "  br label %loop",
            "loop:",
            "  %k = phi i64 [0, %entry], [%knext, %loop]",
            *each_tile("  %x{i}{j} = phi x86_amx [%acc{i}{j}, %entry], [%y{i}{j}, %loop]"),
            "  %aoff = mul i64 %k, 64",
            "  %boff = mul i64 %k, 1024",
            "  %pa0 = getelementptr i8, ptr %a, i64 %aoff",
            "  %pa1 = getelementptr i8, ptr %a1, i64 %aoff",
            "  %pb0 = getelementptr i8, ptr %b, i64 %boff",
            "  %pb1 = getelementptr i8, ptr %b1, i64 %boff",
            *[f"  %ta{i} = call x86_amx {load}(i16 %r, i16 64, ptr %pa{i}, i64 %lda)" for i in rows],
            *[f"  %tb{j} = call x86_amx {load}(i16 16, i16 64, ptr %pb{j}, i64 64)" for j in (0, 1)],
            *each_tile(f"  %y{{i}}{{j}} = call x86_amx {dp}(i16 %r, i16 64, i16 64, x86_amx %x{{i}}{{j}}, "
                       "x86_amx %ta{i}, x86_amx %tb{j})"),
            "  %knext = add i64 %k, 1",
            "  %done = icmp eq i64 %knext, %steps",
            "  br i1 %done, label %exit, label %loop",
            "exit:",
            *each_tile(f"  call void {store}(i16 %r, i16 64, ptr %c_{{i}}{{j}}, i64 %ldc, x86_amx %y{{i}}{{j}})"),
            "  ret i32 0",
            "}",
        ]
    return "\n".join(body) + "\n"


TILES_IR = _tiles_ir()


@functools.cache
def intrinsic(rows: int, kc: int, stride: int) -> str:
    """The tensor intrinsic for an ``rows x 32 x kc`` block whose A rows are ``stride`` pixels apart
    (a strided convolution reads every ``stride``-th pixel of its padded input): registered once."""
    name = f"effarch_amx_bf16_{rows}x{COLS}x{kc}_s{stride}"
    span = (rows - 1) * stride + 1
    two = rows > TILE_ROWS
    per_tile = rows // 2 if two else rows
    symbol = f"{SYMBOL}_{'2x2' if two else '1x2'}"
    from targets.schedules.dot import AVX512_BF16 as k  # the same widening as the bf16 lowering

    i64 = T.int64
    n_rows, n_cols, n_span, n_kc, n_pairs = i64(rows), i64(COLS), i64(span), i64(kc), i64(kc // 2)

    def row(vi: object) -> object:
        return vi * i64(stride) if stride != 1 else vi

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (n_span, n_kc), "uint16", offset_factor=1)
        B = T.match_buffer(b, (i64(2), n_pairs, i64(16), i64(2)), "uint16", offset_factor=1)
        C = T.match_buffer(c, (n_rows, n_cols), "float32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:n_rows, 0:n_cols], A[0:n_span, 0:n_kc], B[0:2, 0:n_pairs, 0:16, 0:2])
            T.writes(C[0:n_rows, 0:n_cols])
            for i, j, ko, ki in T.grid(n_rows, n_cols, n_pairs, i64(2)):
                with T.sblock("update"):
                    vi, vj, vko, vki = T.axis.remap("SSRR", [i, j, ko, ki])
                    C[vi, vj] = C[vi, vj] + widen(k, A[row(vi), vko * i64(2) + vki]) * \
                        widen(k, B[vj // i64(16), vko, vj % i64(16), vki])

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        lda = T.int64()
        ldb = T.int64()
        ldc = T.int64()
        A = T.match_buffer(a, (n_span, n_kc), "uint16", offset_factor=1, strides=[lda, 1])
        B = T.match_buffer(b, (i64(2), n_pairs, i64(16), i64(2)), "uint16", offset_factor=1,
                           strides=[ldb, 32, 2, 1])
        C = T.match_buffer(c, (n_rows, n_cols), "float32", offset_factor=1, scope="local", strides=[ldc, 1])
        with T.sblock("root"):
            T.reads(C[0:n_rows, 0:n_cols], A[0:n_span, 0:n_kc], B[0:2, 0:n_pairs, 0:16, 0:2])
            T.writes(C[0:n_rows, 0:n_cols])
            T.evaluate(T.call_extern("int32", symbol, C.access_ptr("rw"), T.int64(4) * ldc, A.access_ptr("r"),
                                     T.int64(2 * stride) * lda, B.access_ptr("r"), T.int64(2) * ldb,
                                     T.int64(kc // K_STEP), T.int16(per_tile)))

    TensorIntrin.register(name, desc, impl, override=True)
    return name


def tile_amx(sch: s_tir.Schedule, info: SBlockInfo, main: SBlockRV, writeback: SBlockRV, m: Machine,
             stride: int) -> bool:
    """Tile a packed bf16 contraction for AMX, or leave ``sch`` untouched and say False where its
    shape does not fit (output columns not a multiple of 32, the reduction's contiguous part not a
    multiple of 32, no row count that divides the rows)."""
    kinds, loops = info.dom_kind(), sch.get_loops(main)
    spatial = [i for i, kind in enumerate(kinds) if kind == "S"]
    reds = [i for i, kind in enumerate(kinds) if kind == "R"]
    if len(spatial) < 2 or len(reds) < 2:
        return False
    v, r = spatial[-1], spatial[-2]
    cols, extent = int(info.iters[v].dom), int(info.iters[r].dom)
    ko, ki = reds[-2], reds[-1]
    kc = int(info.iters[ko].dom) * int(info.iters[ki].dom)
    rows = amx_rows(extent)
    if cols % COLS or kc % K_STEP or int(info.iters[ki].dom) != 2 or not rows:
        return False
    v_o, v_i = sch.split(loops[v], factors=[None, COLS])
    r_o, r_i = sch.split(loops[r], factors=[None, rows])
    outer = [loops[i] for i in spatial[:-2]] + [v_o]
    others = [loops[i] for i in reds[:-2]]
    sch.reorder(*outer, r_o, *others, r_i, v_i, loops[ko], loops[ki])
    work = iterations(info)
    fused = parallel_outer(sch, outer, m, work)
    if fused is None:
        return False
    sch.annotate(fused, "pragma_import_llvm", TILES_IR)
    sch.reverse_compute_at(writeback, fused, preserve_unit_loops=True)
    vectorize_last(sch, writeback, 16)
    init = sch.decompose_reduction(main, others[0] if others else r_i)
    vectorize_last(sch, init, 16)
    sch.tensorize(r_i, intrinsic(rows, kc, stride))
    return True


_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18
_SYS_ARCH_PRCTL = 158  # x86-64


@functools.cache
def enable_amx() -> bool:
    """Ask Linux for AMX's tile data in this process (without it the first tile instruction is a
    SIGILL); True when granted. Idempotent; False off Linux x86-64 or on kernels before 5.16."""
    if os.uname().sysname != "Linux" or os.uname().machine != "x86_64":
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA)) == 0


def stride_of(block: tirx.stmt.SBlock) -> int:
    """The pixel stride of a packed convolution block (``lowering.packed_bf16`` records it), 1 for a matmul."""
    return int(block.annotations.get(STRIDE_ATTR, 1))


STRIDE_ATTR = "effarch.stride"


def micro_kernel_throughput(m: int = 32, n: int = 32, k: int = 512, calls: int = 20000) -> tuple[float, float]:
    """(GMAC/s of the micro-kernel on one core over an ``m x n x k`` block, called ``calls`` times in
    a loop; its max abs error against numpy on the same bf16 operands). ``tools/bf16_throughput.py``."""
    import time

    import numpy as np
    import tvm

    from targets.schedules.dot import bf16_bits

    if not enable_amx():
        raise RuntimeError("Linux refused AMX's tile state to this process")

    @T.prim_func(s_tir=True)
    def kernel(A: T.Buffer((m, k), "uint16"), B: T.Buffer((2, k // 2, 16, 2), "uint16"),  # type: ignore[valid-type]
               C: T.Buffer((m, n), "float32"), reps: T.int32) -> None:  # type: ignore[valid-type]
        with T.attr(0, "pragma_import_llvm", TILES_IR):
            for _ in range(reps):
                T.evaluate(T.call_extern("int32", f"{SYMBOL}_2x2", C.access_ptr("rw"), T.int64(n * 4),
                                         A.access_ptr("r"), T.int64(k * 2), B.access_ptr("r"), T.int64(k * 32),
                                         T.int64(k // K_STEP), T.int16(m // 2)))

    target = tvm.target.Target({"kind": "llvm", "mcpu": "sapphirerapids"})
    lib = tvm.compile(tvm.IRModule({"main": kernel}), target=target)
    rng = np.random.default_rng(0)
    a, w = bf16_bits(rng.standard_normal((m, k), np.float32)), bf16_bits(rng.standard_normal((k, n), np.float32))
    packed = np.ascontiguousarray(w.reshape(k // 2, 2, 2, 16).transpose(2, 0, 3, 1))  # [N/16, K/2, 16, 2]
    args = [tvm.runtime.tensor(x) for x in (a, packed, np.zeros((m, n), np.float32))]
    lib(*args, 1)
    widened = [(x.astype(np.uint32) << 16).view(np.float32).astype(np.float64) for x in (a, w)]
    error = float(np.abs(args[2].numpy() - widened[0] @ widened[1]).max())
    t0 = time.perf_counter()
    lib(*args, calls)
    return m * n * k * calls / (time.perf_counter() - t0) / 1e9, error
