"""Single attention graphs built and fused outside a model: ``tools/gpu_attention_check.py`` (which may
not import TVM itself) and its tests use these, as ``tensorcore_kernels`` serves the GEMM check.

A case is a dict: ``b``, ``h``, ``sq``, ``skv``, ``d``, ``dv`` (sizes), ``dtype`` (float16 / bfloat16), ``mask``
(the input named ``mask`` broadcast to the scores, or none), ``steps`` (``mul_add``: scores times ``scale`` plus
the mask; else divided by ``scale``, the mask added on the left), ``merge`` (the heads merged after).
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm import relax
from tvm.relax import op as R

from targets.attention_fusion import fuse_attention
from targets.schedules.tensorcore_kernels import cuda_target


def graph(c: dict[str, Any], shapes: dict[str, tuple[int, ...]], wide: bool = False) -> tvm.IRModule:
    """The case's Relax module: q from one projection, k and v sliced from another, heads split by reshape and
    transpose, the steps in the 16-bit type, softmax in float32, the heads merged (or not) after. The products
    accumulate in float32 and round where the dtype is bfloat16 or ``wide`` (the kernel's arithmetic, which
    the tool's reference test runs on the CPU); float16 ones accumulate in float16 otherwise."""
    dt, b, h, sq, skv, d, dv = c["dtype"], c["b"], c["h"], c["sq"], c["skv"], c["d"], c["dv"]
    params = {n: relax.Var(n, relax.TensorType(s, dt)) for n, s in shapes.items()}
    bb = relax.BlockBuilder()
    with bb.function("main", list(params.values())):
        with bb.dataflow():
            q = bb.emit(R.permute_dims(bb.emit(R.reshape(params["q"], (b, sq, h, d))), [0, 2, 1, 3]))

            def part(lo: int, hi: int, width: int, axes: list[int]) -> Any:
                cut = bb.emit(R.strided_slice(params["kv"], axes=[2], begin=[lo], end=[hi]))
                return bb.emit(R.permute_dims(bb.emit(R.reshape(cut, (b, skv, h, width))), axes))

            k_t, v = part(0, h * d, d, [0, 2, 3, 1]), part(h * d, h * (d + dv), dv, [0, 2, 1, 3])

            def product(x: Any, y: Any) -> Any:
                if dt == "bfloat16" or wide:
                    return bb.emit(R.astype(bb.emit(R.matmul(x, y, out_dtype="float32")), dt))
                return bb.emit(R.matmul(x, y, out_dtype=dt))

            s = product(q, k_t)
            if c["steps"] == "mul_add":
                s = bb.emit(R.multiply(s, params["scale"]))
                s = bb.emit(R.add(s, params["mask"])) if "mask" in params else s
            else:  # divided by the scale, the mask added on the left
                s = bb.emit(R.divide(s, params["scale"]))
                s = bb.emit(R.add(params["mask"], s)) if "mask" in params else s
            p = bb.emit(R.astype(bb.emit(R.nn.softmax(bb.emit(R.astype(s, "float32")), axis=-1)), dt))
            o = product(p, v)
            out = bb.emit_output(bb.emit(R.permute_dims(o, [0, 2, 1, 3])) if c["merge"] else o)
        bb.emit_func_output(out)
    return bb.get()


def fused_kernel(c: dict[str, Any], shapes: dict[str, tuple[int, ...]], arch: str
                 ) -> tuple[tvm.tirx.PrimFunc, list[str], tuple[int, ...]]:
    """The case's one fused kernel, the names of the inputs it takes in order, and its output shape; raises if
    the fusion does not take the case."""
    with cuda_target(arch):
        fused = fuse_attention()(graph(c, shapes))
    calls: list[Any] = []

    def visit(e: Any) -> None:
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name == "relax.call_tir":
            calls.append(e)

    relax.analysis.post_order_visit(fused["main"].body, visit)
    if len(calls) != 1:
        raise ValueError(f"the fusion did not take the case ({len(calls)} kernels)")
    (call,) = calls
    return fused[call.args[0]], [str(a.name) for a in call.args[1].fields], tuple(int(x) for x in call.ty.shape)
