"""Group nodes (fusions decided by effarch's fuse-operators pass) become one TVM kernel each.

The body of a group is lowered, with the ordinary converters, into its own Relax function marked
``Primitive`` -- the form TVM's FuseOps gives the groups it makes -- and ``main`` calls it. After
LegalizeOps turns the body's ops into ``call_tir``s, FuseTIR merges each primitive function into
one PrimFunc, named after the function (``effarch_<kind>_<node>``). TVM's FuseOps still runs on what
stays in ``main``, but never splits or re-forms our groups: they are calls, not ops, to it.

Parameters: a group input whose value is known at compile time and small (a shape, an axis list,
a scale) is a constant inside the function, so converters that need compile-time values see it;
everything else, weights included, is a parameter of the function.

Multi-stage groups on the GPU (``lower(..., split_multi_stage=True)``, the CUDA target): a group
whose body holds a contraction and another contraction or reduction (Attention: QK^T, Softmax, PV)
would become one PrimFunc that no GPU rule can put on tensor cores (it runs on fallback-style
schedules). Its body's ops are emitted inline into the caller instead (``inline_group``), and TVM's
FuseOps fuses them the usual way: each matmul with its epilogue, reaching the tensor-core rule, the
softmax in a kernel of its own. Groups with one contraction (FusedMatMul, FusedConv) or reductions
only (LayerNorm: one row-wise kernel the reduction rules handle) stay one kernel.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import tvm
from tvm import relax, tirx

from compiler.ir.core import Node, Value
from targets.lowering.registry import LoweringError, describe

KERNEL_PREFIX = "effarch_"  # TVM names its own fused kernels "fused_..."
# Known inputs up to this many elements become constants of the function (same limit as
# targets.lowering.to_relax's inlining); bigger ones are weights and stay parameters.
INLINE_MAX_ELEMENTS = 64


def kernel_names(mod: tvm.IRModule, relax_pipeline: tvm.transform.Pass) -> list[str]:
    """The kernels (PrimFuncs) ``mod`` compiles to through ``relax_pipeline``, sorted by name."""
    built = relax_pipeline(mod)
    return sorted(gv.name_hint for gv, f in built.functions.items() if isinstance(f, tirx.PrimFunc))


# Ops that are one contraction (a GEMM or convolution) or a reduction over an axis, for
# ``multi_stage``; ops of a nested group count by its body.
CONTRACTIONS = frozenset({"MatMul", "Gemm", "MatMulInteger", "QLinearMatMul", "Einsum", "Conv", "ConvTranspose",
                          "ConvInteger", "QLinearConv"})
REDUCTIONS = frozenset({"Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd",
                        "ReduceL1", "ReduceL2", "ReduceLogSumExp", "ReduceSumSquare", "LayerNormalization",
                        "RMSNormalization", "GroupNormalization", "InstanceNormalization", "LpNormalization",
                        "ArgMax", "ArgMin", "CumSum", "TopK"})


def stages(body: Any) -> list[str]:
    """The contractions and reductions of a group's body (a ``Graph``), in order, by op."""
    found: list[str] = []
    for n in body.nodes:
        if n.body is not None:
            found += stages(n.body)
        elif n.op in CONTRACTIONS or n.op in REDUCTIONS:
            found.append(n.op)
    return found


def multi_stage(node: Node) -> bool:
    """Whether the group holds a contraction and at least one more contraction or reduction: one
    PrimFunc of it is beyond every GPU tensor-core rule (see the module's doc)."""
    ops = stages(node.body)
    return any(op in CONTRACTIONS for op in ops) and len(ops) > 1


def inline_group(outer: Any, node: Node) -> None:
    """Lower the group's body node by node into ``outer``'s current function, as if never grouped:
    body inputs and constants alias the outer values, the group's outputs alias the body's."""
    for v in node.body.constants.values():
        if v.const is None:
            raise LoweringError(f"{describe(node)}: constant '{v.name}' of its body has no data")
        outer.known[id(v)] = v.const
    for outer_value, body_input in zip(node.inputs, node.body.inputs, strict=True):
        if outer_value is None:
            raise LoweringError(f"{describe(node)}: a group needs every input")
        known = outer.known.get(id(outer_value))
        weight = known is not None and np.asarray(known).size > INLINE_MAX_ELEMENTS
        if weight and id(outer_value) not in outer.quantized:
            outer.expr(outer_value)  # a weight: one parameter of main, named after the graph's value
        _alias(outer, outer_value, body_input)
    for body_node in node.body.nodes:
        outer._visit(body_node)
    for out, body_out in zip(node.outputs, node.body.outputs, strict=True):
        _alias(outer, body_out, out)


