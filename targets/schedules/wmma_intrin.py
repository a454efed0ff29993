"""effarch's WMMA (16x16x16) tensor intrinsics for ``targets.schedules.gpu_tensorcore``: load A / B
fragments from shared memory, fill and store the accumulator, and the product, for float16 or
bfloat16 operands with a float16 or float32 accumulator, each operand's shared tile ``[rows, k]`` or
``[k, rows]``. TVM's set (``tvm.s_tir.tensor_intrin.cuda``) has no bfloat16 variant and costs ~90 s
to import; these are registered on first use.
"""

from __future__ import annotations

from tvm import tirx

FRAG = 16


def _short(dtype: str) -> str:
    return {"float16": "f16", "bfloat16": "bf16", "float32": "f32"}[dtype]


def intrinsic_names(in_dtype: str, acc_dtype: str, a_k_inner: bool = True, b_k_inner: bool = True) -> dict[str, str]:
    """Names of the five intrinsics one GEMM needs (``register_wmma`` registers them). ``*_k_inner``:
    the operand's shared tile is ``[rows, k]`` (else ``[k, rows]``)."""
    a, c = _short(in_dtype), _short(acc_dtype)
    la, lb = "mk" if a_k_inner else "km", "nk" if b_k_inner else "kn"
    return {"load_a": f"effarch_wmma_load_a_{la}_{a}", "load_b": f"effarch_wmma_load_b_{lb}_{a}",
            "fill": f"effarch_wmma_fill_{c}", "store": f"effarch_wmma_store_{c}",
            "mma": f"effarch_wmma_mma_{la}_{lb}_{a}{c}"}


def _fragment(buf: tirx.Buffer, stride: tirx.PrimExpr) -> tirx.PrimExpr:
    """Which 16x16 fragment of a fragment buffer ``buf`` (a 16x16 window, row stride ``stride``) is."""
    per_row = stride // FRAG
    return buf.elem_offset // stride // FRAG * per_row + buf.elem_offset % stride // FRAG


def register_wmma(in_dtype: str, acc_dtype: str, a_k_inner: bool = True, b_k_inner: bool = True) -> dict[str, str]:
    """Register (once) WMMA load/fill/mma/store intrinsics for these dtypes and operand layouts;
    returns their names.

    A ``[m, k]`` shared tile is a row-major WMMA ``matrix_a``, a ``[k, m]`` one column-major; for
    ``matrix_b`` (``k x n``) a ``[n, k]`` tile is column-major and a ``[k, n]`` one row-major.
    """
    from tvm.s_tir import TensorIntrin

    names = intrinsic_names(in_dtype, acc_dtype, a_k_inner, b_k_inner)
    makers = {"load_a": lambda: _load(in_dtype, "wmma.matrix_a", "row_major" if a_k_inner else "col_major"),
              "load_b": lambda: _load(in_dtype, "wmma.matrix_b", "col_major" if b_k_inner else "row_major"),
              "fill": lambda: _fill(acc_dtype), "store": lambda: _store(acc_dtype),
              "mma": lambda: _mma(in_dtype, acc_dtype, a_k_inner, b_k_inner)}
    for key, make in makers.items():
        if TensorIntrin.get(names[key], allow_missing=True) is None:
            TensorIntrin.register(names[key], *make())
    return names


def _load(dtype: str, scope: str, layout: str) -> tuple[tirx.PrimFunc, tirx.PrimFunc]:
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(src_: T.handle, dst_: T.handle) -> None:
        src = T.match_buffer(src_, (16, 16), dtype, align=64, offset_factor=16, scope="shared.dyn")
        dst = T.match_buffer(dst_, (16, 16), dtype, align=64, offset_factor=16, scope=scope)
        with T.sblock("root"):
            T.reads(src[0:16, 0:16])
            T.writes(dst[0:16, 0:16])
            for r, c in T.grid(16, 16):
                with T.sblock("load"):
                    vr, vc = T.axis.remap("SS", [r, c])
                    dst[vr, vc] = src[vr, vc]

    @T.prim_func(s_tir=True)
    def impl(src_: T.handle, dst_: T.handle) -> None:
        ld = T.int32()
        fs = T.int32()
        src = T.match_buffer(src_, (16, 16), dtype, align=64, offset_factor=16, scope="shared.dyn",
                             strides=[ld, 1])
        dst = T.match_buffer(dst_, (16, 16), dtype, align=64, offset_factor=16, scope=scope, strides=[fs, 1])
        with T.sblock("root"):
            T.reads(src[0:16, 0:16])
            T.writes(dst[0:16, 0:16])
            T.evaluate(T.tvm_load_matrix_sync(dst.data, 16, 16, 16, _fragment(dst, fs),
                                              src.access_ptr("r"), ld, layout, dtype="void"))

    return desc, impl


def _fill(dtype: str) -> tuple[tirx.PrimFunc, tirx.PrimFunc]:
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(acc_: T.handle) -> None:
        acc = T.match_buffer(acc_, (16, 16), dtype, align=64, offset_factor=16, scope="wmma.accumulator")
        with T.sblock("root"):
            T.reads()
            T.writes(acc[0:16, 0:16])
            for r, c in T.grid(16, 16):
                with T.sblock("init"):
                    vr, vc = T.axis.remap("SS", [r, c])
                    acc[vr, vc] = T.cast(0, dtype)

    @T.prim_func(s_tir=True)
    def impl(acc_: T.handle) -> None:
        fs = T.int32()
        acc = T.match_buffer(acc_, (16, 16), dtype, align=64, offset_factor=16, scope="wmma.accumulator",
                             strides=[fs, 1])
        with T.sblock("root"):
            T.reads()
            T.writes(acc[0:16, 0:16])
            T.evaluate(T.tvm_fill_fragment(acc.data, 16, 16, 16, _fragment(acc, fs), T.float32(0), dtype="void"))

    return desc, impl


