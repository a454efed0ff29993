"""No kernel that only casts or moves data: each ``FuseOps`` leaves alone joins its producer or its consumers.

Mixed precision (``targets.mixed_precision``) puts a cast at every border between the fp16/bf16 ops and
the fp32 islands (layer norm, softmax, reductions). ``FuseOps`` fuses a cast into the kernel before it
only when that kernel is one of its own groups (effarch's fused matmul and convolution groups are
already primitive functions it does not reopen), and never into a reduction after it (its rule: an
injective op joins a later group only through injective ops). Each cast it leaves is a launch of its
own: 36 on MiniLM-L6 fp16, 2-3 us each on an H200 even inside a CUDA graph.

This pass runs between ``FuseOps`` and ``FuseTIR`` on ``main``; for each call of a cast-only PrimFunc
``c = cast(x)`` with float ``x`` and result:

- epilogue: when ``x`` comes from a kernel that nothing else reads, that kernel casts its own output
  (the producer's primitive function gets the cast as its last step);
- prologue: else, when every reader of ``c`` is a kernel, each reads ``x`` and casts it itself (a copy
  of the cast per reader: element-wise, so it inlines into the reader's loads);
- else (``c`` is returned, or read by a tuple) it stays.

The schedule rules inline these steps: the tensor-core rule into its operand loads and write-back, the
row rule and dlight's reductions into their row loads.

Layout kernels (``is_layout_kernel``: a transpose, a slice, a reshape that is not a plain view, or a group of
them: every element a copy of one input element) move the same way, but only next to a contraction (a
matmul, batched matmul or convolution): into the contraction that produces their input (its write-back
stores in the new layout) or into the contractions that read them (their operand copies gather). A
transformer's head split (``Reshape -> Slice -> Transpose`` of the fused QKV projection, one kernel each for
q, k and v) and head merge (``Transpose -> Reshape`` after the attention product) are such kernels: GPT at
batch 32 launched four a layer, 3-4 us each on an H200. The GEMM rules read through the copies
(``gpu_tensorcore.inline_copies``) to see the operand's real layout. A pure reshape stays: Relax turns it into
a view of its input (``RewriteDataflowReshape``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tvm
from tvm import relax, s_tir, tirx
from tvm.s_tir.dlight.analysis import get_root_block

from targets.schedules.common import is_copy_block, is_reduction_block

_PRIMITIVE = "Primitive"


def fuse_casts() -> tvm.transform.Pass:
    """The module pass (see the module docstring); a module without such casts comes back unchanged."""

    @tvm.transform.module_pass(opt_level=0, name="effarch.FuseCasts")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        if "main" not in [gv.name_hint for gv in mod.get_global_vars()]:
            return mod
        for _ in range(10_000):  # each step removes one cast binding, so this ends
            step = _one_step(mod)
            if step is None:
                return mod
            mod = step
        return mod

    return _pass


def is_cast_kernel(func: Any) -> bool:
    """Whether ``func`` is a PrimFunc whose one block stores a float cast of a float load, element for element."""
    if not isinstance(func, tirx.PrimFunc) or len(func.params) != 2:
        return False
    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(get_root_block(sch))
    if len(blocks) != 1:
        return False
    body = sch.get(blocks[0]).body
    if not isinstance(body, tirx.BufferStore) or not isinstance(body.value, tirx.Cast):
        return False
    load = body.value.value
    return (isinstance(load, tvm.ir.TensorLoad) and _is_float(load.source.dtype) and _is_float(body.buffer.dtype)
            and len(load.indices) == len(body.indices)
            and all(a.same_as(b) for a, b in zip(load.indices, body.indices, strict=True)))


def is_layout_kernel(func: Any) -> bool:
    """Whether ``func`` is a PrimFunc of one input whose blocks each store a copy of one element (a
    transpose, a strided slice, a reshape), and not a plain reshape (which Relax makes a view)."""
    return copies_only(func) and not relax.analysis.has_reshape_pattern(func)


def copies_only(func: Any) -> bool:
    """Whether ``func`` is a PrimFunc of one input whose every block is a copy (``is_copy_block``)."""
    if not isinstance(func, tirx.PrimFunc) or len(func.params) != 2:
        return False
    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(get_root_block(sch))
    return bool(blocks) and all(is_copy_block(sch.get(b)) for b in blocks)


def _has_contraction(func: Any) -> bool:
    """Whether a PrimFunc has a reduction block reading two buffers (a matmul or a convolution)."""
    if not isinstance(func, tirx.PrimFunc):
        return False
    sch = s_tir.Schedule(func)
    stmts = [sch.get(block) for block in sch.get_child_blocks(get_root_block(sch))]
    return any(is_reduction_block(stmt) and len(stmt.reads) == 2 for stmt in stmts)


def _ndim(v: relax.Expr) -> int:
    return len(v.ty.shape) if isinstance(v.ty, relax.TensorType) and v.ty.shape is not None else -1


def _is_float(dtype: Any) -> bool:
    return str(dtype).startswith(("float", "bfloat"))


@dataclass
class _Main:
    """``main``'s bindings in order, who reads each variable, and the kernels among them."""

    mod: tvm.IRModule
    bindings: list[relax.VarBinding]
    block_of: dict[relax.Var, int]
    readers: dict[relax.Var, list[int]]  # var -> indices of the bindings that read it
    returned: set[relax.Var]

    @classmethod
    def of(cls, mod: tvm.IRModule) -> _Main | None:
        body = mod["main"].body
        if not all(isinstance(b, relax.DataflowBlock) for b in body.blocks):
            return None
        bindings, block_of = [], {}
        for i, block in enumerate(body.blocks):
            for b in block.bindings:
                if not isinstance(b, relax.VarBinding):
                    return None
                bindings.append(b)
                block_of[b.var] = i
        readers: dict[relax.Var, list[int]] = {}
        for i, b in enumerate(bindings):
            for v in _vars_in(b.value):
                readers.setdefault(v, []).append(i)
        return cls(mod, bindings, block_of, readers, set(_vars_in(body.body)))

    def kernel(self, value: relax.Expr) -> bool:
        """A call_tir of a PrimFunc, or a call of a primitive Relax function (a FuseOps group), that
        FuseTIR can merge: no PrimFunc in it scheduled already (library kernels) or opaque."""
        if not isinstance(value, relax.Call):
            return False
        if isinstance(value.op, tvm.ir.Op):
            return value.op.name == "relax.call_tir" and _mergeable(self.mod[value.args[0]])
        if not (isinstance(value.op, relax.GlobalVar) and _is_primitive(self.mod[value.op])):
            return False
        return all(self.kernel(c) for c in self.inner_calls(value))

    def inner_calls(self, value: relax.Call) -> list[relax.Call]:
        """The operator calls (call_tir) in the body of the primitive function ``value`` calls."""
        calls: list[relax.Call] = []
        relax.analysis.post_order_visit(self.mod[value.op].body,
                                        lambda e: calls.append(e) if isinstance(e, relax.Call) else None)
        return [c for c in calls if isinstance(c.op, tvm.ir.Op)]

    def prim_funcs(self, value: relax.Expr) -> list[Any]:
        """The PrimFuncs a kernel's call runs (one for a call_tir, each call_tir of a primitive function)."""
        if isinstance(value.op, tvm.ir.Op):
            return [self.mod[value.args[0]]]
        return [self.mod[c.args[0]] for c in self.inner_calls(value)]

    def contraction(self, value: relax.Expr) -> bool:
        return self.kernel(value) and any(_has_contraction(f) for f in self.prim_funcs(value))

    def moved_input(self, value: relax.Expr) -> tuple[relax.Var, bool] | None:
        """(its input, whether it is a layout kernel) for a cast or layout kernel of one tensor input."""
        if not self.kernel(value):
            return None
        args = _operands(value, self.mod)
        if len(args) != 1 or not isinstance(args[0], relax.Var):
            return None
        funcs = self.prim_funcs(value)
        if isinstance(value.op, tvm.ir.Op) and is_cast_kernel(funcs[0]):
            return args[0], False
        if (funcs and all(copies_only(f) for f in funcs) and any(is_layout_kernel(f) for f in funcs)
                and _ndim(args[0]) > 0):  # a scalar's reshape (a quantized op's zero point) stays as it was
            return args[0], True
        return None


