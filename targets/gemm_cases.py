"""Single GEMM-with-epilogue graphs built and fused outside a model: ``tools/gpu_gemm_check.py`` (which may
not import TVM itself) and its tests use these.

A case is a dict: ``x`` (the activation's shape, [..., K]), ``n``, ``dtype`` (float16 / bfloat16), ``wide``
(the product into float32, then cast: bfloat16's form), ``form`` (``function``: a private function as
effarch's lowering groups a matmul and its epilogue; ``main``: the matmul in ``main``, ``main_t``: the same
with the weight a transpose of an [N, K] input) and ``steps``: each ``(op,)`` for a unary op, ``("astype",
dtype)``, or ``(op, input, swap)`` with input ``bias`` ([N]) or ``residual`` (the output's shape). The inputs'
shapes come from the tool (``gpu_gemm_check.shapes``).
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm import relax
from tvm.relax import op as R

from targets.gemm_fusion import fuse_gemms
from targets.schedules.tensorcore_kernels import cuda_target

UNARY = {"gelu": R.nn.gelu, "gelu_tanh": R.nn.gelu_tanh, "relu": R.nn.relu, "sigmoid": R.sigmoid,
         "silu": R.nn.silu, "tanh": R.tanh}
BINARY = {"add": R.add, "subtract": R.subtract, "multiply": R.multiply, "divide": R.divide,
          "maximum": R.maximum, "minimum": R.minimum}


def graph(c: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> tvm.IRModule:
    """The case's Relax module; ``shapes``: its inputs in order (x, w, then the steps' inputs), as the tool
    names them."""
    dt = c["dtype"]
    params = {name: relax.Var(name, relax.TensorType(s, dt)) for name, s in shapes.items()}
    bb = relax.BlockBuilder()

    def body(p: dict[str, relax.Expr], emit: Any) -> relax.Expr:
        w = p["w"]
        if c["form"] == "main_t":
            w = emit(R.permute_dims(w))
        y = emit(R.matmul(p["x"], w, out_dtype="float32" if c["wide"] else dt))
        if c["wide"]:
            y = emit(R.astype(y, dt))
        for step in c["steps"]:
            if step[0] == "astype":
                y = emit(R.astype(y, step[1]))
            elif len(step) == 1:
                y = emit(UNARY[step[0]](y))
            else:
                op, name, swap = step
                y = emit(BINARY[op](p[name], y) if swap else BINARY[op](y, p[name]))
        return y

    if c["form"] == "function":
        fparams = {name: relax.Var(name, v.ty) for name, v in params.items()}
        with bb.function("epilogue", list(fparams.values()), attrs={"Primitive": True}, private=True):
            with bb.dataflow():
                out = bb.emit_output(body(fparams, bb.emit))
            bb.emit_func_output(out)
        gv = bb.get().get_global_var("epilogue")
    with bb.function("main", list(params.values())):
        with bb.dataflow():
            call = relax.Call(gv, list(params.values())) if c["form"] == "function" else None
            out = bb.emit_output(bb.emit(call) if call is not None else body(params, bb.emit))
        bb.emit_func_output(out)
    return bb.get()


def fused_kernel(c: dict[str, Any], shapes: dict[str, tuple[int, ...]], arch: str
                 ) -> tuple[tvm.tirx.PrimFunc, list[str], tuple[int, ...], str]:
    """The case's one kernel, the names of the inputs it takes in order, its output shape and type; raises if
    the fusion does not take the case whole (every step in the kernel)."""
    with cuda_target(arch):
        fused = fuse_gemms()(graph(c, shapes))
    calls: list[Any] = []
    ops: list[str] = []

    def visit(e: Any) -> None:
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op):
            ops.append(e.op.name)
            if e.op.name == "relax.call_tir":
                calls.append(e)

    relax.analysis.post_order_visit(fused["main"].body, visit)
    if len(calls) != 1 or len(ops) != 1:
        raise ValueError(f"the fusion did not take the case whole (main calls {ops})")
    (call,) = calls
    return (fused[call.args[0]], [str(a.name) for a in call.args[1].fields],
            tuple(int(x) for x in call.ty.shape), str(call.ty.dtype))
