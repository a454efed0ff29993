"""Mixed precision for the GPU: contractions in fp16/bf16 on tensor cores, accuracy-critical ops in fp32.

TVM's ``ToMixedPrecision`` rewrites only ``main``: effarch's fused groups (``lowering.fused``: the
FusedMatMul/FusedConv/Attention primitive functions) are calls it cannot see into, so their matmuls
and convolutions stayed fp32; it also knows only float16. This pass decides the precision here,
with one policy for ``main`` and every primitive function it calls:

- contractions (matmul, conv1d/2d/3d; conv transposes in fp16) take low-precision operands. fp16
  accumulates in fp16 (TVM's tensor-core schedules fail on fp16 inputs with fp32 accumulation);
  bf16 accumulates in fp32 (bf16's 8-bit mantissa would lose a long dot product) and rounds the
  result to bf16;
- bf16 only: a convolution that 40 or more convolutions follow (MobileNetV2's first 12 of 52) stays
  fp32 with its operands, since bf16's rounding there, amplified by the depth after it, cost
  MobileNetV2 its accuracy (see ``DEEP_CONVS``);
- softmax, normalizations, reductions (sum, mean, variance, ...), exp/log/power and everything not
  listed below compute in fp32, their low-precision operands cast up first;
- layout and element-wise ops follow their operands: low precision when any float operand is low
  (the fp32 ones are cast down), fp32 otherwise (the embedding lookup before the first matmul);
- a primitive function's float parameters become low precision when ``main`` passes it a low
  operand, so a fused kernel reads half the bytes; ``main`` keeps fp32 inputs and weights (the
  build casts the weights once, see ``targets.cuda.lift_weight_transforms``) and its outputs are cast
  back to fp32, so the artifact's boundary stays fp32.
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm import relax
from tvm.relax import op as R
from tvm.relax.expr_functor import PyExprMutator, mutator

LOW_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}
PRECISIONS = ("fp32", "fp16", "bf16")

_CONVS = {"relax.nn.conv1d": R.nn.conv1d, "relax.nn.conv2d": R.nn.conv2d, "relax.nn.conv3d": R.nn.conv3d}
_CONV_TRANSPOSES = {"relax.nn.conv1d_transpose", "relax.nn.conv2d_transpose"}
# Ops whose result in low precision is as good as its operands: layout, selection, element-wise
# arithmetic without exponent-range hazards, max pooling and short averages.
_FOLLOW = frozenset(f"relax.{n}" for n in (
    "add", "subtract", "multiply", "divide", "negative", "maximum", "minimum", "abs", "clip", "where",
    "nn.relu", "nn.leakyrelu", "nn.gelu", "nn.gelu_tanh", "nn.silu", "sigmoid", "tanh", "erf", "sqrt",
    "rsqrt", "square", "floor", "ceil", "round", "sign",
    "reshape", "permute_dims", "expand_dims", "squeeze", "flatten", "broadcast_to", "concat", "split",
    "strided_slice", "dynamic_strided_slice", "take", "repeat", "tile", "flip", "nn.pad", "layout_transform",
    "nn.max_pool1d", "nn.max_pool2d", "nn.max_pool3d", "nn.avg_pool2d", "nn.adaptive_avg_pool2d",
    "image.resize2d", "max", "min", "astype"))


def low_dtype(precision: str) -> str:
    return LOW_DTYPES[precision]


def _tensor_dtype(expr: relax.Expr) -> str | None:
    ty = getattr(expr, "ty", None)
    return str(ty.dtype) if isinstance(ty, relax.TensorType) else None


@mutator
class _MixedPrecision(PyExprMutator):  # type: ignore[misc]
    """One function's rewrite; ``fn_cache`` is shared, so each primitive function converts once."""

    def __init__(self, mod: tvm.IRModule, low: str, state: dict[str, Any], output: Any = None) -> None:
        super().__init__(mod)
        self.low = low
        self.acc = "float16" if low == "float16" else "float32"
        self.state = state  # {"mod": original module, "converted": {(name, mask): GlobalVar}}
        self.output = output  # main's output tuple: its fields go back to fp32
        # One cast per value and type within a binding block, however many ops read it: a layer norm
        # read by Q, K, V and a residual casts once, and fusion can then put that cast in its epilogue.
        self.casts: dict[tuple[relax.Expr, str], relax.Expr] = {}

    # ---- casts --------------------------------------------------------------------------------
    def _cast(self, expr: relax.Expr, frm: str, to: str) -> relax.Expr:
        if isinstance(expr, relax.Tuple):
            return relax.Tuple([self._cast(f, frm, to) for f in expr.fields])
        if _tensor_dtype(expr) != frm:
            return expr
        if not isinstance(expr, relax.Var):
            return self.builder_.emit(R.astype(expr, to))
        key = (expr, to)
        if key not in self.casts:
            self.casts[key] = self.builder_.emit(R.astype(expr, to))
        return self.casts[key]

    def visit_binding_block_(self, block: relax.BindingBlock) -> relax.BindingBlock:
        self.casts = {}  # a block's variables are not visible in the next one
        return super().visit_binding_block_(block)

    def visit_dataflow_block_(self, block: relax.DataflowBlock) -> relax.BindingBlock:
        self.casts = {}
        return super().visit_dataflow_block_(block)

    def _down(self, expr: relax.Expr) -> relax.Expr:
        return self._cast(expr, "float32", self.low)

    def _up(self, expr: relax.Expr) -> relax.Expr:
        return self._cast(expr, self.low, "float32")

    def _any_low(self, args: list[relax.Expr]) -> bool:
        for a in args:
            if isinstance(a, relax.Tuple):
                if self._any_low(list(a.fields)):
                    return True
            elif _tensor_dtype(a) == self.low:
                return True
        return False

    # ---- rewriting ----------------------------------------------------------------------------
    def visit_tuple_(self, tup: relax.Tuple) -> relax.Expr:
        fields = [self.visit_expr(f) for f in tup.fields]
        if self.output is not None and tup.same_as(self.output):
            fields = [self._up(f) for f in fields]
        return relax.Tuple(fields)

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        args = [self.visit_expr(a) for a in call.args]
        op = call.op
        if call in self.state.get("fp32_calls", {}):
            return self._in_fp32(call, args)
        if isinstance(op, relax.GlobalVar):
            return self._call_function(op, args, call)
        if not isinstance(op, tvm.ir.Op):
            return relax.Call(op, [self._up(a) for a in args], call.attrs, call.ty_args)
        name = op.name
        if name == "relax.matmul" and self._contraction_operands(args):
            a, b = (self._down(x) for x in args)
            return self._rounded(R.matmul(a, b, out_dtype=self.acc))
        if name in _CONVS and self._contraction_operands(args):
            x, w = (self._down(v) for v in args)
            at = call.attrs
            return self._rounded(_CONVS[name](x, w, strides=at.strides, padding=at.padding, dilation=at.dilation,
                                              groups=at.groups, data_layout=at.data_layout,
                                              kernel_layout=at.kernel_layout, out_layout=at.out_layout,
                                              out_dtype=self.acc))
        if name in _CONV_TRANSPOSES and self.acc == self.low and self._contraction_operands(args):
            return relax.Call(op, [self._down(a) for a in args], call.attrs, call.ty_args)
        if name in _FOLLOW and self._any_low(args):
            if name == "relax.astype":
                return relax.Call(op, args, call.attrs, call.ty_args)
            return relax.Call(op, [self._down(a) for a in args], call.attrs, call.ty_args)
        if name in _FOLLOW:
            return relax.Call(op, args, call.attrs, call.ty_args)
        return relax.Call(op, [self._up(a) for a in args], call.attrs, call.ty_args)

    def _in_fp32(self, call: relax.Call, args: list[relax.Expr]) -> relax.Expr:
        """``call`` as it was: fp32 operands (low ones cast up), a primitive function unconverted."""
        op = call.op
        if isinstance(op, relax.GlobalVar):
            key = (op.name_hint, "fp32")
            if key not in self.state["converted"]:
                self.state["converted"][key] = self.builder_.add_func(self.state["mod"][op], op.name_hint)
            op = self.state["converted"][key]
        return relax.Call(op, [self._up(a) for a in args], call.attrs, call.ty_args)

    def _contraction_operands(self, args: list[relax.Expr]) -> bool:
        """Float operands only: integer (quantized) contractions keep their types."""
        return len(args) == 2 and all(_tensor_dtype(a) in ("float32", self.low) for a in args)

    def _rounded(self, expr: relax.Call) -> relax.Expr:
        if self.acc == self.low:
            return expr
        return R.astype(self.builder_.emit(expr), self.low)

    def _call_function(self, gv: relax.GlobalVar, args: list[relax.Expr], call: relax.Call) -> relax.Expr:
        func = self.state["mod"][gv]
        if not _is_primitive(func):
            return relax.Call(gv, [self._up(a) for a in args], call.attrs, call.ty_args)
        args = [self._down(a) for a in args] if self._any_low(args) or _contracts(func) else args
        mask = tuple(_tensor_dtype(a) == self.low for a in args)
        key = (gv.name_hint, mask)
        if key not in self.state["converted"]:
            self.state["converted"][key] = self._convert_primitive(gv, func, mask)
        return relax.Call(self.state["converted"][key], args)

    def _convert_primitive(self, gv: relax.GlobalVar, func: relax.Function, mask: tuple[bool, ...]) -> Any:
        params = []
        inner = _MixedPrecision(self.state["mod"], self.low, self.state)
        for p, low in zip(func.params, mask, strict=True):
            if low and _tensor_dtype(p) == "float32":
                new = relax.Var(p.name, relax.TensorType(p.ty.shape, self.low))
                inner.set_var_remap(p, new)
                params.append(new)
            else:
                params.append(p)
        body = inner.visit_expr(relax.Function(params, func.body, func.ret_ty, func.is_pure, func.attrs))
        converted = relax.Function(body.params, body.body, None, func.is_pure, func.attrs)
        new_gv = self.builder_.add_func(converted, gv.name_hint)
        return new_gv