_OPAQUE = 8  # TVM's OpPatternKind kOpaque: FuseOps fuses nothing with such a kernel


def _mergeable(func: Any) -> bool:
    if not isinstance(func, tirx.PrimFunc) or func.attrs is None:
        return False
    return not func.attrs.get("tirx.is_scheduled", False) and int(func.attrs.get("op_pattern", _OPAQUE)) < _OPAQUE


def _vars_in(expr: relax.Expr) -> list[relax.Var]:
    found: list[relax.Var] = []
    relax.analysis.post_order_visit(expr, lambda e: found.append(e) if isinstance(e, relax.Var) else None)
    return found


def _is_primitive(func: Any) -> bool:
    return isinstance(func, relax.Function) and func.attrs is not None and _PRIMITIVE in func.attrs


def _one_step(mod: tvm.IRModule) -> tvm.IRModule | None:
    """``mod`` with one cast kernel merged into its producer or readers, or None when none can be."""
    m = _Main.of(mod)
    if m is None:
        return None
    for i, b in enumerate(m.bindings):
        moved = m.moved_input(b.value)
        if moved is None:
            continue
        x, layout = moved
        takes = m.contraction if layout else m.kernel  # a layout kernel joins contractions only
        producer = next((j for j, p in enumerate(m.bindings[:i]) if p.var.same_as(x)), None)
        if (producer is not None and takes(m.bindings[producer].value) and len(m.readers.get(x, [])) == 1
                and x not in m.returned and m.block_of[x] == m.block_of[b.var]):
            return _into_producer(m, producer, i, layout)
        readers = m.readers.get(b.var, [])
        if (readers and b.var not in m.returned and all(takes(m.bindings[r].value) for r in readers)
                and (not isinstance(x, relax.DataflowVar) or all(_same_block(m, x, r) for r in readers))):
            return _into_readers(m, i, x, readers, layout)
    return None