def _alias(outer: Any, src: Value, dst: Value) -> None:
    """``dst`` takes whatever ``outer`` holds for ``src``: expressions, known value, quantized weight."""
    for table in (outer.exprs, outer.nhwc_exprs, outer.known, outer.weight_arrays, outer.quantized):
        if id(src) in table:
            table[id(dst)] = table[id(src)]


def kernel_name(node: Node) -> str:
    """The name of the group's function, and so of its PrimFunc after FuseTIR."""
    kind = node.op.lower().removeprefix("fused")
    return f"{KERNEL_PREFIX}{kind}_{_var_name(node.name or node.outputs[0].name)}"


def _var_name(name: str) -> str:
    """``name`` as a C identifier: it names a parameter of the kernel's CUDA/C source (``0.bias`` of an
    ``nn.Sequential`` would otherwise start with a digit, which nvcc rejects)."""
    name = re.sub(r"\W", "_", name).strip("_") or "v"
    return f"v{name}" if name[0].isdigit() else name


def lower_group(outer: Any, node: Node) -> tuple[list[relax.Expr], list[bool]]:
    """Emit the group's primitive function into ``outer``'s module; return the call's results
    and, for each, whether it is a channels-last (NHWC) value.

    ``outer`` is the lowering in progress (``targets.lowering.to_relax._Lowerer``): its block builder, the
    Relax expression of every IR value, and the values known at compile time."""
    inner = type(outer)(node.body, channels_last=outer.channels_last, pack=outer.pack, int8=outer.int8,
                        split_multi_stage=outer.split_multi_stage, winograd=outer.winograd, bf16=outer.bf16,
                        space_to_depth=outer.space_to_depth)
    inner.in_group = True
    inner.outer = outer
    inner.group_inputs = {id(body): value for value, body in zip(node.inputs, node.body.inputs, strict=True)
                          if value is not None}
    params, args = _signature(outer, inner, node)
    name = kernel_name(node)
    with inner.bb.function(name, params, attrs={"Primitive": True}, pure=True):
        with inner.bb.dataflow():
            for body_node in node.body.nodes:
                inner._visit(body_node)
            nhwc = [inner._nhwc_only(v) for v in node.body.outputs]
            outs = [inner.nhwc(v) if flag else inner._expr(v) for v, flag in zip(node.body.outputs, nhwc,
                                                                                  strict=True)]
            result = inner.bb.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
        inner.bb.emit_func_output(result)
    if inner.weight_vars:
        raise LoweringError(f"{describe(node)}: its body computes a large constant; fold constants first")
    inner_mod = inner.bb.get()
    func = _with_kernels_of(outer, inner_mod, inner_mod[name].without_attr("global_symbol"))
    if inner.outer_params:  # values the outer lowering computed for the body (``_Lowerer.folded_input``)
        func = relax.Function([*func.params, *(p for p, _ in inner.outer_params)], func.body, func.ret_ty,
                              func.is_pure, func.attrs)
        args = [*args, *(arg for _, arg in inner.outer_params)]
    func, constants = _lift_constants(func)
    constants = [_as_weight(outer, inner, name, c) for c in constants]
    func, call_args = _drop_unused_params(func, [*args, *constants])
    call = outer.bb.emit(relax.Call(outer.bb.add_func(func, name), call_args), name_hint=name)
    if len(outs) == 1:
        return [call], nhwc
    return [outer.bb.emit(relax.TupleGetItem(call, i)) for i in range(len(outs))], nhwc


@relax.expr_functor.mutator
class _KernelRenamer(relax.PyExprMutator):  # type: ignore[misc]  # TVM's mutator base is untyped
    """Points ``call_tir``s at the kernels' names in the outer module."""

    def __init__(self, mapping: dict[str, tvm.ir.GlobalVar]) -> None:
        super().__init__()
        self.mapping = mapping

    def visit_global_var_(self, gv: tvm.ir.GlobalVar) -> relax.Expr:
        return self.mapping.get(gv.name_hint, gv)


def _with_kernels_of(outer: Any, inner_mod: tvm.IRModule, func: relax.Function) -> relax.Function:
    """Kernels a converter emitted inside the group (``emit_te``) move to the outer module."""
    mapping = {gv.name_hint: outer.bb.add_func(f, gv.name_hint)
               for gv, f in inner_mod.functions_items() if isinstance(f, tirx.PrimFunc)}
    return _KernelRenamer(mapping).visit_expr(func) if mapping else func