def _is_primitive(func: Any) -> bool:
    return isinstance(func, relax.Function) and func.attrs is not None and "Primitive" in func.attrs


def _contracts(func: relax.Function) -> bool:
    """Whether a primitive function holds a float matmul or convolution (its inputs go low)."""
    found = []

    def visit(expr: relax.Expr) -> None:
        contraction = ("relax.matmul", *_CONVS, *_CONV_TRANSPOSES)
        if (isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name in contraction
                and all(_tensor_dtype(a) == "float32" for a in expr.args)):
            found.append(expr.op.name)

    relax.analysis.post_order_visit(func.body, visit)
    return bool(found)


def to_mixed_precision(mod: tvm.IRModule, precision: str) -> tvm.IRModule:
    """``mod`` with ``main`` and the primitive functions it calls in ``precision`` (fp16/bf16)."""
    low = low_dtype(precision)
    main = mod["main"]
    state: dict[str, Any] = {"mod": mod, "converted": {}}
    if low == "bfloat16":
        state["fp32_calls"] = dict.fromkeys(deep_convolutions(mod))
    output = _output_tuple(main)
    # The rewriter's module lacks the primitive functions, so their converted forms take their names.
    kept = {gv: f for gv, f in mod.functions.items() if not _is_primitive(f)}
    rewriter = _MixedPrecision(tvm.IRModule(kept), low, state, output)
    new_main = rewriter.visit_expr(main)
    new_mod = rewriter.builder_.get()
    new_mod["main"] = relax.Function(new_main.params, new_main.body, None, main.is_pure, main.attrs)
    return relax.transform.DeadCodeElimination(["main"])(new_mod)