def _same_block(m: _Main, x: relax.Var, reader: int) -> bool:
    return m.block_of.get(x) == m.block_of.get(m.bindings[reader].var)


def _into_producer(m: _Main, producer: int, cast: int, layout: bool = False) -> tvm.IRModule:
    """The producer's kernel ends with the cast (or layout kernel); its binding now defines the cast's variable."""
    prod, c = m.bindings[producer], m.bindings[cast]
    bb = relax.BlockBuilder(m.mod)
    call = _compose(bb, [prod.value, c.value], link=prod.var,
                    name=_name(prod.value, m.mod) + ("_layout" if layout else "_cast"))
    new = {producer: relax.VarBinding(c.var, call)}
    return _rebuild(m, bb, new, drop={cast})


def _into_readers(m: _Main, cast: int, x: relax.Var, readers: list[int], layout: bool = False) -> tvm.IRModule:
    """Each reader's kernel starts with its own copy of the cast (or layout kernel), reading ``x``. A
    layout kernel's input stays a parameter of its own even where the reader already reads ``x``: a GEMM
    whose two operands are slices of one tensor (attention's q and k) must see two buffers."""
    c = m.bindings[cast]
    bb = relax.BlockBuilder(m.mod)
    new = {}
    for r in dict.fromkeys(readers):
        reader = m.bindings[r]
        call = _compose(bb, [c.value, reader.value], link=c.var, shared=not layout,
                        name=("layout_" if layout else "cast_") + _name(reader.value, m.mod))
        new[r] = relax.VarBinding(reader.var, call)
    return _rebuild(m, bb, new, drop={cast})