@relax.expr_functor.mutator
class _ConstantLifter(relax.PyExprMutator):  # type: ignore[misc]  # TVM's mutator base is untyped
    """Replaces every constant in a function by a new parameter: FuseTIR accepts no constants in a
    primitive function, not even scalars passed to a ``call_tir`` (Clip's bounds, say)."""

    def __init__(self) -> None:
        super().__init__()
        self.params: list[relax.Var] = []
        self.constants: list[relax.Expr] = []

    def visit_generic_const_(self, op: relax.Expr) -> relax.Expr:
        param = relax.Var(f"const_{len(self.params)}", op.ty)
        self.params.append(param)
        self.constants.append(op)
        return param


def _lift_constants(func: relax.Function) -> tuple[relax.Function, list[relax.Expr]]:
    """``func`` with its constants as trailing parameters, and those constants (the arguments)."""
    lifter = _ConstantLifter()
    body = lifter.visit_expr(func.body)
    if not lifter.params:
        return func, []
    lifted = relax.Function([*func.params, *lifter.params], body, func.ret_ty, func.is_pure, func.attrs)
    return lifted, lifter.constants


def _drop_unused_params(func: relax.Function, args: list[relax.Expr]) -> tuple[relax.Function, list[relax.Expr]]:
    """Parameters the body never reads (a weight a converter replaced by a re-laid-out copy) go."""
    used = relax.analysis.free_vars(func.body)
    keep = [i for i, p in enumerate(func.params) if any(p.same_as(u) for u in used)]
    if len(keep) == len(func.params):
        return func, args
    params = [func.params[i] for i in keep]
    return relax.Function(params, func.body, func.ret_ty, func.is_pure, func.attrs), [args[i] for i in keep]


def _as_weight(outer: Any, inner: Any, group: str, const: relax.Expr) -> relax.Expr:
    """A large constant argument (a weight a converter re-laid out) becomes a weight of ``main``."""
    arr = const.value.numpy()
    if arr.size <= INLINE_MAX_ELEMENTS:
        return const
    name = next((n for c, n in inner.relaid if c.same_as(const)), group)
    return outer.add_weight(name, arr)


def _signature(outer: Any, inner: Any, node: Node) -> tuple[list[relax.Var], list[relax.Expr]]:
    """The function's parameters and the call's arguments; seeds ``inner`` with what is known."""
    params: list[relax.Var] = []
    args: list[relax.Expr] = []

    def add_param(body_value: Value, arg: relax.Expr, nhwc: bool = False) -> None:
        param = relax.Var(_var_name(body_value.name), arg.ty)
        (inner.nhwc_exprs if nhwc else inner.exprs)[id(body_value)] = param
        params.append(param)
        args.append(arg)

    for v in node.body.constants.values():
        _seed(outer, inner, v, v.const, None, add_param)
    for outer_value, body_input in zip(node.inputs, node.body.inputs, strict=True):
        if outer_value is None:
            raise LoweringError(f"{describe(node)}: a group needs every input")
        if outer._nhwc_only(outer_value):  # stays channels-last across the call
            add_param(body_input, outer.nhwc(outer_value), nhwc=True)
            continue
        _seed(outer, inner, body_input, outer.known.get(id(outer_value)), outer_value, add_param)
    return params, args


def _seed(outer: Any, inner: Any, body_value: Value, known: np.ndarray | None, outer_value: Value | None,
          add_param: Callable[[Value, relax.Expr], None]) -> None:
    """Make ``body_value`` available inside the function.

    A small known value is known inside too (converters read shapes and axes from it); unless it
    is a scalar (which converters inline, and ``_lift_constants`` lifts) its data also arrives as
    a parameter, bound in ``main`` to the constant. A weight-only quantized weight stays the integer
    constants that the body's product reads itself (``lowering.weight_only``)."""
    if outer_value is not None and id(outer_value) in outer.quantized:
        inner.quantized[id(body_value)] = outer.quantized[id(outer_value)]
        return
    if known is not None and np.asarray(known).size <= INLINE_MAX_ELEMENTS:
        inner.known[id(body_value)] = known
        if np.ndim(known) == 0:
            return
    elif known is not None:
        inner.weight_arrays[id(body_value)] = known
    arg = outer._expr(outer_value) if outer_value is not None else outer._inline(known)
    add_param(body_value, arg)
