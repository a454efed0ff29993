"""Lowering a whole effarch graph to a TVM Relax module with the converters of this package.

The module's ``main`` takes the graph inputs, then one parameter per large constant (the weights);
weights stay out of the module and travel in ``Lowered.params`` because embedded constants bloat the
compiled library several times over. Small constants are inlined. ``main`` always returns a Tuple.

Shape-like arguments must be known at compile time. ``lowering.consteval`` computes small values from
constants and static shapes as the nodes are visited (with the evaluator fold-constants uses), so
unfolded exporter output (Shape -> Gather -> Concat -> Reshape) lowers too.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tvm
from tvm import relax, tirx

from compiler.errors import EffarchError
from compiler.ir.core import Node, Value
from compiler.ir.graph import Graph
from targets.lowering import CONVERTERS, Call, LoweringError, consteval, describe, weight_only
from targets.lowering.channels_last import lower_nhwc
from targets.lowering.fused import inline_group, lower_group, multi_stage
from targets.lowering.registry import dims, is_static

logger = logging.getLogger(__name__)

# Constants with more elements than this become function parameters; smaller ones are inlined.
INLINE_MAX_ELEMENTS = 64


@dataclass
class Lowered:
    mod: tvm.IRModule
    input_names: list[str]
    output_names: list[str]
    param_names: list[str] = field(default_factory=list)
    params: list[np.ndarray] = field(default_factory=list)


def lower(g: Graph, *, channels_last: bool = False, pack: int = 0, int8: str = "",
          split_multi_stage: bool = False, winograd: bool = False, bf16: str = "",
          space_to_depth: bool = False) -> Lowered:
    """Lower ``g`` to a Relax module whose ``main`` takes the graph inputs then the weights.

    ``channels_last`` lowers 2-D convolutions and the ops after them NHWC (the CPU targets'
    layout; see ``lowering.channels_last``); ``pack`` > 0 packs the weights of matmuls and
    convolutions in panels of that many output columns (``lowering.packed``); ``int8`` names the
    CPU's integer dot-product family, for which MatMulInteger/ConvInteger with constant weights are
    packed (``lowering.packed_int8``); ``split_multi_stage`` lowers a group holding more than one
    contraction or reduction (attention) op by op, not as one kernel (the GPU's; ``lowering.fused``);
    ``winograd`` computes channels-last 3x3 stride-1 convolutions by Winograd F(2x2,3x3)
    (``lowering.winograd``); ``bf16`` names the CPU's bf16 dot-product kernel, with which MatMul/Gemm
    with constant weights and channels-last convolutions compute on bf16 operands (``--precision bf16``;
    ``lowering.packed_bf16``); ``space_to_depth`` lowers channels-last stride-2 convolutions over few channels
    (a network's first) as stride-1 ones over 2x2 patches folded into channels (``lowering.space_to_depth``)."""
    unsupported = sorted(_unsupported(g))
    if unsupported:
        raise EffarchError(f"cannot lower ops {', '.join(unsupported)}; no converter exists for them")
    return _Lowerer(g, channels_last=channels_last, pack=pack, int8=int8, split_multi_stage=split_multi_stage,
                    winograd=winograd, bf16=bf16, space_to_depth=space_to_depth).run()


def _unsupported(g: Graph) -> set[str]:
    """Ops without a converter; a group node (fusion) is lowered through its body's ops."""
    ops = {n.qualified_op for n in g.nodes if n.body is None and (n.domain or n.op not in CONVERTERS)}
    return ops.union(*(_unsupported(n.body) for n in g.nodes if n.body is not None))


class _Lowerer:
    """The state of one lowering: Relax expression and known value of every IR value."""

    def __init__(self, g: Graph, *, channels_last: bool = False, pack: int = 0, int8: str = "",
                 split_multi_stage: bool = False, winograd: bool = False, bf16: str = "",
                 space_to_depth: bool = False) -> None:
        self.g = g
        self.space_to_depth = space_to_depth
        # Inside a group: the lowering around it, which body input each outer value feeds, and the parameters
        # added for values the outer lowering computes for the group (``folded_input``) with their arguments.
        self.outer: _Lowerer | None = None
        self.group_inputs: dict[int, Value] = {}
        self.outer_params: list[tuple[relax.Var, relax.Expr]] = []
        self.folded: dict[tuple[int, str], relax.Expr] = {}
        self.split_multi_stage = split_multi_stage
        self.winograd = winograd
        self.bb = relax.BlockBuilder()
        self.exprs: dict[int, relax.Expr] = {}
        self.channels_last = channels_last
        self.pack = pack
        self.int8 = int8
        self.bf16 = bf16
        self.nhwc_exprs: dict[int, relax.Expr] = {}  # values held channels-last (4-D, NHWC)
        self.known: dict[int, np.ndarray] = {}
        self.symbols: dict[str, tirx.Var] = {}  # symbolic input dims by name
        self.weight_vars: list[relax.Var] = []
        # Weights a group's body receives as parameters: known here, so converters can re-lay
        # them out at compile time (see Call.weights); a top-level lowering has them in ``known``.
        self.weight_arrays: dict[int, np.ndarray] = {}
        self.in_group = False
        self.relaid: list[tuple[relax.Expr, str]] = []  # in a group: re-laid-out weights, by name
        # DequantizeLinear results read only by weight-only products, which read the integer weight
        # themselves (lowering.weight_only): never lowered as tensors.
        self.quantized: dict[int, weight_only.QuantizedTensor] = {}
        self.lowered = Lowered(tvm.IRModule(), [v.name for v in g.inputs], [v.name for v in g.outputs])

    def run(self) -> Lowered:
        input_vars = [self._input_var(v) for v in self.g.inputs]
        for v in self.g.constants.values():
            if v.const is None:
                raise EffarchError(f"constant '{v.name}' has no data (parsed from text?); load its payload")
            self.known[id(v)] = _storable(v.const)
        with self.bb.function("main", attrs={"num_input": len(input_vars)}):
            with self.bb.dataflow():
                for node in self.g.nodes:
                    self._visit(node)
                outs = [self._expr(v) for v in self.g.outputs]
                result = self.bb.emit_output(relax.Tuple(outs))
            self.bb.emit_func_output(result, params=input_vars + self.weight_vars)
        self.lowered.mod = self._drop_unused_weights(self.bb.get())
        logger.debug("lowered %s: %d nodes, %d weights", self.g.name, len(self.g.nodes),
                     len(self.lowered.params))
        return self.lowered

    def _drop_unused_weights(self, mod: tvm.IRModule) -> tvm.IRModule:
        """Remove weights no kernel reads (a converter replaced them by a re-laid-out copy)."""
        main = mod["main"]
        used = relax.analysis.free_vars(main.body)
        keep = [i for i, var in enumerate(self.weight_vars) if any(var.same_as(u) for u in used)]
        if len(keep) == len(self.weight_vars):
            return mod
        n_in = len(main.params) - len(self.weight_vars)
        params = list(main.params[:n_in]) + [self.weight_vars[i] for i in keep]
        mod["main"] = relax.Function(params, main.body, main.ret_ty, main.is_pure, main.attrs)
        self.lowered.param_names = [self.lowered.param_names[i] for i in keep]
        self.lowered.params = [self.lowered.params[i] for i in keep]
        return mod

    def _input_var(self, v: Value) -> relax.Var:
        """A parameter of ``main``; a symbolic dim becomes a ``tirx.Var`` shared by every input
        that names the same symbol, so the compiled model takes any size there."""
        if v.type is None or v.type.shape is None or any(d is None for d in v.type.shape):
            raise EffarchError(
                f"input '{v.name}' has type {v.type}, with dimensions of unknown size; "
                f"pass --shape {v.name}=d0,d1,... to fix them"
            )
        shape = [self._symbol(d) if isinstance(d, str) else d for d in v.type.shape]
        var = relax.Var(v.name, relax.TensorType(shape, v.type.dtype.numpy_name))
        self.exprs[id(v)] = var
        return var

    def _symbol(self, name: str) -> tirx.Var:
        if name not in self.symbols:
            self.symbols[name] = tirx.Var(name, "int64")
        return self.symbols[name]

    def _expr(self, v: Value) -> relax.Expr:
        """The Relax expression of ``v``, materialising known values on first use."""
        e = self.exprs.get(id(v))
        if e is None and id(v) in self.nhwc_exprs:  # back to the IR's NCHW, once
            e = self.bb.emit(relax.op.permute_dims(self.nhwc_exprs[id(v)], [0, 3, 1, 2]))
            self.exprs[id(v)] = e
        if e is None:
            arr = self.known[id(v)]
            e = self._weight(v, arr) if arr.size > INLINE_MAX_ELEMENTS else self._inline(arr)
            self.exprs[id(v)] = e
        return e

    def _inline(self, arr: np.ndarray) -> relax.Expr:
        return self.bb.normalize(relax.const(np.asarray(arr, order="C"), str(arr.dtype)))

    def _weight(self, v: Value, arr: np.ndarray) -> relax.Var:
        # Only graph constants and Constant nodes are large and known (the evaluator keeps its
        # results small), so every parameter is a weight the user supplied.
        return self.add_weight(v.name, arr)

    def add_weight(self, hint: str, arr: np.ndarray) -> relax.Var:
        """A new parameter of ``main`` holding ``arr``, which travels with the artifact's weights."""
        name = _param_name(hint, self.lowered.param_names)
        var = relax.Var(name, relax.TensorType(list(arr.shape), str(arr.dtype)))
        self.weight_vars.append(var)
        self.lowered.param_names.append(name)
        self.lowered.params.append(arr)
        return var

    def _visit(self, node: Node) -> None:
        consts = [None if v is None else self.known.get(id(v)) for v in node.inputs]
        shapes = [None if v is None else self._shape_of(v) for v in node.inputs]
        values = consteval.evaluate(node, consts, shapes)
        if values is not None:
            for out, val in zip(node.outputs, values, strict=True):
                self.known[id(out)] = val
            return
        if weight_only.defer(self, node):
            return
        try:
            self._convert(node)
        except (TypeError, ValueError, RuntimeError) as exc:
            # A converter that computes with dims it needs as numbers meets a symbolic one.
            if any(s is None for v, s in zip(node.inputs, shapes, strict=True) if v is not None):
                raise LoweringError(f"{describe(node)}: cannot be lowered with symbolic input dims "
                                    f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                                    "pass --shape name=... to fix the input sizes") from exc
            raise

    def _convert(self, node: Node) -> None:
        if node.body is not None and self.split_multi_stage and multi_stage(node):
            inline_group(self, node)  # ops inline: TVM fuses each contraction on its own
            return
        if node.body is not None:  # a group: one primitive function, one kernel
            results, nhwc = lower_group(self, node)
            self._bind_outputs(node, results, nhwc)
            return
        nhwc_result = lower_nhwc(self, node) if self.channels_last else None
        if nhwc_result is not None:
            self._bind_outputs(node, nhwc_result, [True])
            return
        fused = weight_only.lower_product(self, node) if self.quantized else None
        if fused is not None:
            self._bind_outputs(node, fused)
            return
        self._bind_outputs(node, CONVERTERS[node.op](self.call(node)))

    # ---- what converters (and lowering.channels_last) use ----------------------------------------
    def call(self, node: Node, *, nchw: bool = True) -> Call:
        """The converter's view of ``node``. With ``nchw=False`` inputs held NHWC are left out
        (None) of ``args`` rather than transposed back (channels-last converters use that)."""
        args = [None if v is None or (not nchw and self._nhwc_only(v)) or id(v) in self.quantized else self._expr(v)
                for v in node.inputs]
        consts = [None if v is None else self.known.get(id(v)) for v in node.inputs]
        weights = [None if v is None else self.weight_value(v) for v in node.inputs]
        return Call(node, args, consts, self.bb, weights, self._new_weight, self.pack, self.int8, self.bf16)

    def expr(self, v: Value) -> relax.Expr:
        return self._expr(v)

    def is_nhwc(self, v: Value | None) -> bool:
        return v is not None and id(v) in self.nhwc_exprs

    def _nhwc_only(self, v: Value) -> bool:
        return id(v) in self.nhwc_exprs and id(v) not in self.exprs

    def nhwc(self, v: Value) -> relax.Expr:
        """``v`` channels-last, transposing an NCHW value once."""
        e = self.nhwc_exprs.get(id(v))
        if e is None:
            e = self.bb.emit(relax.op.permute_dims(self._expr(v), [0, 2, 3, 1]))
            self.nhwc_exprs[id(v)] = e
        return e

    def folded_input(self, v: Value, key: str,
                     fold: Callable[[relax.BlockBuilder, relax.Expr, bool], relax.Expr]) -> relax.Expr | None:
        """``fold(bb, v, nchw)`` (``v`` as held: NCHW if it is, else channels-last), emitted once per ``key`` in
        ``main``, also when a group reads it (the group then takes the result as a parameter). None when ``v``
        is a value a group computes itself."""
        if self.outer is None:
            found = self.folded.get((id(v), key))
            if found is None:
                nchw = not self._nhwc_only(v)
                found = fold(self.bb, self._expr(v) if nchw else self.nhwc(v), nchw)
                self.folded[(id(v), key)] = found
            return found
        outer_value = self.group_inputs.get(id(v))
        outer = None if outer_value is None else self.outer.folded_input(outer_value, key, fold)
        if outer is None:
            return None
        param = next((p for p, arg in self.outer_params if arg.same_as(outer)), None)
        if param is None:
            param = relax.Var(f"{v.name}_folded".replace(".", "_"), outer.ty)
            self.outer_params.append((param, outer))
        return param

    def weight_value(self, v: Value) -> np.ndarray | None:
        arr = self.known.get(id(v))
        if arr is not None and arr.size > INLINE_MAX_ELEMENTS:
            return arr
        return self.weight_arrays.get(id(v))

    def _new_weight(self, arr: np.ndarray, name: str) -> relax.Expr:
        """A converter's re-laid-out weight: a parameter of ``main``; inside a group a constant,
        which ``lower_group`` turns into a parameter of the group and a weight of ``main``."""
        if self.in_group:
            const = relax.const(arr, str(arr.dtype))
            self.relaid.append((const, name))
            return const
        return self.add_weight(name, arr)

    def _shape_of(self, v: Value) -> tuple[int, ...] | None:
        if id(v) in self.known:
            return tuple(self.known[id(v)].shape)
        shape: tuple[Any, ...] | None
        if self._nhwc_only(v):
            n, h, w, c = dims(self.nhwc_exprs[id(v)])
            shape = (n, c, h, w)
        else:
            e = self.exprs.get(id(v))
            shape = None if e is None else tuple(dims(e))
        # Values of symbolic size are only known when the model runs: nothing to evaluate now.
        return shape if shape is not None and is_static(shape) else None

    def _bind_outputs(self, node: Node, result: relax.Expr | Sequence[relax.Expr],
                      nhwc: Sequence[bool] = ()) -> None:
        """Bind the node's outputs; those flagged in ``nhwc`` are channels-last values."""
        results = [result] if isinstance(result, relax.Expr) else list(result)
        if len(results) < len(node.outputs):
            raise LoweringError(f"{describe(node)}: produced {len(results)} outputs, "
                                f"the node has {len(node.outputs)}")
        for i, (out, r) in enumerate(zip(node.outputs, results, strict=False)):
            # An already-bound result (Identity, a Gemm without bias) needs no alias binding.
            bound = r if isinstance(r, relax.Var) else self.bb.emit(r, name_hint=_var_name(out.name))
            if i < len(nhwc) and nhwc[i]:
                self.nhwc_exprs[id(out)] = bound
            else:
                self.exprs[id(out)] = bound


def _var_name(name: str) -> str:
    name = re.sub(r"\W", "_", name)
    return name if name[:1].isalpha() or name[:1] == "_" else f"v{name}"


def _param_name(name: str, taken: list[str]) -> str:
    base = _var_name(name)
    candidate, i = base, 1
    while candidate in taken:
        candidate, i = f"{base}_{i}", i + 1
    return candidate


def _storable(arr: np.ndarray) -> np.ndarray:
    """4-bit weights (ml_dtypes int4/uint4) are widened to 8 bits, values unchanged: TVM's runtime
    and the artifact's safetensors have no 4-bit type, so the artifact stores one per byte."""
    if arr.dtype.name in ("int4", "uint4"):
        return arr.astype(np.int8 if arr.dtype.name == "int4" else np.uint8)
    return arr