def _name(call: relax.Call, mod: tvm.IRModule) -> str:
    gv = call.args[0] if isinstance(call.op, tvm.ir.Op) else call.op
    return str(gv.name_hint)


def _compose(bb: relax.BlockBuilder, calls: list[relax.Call], link: relax.Var, name: str,
             shared: bool = True) -> relax.Call:
    """A call of a new primitive function running ``calls[0]`` then ``calls[1]``, which reads the first's
    result through ``link``; the new function's parameters are both calls' other operands (``shared``: an
    operand both read is one parameter, else the first call's operands are parameters of their own)."""
    operands: list[relax.Expr] = []
    params: list[relax.Var] = []
    envs: list[list[tuple[relax.Expr, relax.Expr]]] = [[], []]
    for n, call in enumerate(calls):
        for e in _operands(call, bb.get()):
            pool = envs[0] + envs[1] if shared else envs[n]
            if e.same_as(link) or any(e.same_as(o) for o, _ in pool):
                continue
            param = relax.Var(f"p{len(params)}", e.ty)
            operands.append(e)
            params.append(param)
            envs[n].append((e, param))
    first_env, second_env = (envs[0] + envs[1],) * 2 if shared else envs
    with bb.function(name, params, attrs={_PRIMITIVE: True}, private=True):
        with bb.dataflow():
            first = _emit(bb, calls[0], first_env)
            out = _emit(bb, calls[1], [*second_env, (link, first)])
            out = bb.emit_output(out)
        gv = bb.emit_func_output(out)
    return bb.normalize(relax.Call(gv, operands))


def _operands(call: relax.Call, mod: tvm.IRModule) -> list[relax.Expr]:
    return list(call.args[1].fields) if isinstance(call.op, tvm.ir.Op) else list(call.args)


def _emit(bb: relax.BlockBuilder, call: relax.Call, env: list[tuple[relax.Expr, relax.Expr]]) -> relax.Expr:
    """``call``'s computation inside the function being built: a call_tir re-emitted with its operands
    replaced per ``env``; a primitive function's bindings inlined."""
    if isinstance(call.op, tvm.ir.Op):
        return bb.emit(_substitute(call, env))
    func = bb.get()[call.op]
    inner = [*env, *zip(func.params, [_substitute(a, env) for a in call.args], strict=True)]
    for block in func.body.blocks:
        for b in block.bindings:
            inner.append((b.var, bb.emit(_substitute(b.value, inner))))
    return _substitute(func.body.body, inner)


def _substitute(expr: relax.Expr, env: list[tuple[relax.Expr, relax.Expr]]) -> relax.Expr:
    for old, new in reversed(env):
        if expr.same_as(old):
            return new
    if isinstance(expr, relax.Tuple):
        return relax.Tuple([_substitute(f, env) for f in expr.fields])
    if isinstance(expr, relax.TupleGetItem):
        return relax.TupleGetItem(_substitute(expr.tuple_value, env), expr.index)
    if isinstance(expr, relax.Call):
        return relax.Call(expr.op, [_substitute(a, env) for a in expr.args], expr.attrs, expr.ty_args)
    return expr


def _rebuild(m: _Main, bb: relax.BlockBuilder, new: dict[int, relax.VarBinding], drop: set[int]) -> tvm.IRModule:
    main = m.mod["main"]
    body = main.body
    blocks: list[list[relax.Binding]] = [[] for _ in body.blocks]
    for i, b in enumerate(m.bindings):
        if i not in drop:
            blocks[m.block_of[b.var]].append(new.get(i, b))
    mod = bb.get()
    seq = relax.SeqExpr([relax.DataflowBlock(bs) for bs in blocks], body.body)
    mod["main"] = relax.Function(main.params, seq, main.ret_ty, main.is_pure, main.attrs)
    return relax.transform.DeadCodeElimination()(mod)