def _store(dtype: str) -> tuple[tirx.PrimFunc, tirx.PrimFunc]:
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(acc_: T.handle, dst_: T.handle) -> None:
        acc = T.match_buffer(acc_, (16, 16), dtype, align=64, offset_factor=16, scope="wmma.accumulator")
        dst = T.match_buffer(dst_, (16, 16), dtype, align=64, offset_factor=16, scope="shared.dyn")
        with T.sblock("root"):
            T.reads(acc[0:16, 0:16])
            T.writes(dst[0:16, 0:16])
            for r, c in T.grid(16, 16):
                with T.sblock("store"):
                    vr, vc = T.axis.remap("SS", [r, c])
                    dst[vr, vc] = acc[vr, vc]

    @T.prim_func(s_tir=True)
    def impl(acc_: T.handle, dst_: T.handle) -> None:
        fs = T.int32()
        ld = T.int32()
        acc = T.match_buffer(acc_, (16, 16), dtype, align=64, offset_factor=16, scope="wmma.accumulator",
                             strides=[fs, 1])
        dst = T.match_buffer(dst_, (16, 16), dtype, align=64, offset_factor=16, scope="shared.dyn",
                             strides=[ld, 1])
        with T.sblock("root"):
            T.reads(acc[0:16, 0:16])
            T.writes(dst[0:16, 0:16])
            T.evaluate(T.tvm_store_matrix_sync(acc.data, 16, 16, 16, _fragment(acc, fs), dst.access_ptr("w"),
                                               ld, "row_major", dtype="void"))

    # A float32 tile shares the merged dynamic shared memory with the 16-bit operand tiles, and
    # LowerIntrin resolves a tvm_access_ptr into it to an operand's 16-bit alias ("tvm_access_ptr
    # element type must match the source buffer"). So the pointer is an address_of, which
    # ThreadSync does not see as a write: the barriers against the operand reads before and the
    # write-back reads after are explicit.
    @T.prim_func(s_tir=True)
    def impl_mixed(acc_: T.handle, dst_: T.handle) -> None:
        fs = T.int32()
        ld = T.int32()
        acc = T.match_buffer(acc_, (16, 16), dtype, align=64, offset_factor=16, scope="wmma.accumulator",
                             strides=[fs, 1])
        dst = T.match_buffer(dst_, (16, 16), dtype, align=64, offset_factor=16, scope="shared.dyn",
                             strides=[ld, 1])
        with T.sblock("root"):
            T.reads(acc[0:16, 0:16])
            T.writes(dst[0:16, 0:16])
            T.tvm_storage_sync("shared")
            T.evaluate(T.tvm_store_matrix_sync(acc.data, 16, 16, 16, _fragment(acc, fs), T.address_of(dst[0, 0]),
                                               ld, "row_major", dtype="void"))
            T.tvm_storage_sync("shared")

    return desc, (impl_mixed if dtype == "float32" else impl)


def _mma(in_dtype: str, acc_dtype: str, a_k_inner: bool, b_k_inner: bool) -> tuple[tirx.PrimFunc, tirx.PrimFunc]:
    from tvm.script import tirx as T

    widen = in_dtype != acc_dtype

    def operand(x: tirx.PrimExpr) -> tirx.PrimExpr:
        return tirx.Cast(acc_dtype, x) if widen else x

    def at(buf: tirx.Buffer, row: tirx.PrimExpr, k: tirx.PrimExpr, k_inner: bool) -> tirx.PrimExpr:
        return operand(buf[row, k] if k_inner else buf[k, row])

    @T.prim_func(s_tir=True)
    def desc(a_: T.handle, b_: T.handle, c_: T.handle) -> None:
        a = T.match_buffer(a_, (16, 16), in_dtype, align=64, offset_factor=16, scope="wmma.matrix_a")
        b = T.match_buffer(b_, (16, 16), in_dtype, align=64, offset_factor=16, scope="wmma.matrix_b")
        c = T.match_buffer(c_, (16, 16), acc_dtype, align=64, offset_factor=16, scope="wmma.accumulator")
        with T.sblock("root"):
            T.reads(c[0:16, 0:16], a[0:16, 0:16], b[0:16, 0:16])
            T.writes(c[0:16, 0:16])
            for i, j, k in T.grid(16, 16, 16):
                with T.sblock("mma"):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                    c[vi, vj] = c[vi, vj] + at(a, vi, vk, a_k_inner) * at(b, vj, vk, b_k_inner)

    @T.prim_func(s_tir=True)
    def impl(a_: T.handle, b_: T.handle, c_: T.handle) -> None:
        fa = T.int32()
        fb = T.int32()
        fc = T.int32()
        a = T.match_buffer(a_, (16, 16), in_dtype, align=64, offset_factor=16, scope="wmma.matrix_a",
                           strides=[fa, 1])
        b = T.match_buffer(b_, (16, 16), in_dtype, align=64, offset_factor=16, scope="wmma.matrix_b",
                           strides=[fb, 1])
        c = T.match_buffer(c_, (16, 16), acc_dtype, align=64, offset_factor=16, scope="wmma.accumulator",
                           strides=[fc, 1])
        with T.sblock("root"):
            T.reads(c[0:16, 0:16], a[0:16, 0:16], b[0:16, 0:16])
            T.writes(c[0:16, 0:16])
            T.evaluate(T.tvm_mma_sync(c.data, _fragment(c, fc), a.data, _fragment(a, fa), b.data, _fragment(b, fb),
                                      c.data, _fragment(c, fc), dtype="void"))

    return desc, impl