def _output_tuple(main: relax.Function) -> Any:
    """The Tuple that ``main`` returns (bound in its last block), or None."""
    body = main.body
    for block in body.blocks:
        for binding in block.bindings:
            if binding.var.same_as(body.body) and isinstance(binding.value, relax.Tuple):
                return binding.value
    return body.body if isinstance(body.body, relax.Tuple) else None


# bf16 keeps the convolutions that DEEP_CONVS or more convolutions follow in fp32. bf16's 8-bit mantissa
# rounds every activation and weight by up to 2^-9, and an error that enters a deep network early is
# amplified by each layer after it. MobileNetV2 (52 convolutions, zoo weights), simulated in PyTorch
# with effarch's bf16 rounding (operands, fp32 accumulation, rounded result and epilogue), three
# inputs: all bf16 gives cosine 0.9933/0.9945/0.9938 against fp32 (0.9939 measured on the H200); one
# layer at a time in bf16, 1 - cosine is 1.8e-3 for the first convolution, 1.4e-3, 9e-4, 8e-4 for the
# next three and falls below 1e-4 after the 13th; the first convolution and every depthwise one in fp32
# reach only 0.9957-0.9967, the first 9 convolutions 0.9990-0.9991, the first 12 (the convolutions
# that 40 or more follow) 0.99934-0.99950. effarch's own module built for the CPU (LLVM rounds a fused
# kernel's bf16 steps once, so it reads higher): 0.9958/0.9953/0.9944 without the rule, 0.99955/
# 0.99968/0.99961 with it. The rest (40 of 52, every convolution from 28x28 on, the pointwise ones on
# tensor cores) stays bf16. ResNet-18 (20 convolutions), the transformers (none) and
# every fp16 build are unchanged: fp16's 11-bit mantissa gives MobileNetV2 0.99976 as it is.
DEEP_CONVS = 40


