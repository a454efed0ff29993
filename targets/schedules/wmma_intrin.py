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


SHARED_LOAD = "effarch_wmma_load_shared"  # the device function ``shared_load_source`` defines
SHARED_MARK = "effarch_wmma_shared_next"  # printed before a fragment load that reads shared memory


def intrinsic_names(in_dtype: str, acc_dtype: str, a_k_inner: bool = True, b_k_inner: bool = True,
                    shared_loads: bool = False) -> dict[str, str]:
    """Names of the five intrinsics one GEMM needs (``register_wmma`` registers them). ``*_k_inner``:
    the operand's shared tile is ``[rows, k]`` (else ``[k, rows]``); ``shared_loads``: the fragment
    loads name shared memory's state space (``shared_load_source``)."""
    a, c = _short(in_dtype), _short(acc_dtype)
    la, lb = "mk" if a_k_inner else "km", "nk" if b_k_inner else "kn"
    sh = "_sh" if shared_loads else ""
    return {"load_a": f"effarch_wmma_load_a_{la}_{a}{sh}", "load_b": f"effarch_wmma_load_b_{lb}_{a}{sh}",
            "fill": f"effarch_wmma_fill_{c}", "store": f"effarch_wmma_store_{c}",
            "mma": f"effarch_wmma_mma_{la}_{lb}_{a}{c}"}


def _fragment(buf: tirx.Buffer, stride: tirx.PrimExpr) -> tirx.PrimExpr:
    """Which 16x16 fragment of a fragment buffer ``buf`` (a 16x16 window, row stride ``stride``) is."""
    per_row = stride // FRAG
    return buf.elem_offset // stride // FRAG * per_row + buf.elem_offset % stride // FRAG


def register_wmma(in_dtype: str, acc_dtype: str, a_k_inner: bool = True, b_k_inner: bool = True,
                  shared_loads: bool = False) -> dict[str, str]:
    """Register (once) WMMA load/fill/mma/store intrinsics for these dtypes and operand layouts;
    returns their names.

    A ``[m, k]`` shared tile is a row-major WMMA ``matrix_a``, a ``[k, m]`` one column-major; for
    ``matrix_b`` (``k x n``) a ``[n, k]`` tile is column-major and a ``[k, n]`` one row-major.
    ``shared_loads``: see ``shared_load_source``.
    """
    from tvm.s_tir import TensorIntrin

    names = intrinsic_names(in_dtype, acc_dtype, a_k_inner, b_k_inner, shared_loads)
    a_layout, b_layout = "row_major" if a_k_inner else "col_major", "col_major" if b_k_inner else "row_major"
    makers = {"load_a": lambda: _load(in_dtype, "wmma.matrix_a", a_layout, shared_loads),
              "load_b": lambda: _load(in_dtype, "wmma.matrix_b", b_layout, shared_loads),
              "fill": lambda: _fill(acc_dtype), "store": lambda: _store(acc_dtype),
              "mma": lambda: _mma(in_dtype, acc_dtype, a_k_inner, b_k_inner)}
    for key, make in makers.items():
        if TensorIntrin.get(names[key], allow_missing=True) is None:
            TensorIntrin.register(names[key], *make())
    return names


def shared_load_source() -> str:
    """CUDA device functions ``effarch_wmma_load_shared(fragment, pointer, ldm)``: ``wmma.load`` with the
    ``.shared`` state space, for every fragment the intrinsics use (matrix_a / matrix_b, row / col major,
    float16 / bfloat16). ``nvcuda::wmma::load_matrix_sync`` takes a generic pointer, and nvcc 13 compiles it
    to 4-byte generic loads (``LD.E``) and ``MOVM`` transposes even from shared memory: a bf16 kernel with
    128 HMMA had 192 LD.E and 64 MOVM; naming the state space, ptxas emits 48 ``LDSM`` (ldmatrix) instead.
    ``use_shared_loads`` puts them in a kernel file."""
    def one(use: str, layout: str, ctype: str, ptx_type: str, regs: int) -> str:
        outs = ",".join(f"%{i}" for i in range(regs))
        bind = ", ".join(f'"=r"(r[{i}])' for i in range(regs))
        frag = f"nvcuda::wmma::fragment<nvcuda::wmma::{use}, 16, 16, 16, {ctype}, nvcuda::wmma::{layout}>"
        op = f"wmma.load.{use[-1]}.sync.aligned.{layout[:3]}.m16n16k16.shared.{ptx_type}"
        return (f"__device__ __forceinline__ void {SHARED_LOAD}({frag}& f, const {ctype}* p, int ldm) {{\n"
                f"  unsigned* r = reinterpret_cast<unsigned*>(&f.x[0]);\n"
                f"  unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(p));\n"
                f'  asm volatile("{op} {{{outs}}}, [%{regs}], %{regs + 1};" : {bind} : "r"(s), "r"(ldm) : "memory");\n'
                f"}}\n")
    # registers per fragment: 8 bfloat16 (4 x 32 bits) or 16 float16 (8 x 32 bits) per thread
    fragments = [(use, layout, *kind) for use in ("matrix_a", "matrix_b") for layout in ("row_major", "col_major")
                 for kind in (("nv_bfloat16", "bf16", 4), ("half", "f16", 8))]
    return (f"#include <mma.h>\n__device__ __forceinline__ void {SHARED_MARK}() {{}}\n"
            + "".join(one(*fragment) for fragment in fragments))


def use_shared_loads(source: str) -> str:
    """CUDA ``source`` with each fragment load marked by the ``shared_loads`` intrinsics (a call of
    ``SHARED_MARK`` printed just before it) made a call of ``SHARED_LOAD``, whose definitions are added
    before the first kernel. (The load itself stays ``tvm_load_matrix_sync`` in TIR: TVM's fragment
    inference reads fragment shapes and layouts from it.) A source without marks is returned as it is."""
    import re

    first = source.find('extern "C" __global__')
    if SHARED_MARK not in source or first < 0:
        return source
    # TVM's common-subexpression pass may declare an index between the mark and its load: kept, in order
    marked = re.sub(SHARED_MARK + r"\(\);((?:\s*int cse_v\d+ = [^;]*;)*)\s*nvcuda::wmma::load_matrix_sync\(",
                    lambda m: m.group(1).lstrip() + "\n" + SHARED_LOAD + "(", source)
    return marked[:first] + shared_load_source() + marked[first:]


def _load(dtype: str, scope: str, layout: str, shared: bool = False) -> tuple[tirx.PrimFunc, tirx.PrimFunc]:
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

    # a mark for ``use_shared_loads`` (a constant evaluation is dropped as a no-op)
    mark = tirx.call_extern("void", SHARED_MARK) if shared else tirx.IntImm("int32", 0)

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
            T.evaluate(mark)
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
