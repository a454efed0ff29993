"""Single row-wise kernels (softmax, log-softmax, layer norm, RMS norm over the last axis) as the CUDA
pipeline meets them -- Relax op, ``LegalizeOps``, ``FuseOps``, ``FuseTIR`` -- for the tests of
``schedules.gpu_rows`` and ``tools/gpu_rows_check.py``; and the same kernel scheduled by effarch's rule
or by dlight's."""

from __future__ import annotations

from typing import Any

from tvm import relax, tirx

from targets.schedules.gpu_rules import fused_kernel

OPS = ("softmax", "log_softmax", "layer_norm", "rms_norm")
EPS = 1e-5


def param_shapes(op: str, shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Shapes of the op's parameters after ``x``: gamma (and beta) over the last axis."""
    return {"layer_norm": [shape[-1:], shape[-1:]], "rms_norm": [shape[-1:]]}.get(op, [])


def _op(op: str, x: relax.Expr, params: list[relax.Var]) -> relax.Expr:
    if op == "softmax":
        return relax.op.nn.softmax(x, axis=-1)
    if op == "log_softmax":
        return relax.op.nn.log_softmax(x, axis=-1)
    if op == "layer_norm":
        return relax.op.nn.layer_norm(x, params[0], params[1], [-1], epsilon=EPS)
    if op == "rms_norm":
        return relax.op.nn.rms_norm(x, params[0], [-1], epsilon=EPS)
    raise ValueError(f"unknown row op {op!r}; known: {', '.join(OPS)}")


def row_kernel(op: str, shape: tuple[int, ...], out_dtype: str = "float32") -> tirx.PrimFunc:
    """The fused kernel of ``op`` over the last axis of a float32 ``x`` of ``shape`` (parameters float32),
    its result cast to ``out_dtype`` inside the kernel (as ``--precision fp16`` models do)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    params = [relax.Var(f"p{i}", relax.TensorType(s, "float32")) for i, s in enumerate(param_shapes(op, shape))]
    with bb.function("main", [x, *params]):
        with bb.dataflow():
            y = bb.emit(_op(op, x, params))
            if out_dtype != "float32":
                y = bb.emit(relax.op.astype(y, out_dtype))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return fused_kernel(bb.get())


def schedule_with(func: tirx.PrimFunc, schedule: str, arch: str) -> tuple[tirx.PrimFunc, str]:
    """``func`` scheduled by effarch's GpuRows ('effarch'; raises if it declines) or by dlight's reduction
    rules ('dlight': Reduction, then GeneralReduction, then Fallback); and the rule that took it."""
    from tvm.s_tir import dlight as dl

    from targets.schedules.gpu_rows import GpuRows
    from targets.schedules.tensorcore_kernels import cuda_target

    target = cuda_target(arch)
    rules: list[Any] = ([GpuRows()] if schedule == "effarch"
                        else [dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()])
    for rule in rules:
        sch = rule.apply(func, target, False)
        if sch is not None:
            return sch.mod["main"].with_attr("tirx.is_scheduled", True), type(rule).__name__
    raise ValueError(f"schedule {schedule!r}: no rule took this kernel")