def _convolutions(expr: relax.Expr, mod: tvm.IRModule) -> int:
    """Float convolutions ``expr`` runs: a conv op, or those in the primitive function it calls."""
    if not isinstance(expr, relax.Call):
        return 0
    if isinstance(expr.op, relax.GlobalVar):
        func = mod[expr.op]
        if not _is_primitive(func):
            return 0
        found: list[int] = []
        relax.analysis.post_order_visit(func.body, lambda e: found.append(_convolutions(e, mod)))
        return sum(found)
    return int(isinstance(expr.op, tvm.ir.Op) and expr.op.name in _CONVS)


def _vars_read(expr: relax.Expr) -> list[relax.Var]:
    used: list[relax.Var] = []
    relax.analysis.post_order_visit(expr, lambda e: used.append(e) if isinstance(e, relax.Var) else None)
    return used


def deep_convolutions(mod: tvm.IRModule) -> list[relax.Call]:
    """``main``'s calls holding a convolution that DEEP_CONVS or more convolutions follow on a path to
    the output (see DEEP_CONVS)."""
    main = mod["main"]
    bindings = [b for block in main.body.blocks for b in block.bindings if isinstance(b, relax.VarBinding)]
    readers: dict[relax.Var, list[relax.VarBinding]] = {}
    for b in bindings:
        for v in dict.fromkeys(_vars_read(b.value)):
            readers.setdefault(v, []).append(b)
    after: dict[relax.Var, int] = {}  # the most convolutions on a path from the variable to the output
    for b in reversed(bindings):
        after[b.var] = max((_convolutions(r.value, mod) + after[r.var] for r in readers.get(b.var, [])), default=0)
    return [b.value for b in bindings if _convolutions(b.value, mod) and after[b.var] >= DEEP_CONVS]
