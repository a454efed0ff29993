"""Matching patterns in a Relax function's bindings and replacing them with kernel calls: what the CUDA
target's Relax passes (``targets.attention_fusion``, ``targets.gemm_fusion``) share."""

from __future__ import annotations

from typing import Any

import tvm
from tvm import relax, tirx


def dtype_of(e: relax.Expr) -> str:
    """A tensor's element type; '' for anything else (a tuple, a shape)."""
    return str(getattr(e.ty, "dtype", ""))


def static_shape(e: relax.Expr) -> tuple[int, ...] | None:
    shape = getattr(e.ty, "shape", None)
    if shape is None or not hasattr(shape, "__len__"):
        return None
    dims = []
    for d in shape:
        if not isinstance(d, tirx.IntImm):
            return None
        dims.append(int(d))
    return tuple(dims)


def call_of(e: Any, op: str | tuple[str, ...]) -> relax.Call | None:
    ops = (op,) if isinstance(op, str) else op
    if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name in ops:
        return e
    return None


class Bindings:
    """``main``'s bindings and who reads each variable (the bound variables reading it; None for the
    function's result)."""

    def __init__(self, func: relax.Function) -> None:
        self.value: dict[relax.Var, relax.Expr] = dict(relax.analysis.get_var2val(func))
        self.readers: dict[relax.Var, list[relax.Var | None]] = {}
        for var, value in self.value.items():
            for v in relax.analysis.free_vars(value):
                self.readers.setdefault(v, []).append(var)
        for v in relax.analysis.free_vars(func.body.body):
            self.readers.setdefault(v, []).append(None)

    def only_read_once(self, v: relax.Expr) -> bool:
        return isinstance(v, relax.DataflowVar) and len(self.readers.get(v, [])) == 1

    def producer(self, e: relax.Expr, op: str | tuple[str, ...]) -> relax.Call | None:
        """The call of ``op`` bound to ``e`` when only one binding reads ``e``."""
        if not isinstance(e, relax.Var) or not self.only_read_once(e):
            return None
        return call_of(self.value.get(e), op)


def broadcasts(shape: tuple[int, ...], to: tuple[int, ...]) -> bool:
    return all(n in (1, m) for n, m in zip(reversed(shape), reversed(to), strict=False))


def replace_with_kernels(mod: tvm.IRModule, calls: list[tuple[relax.Var, tirx.PrimFunc, list[relax.Expr],
                                                             relax.TensorType]], name: str) -> tvm.IRModule:
    """``mod`` with each (var, kernel, args, type): ``main``'s binding of var bound to ``call_tir(kernel,
    args)`` instead; equal kernels added once, the others as ``name``, ``name_1``, ...; the bindings the calls
    replace are left for ``DeadCodeElimination``, which runs last."""
    import tvm_ffi

    bb = relax.BlockBuilder(mod)
    bound: dict[relax.Var, relax.Expr] = {}
    kernels: dict[str, tvm.ir.GlobalVar] = {}
    for var, kernel, args, ty in calls:
        key = str(tvm_ffi.structural_hash(kernel))
        if key not in kernels:
            symbol = name if not kernels else f"{name}_{len(kernels)}"
            kernels[key] = bb.add_func(kernel.with_attr("global_symbol", symbol), symbol)
        bound[var] = relax.call_tir(kernels[key], relax.Tuple(args), ty)
    main_gv = mod.get_global_var("main")
    bb.update_func(main_gv, ReplaceBindings(bb, bound).visit_expr(mod["main"]))
    return relax.transform.DeadCodeElimination()(bb.get())


@relax.expr_functor.mutator
class ReplaceBindings(relax.PyExprMutator):
    """``main`` with the bindings in ``calls`` bound to their fused calls instead."""

    def __init__(self, bb: relax.BlockBuilder, calls: dict[relax.Var, relax.Expr]) -> None:
        super().__init__(bb.get())
        self.calls = calls

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        for var, call in self.calls.items():
            if binding.var.same_as(var):
                self.builder_.emit_normalized(relax.VarBinding(binding.var, self.builder_.normalize(call)))
                return
        super().visit_var_binding_(binding)
