"""Attention as one kernel on CUDA: a Relax pass that finds scaled dot-product attention in ``main`` and
replaces it with a call of ``targets.attention_kernel``'s fused kernel.

Unfused, a transformer layer's attention is three kernels (the scores GEMM with its scale and mask, the
softmax, the product with V), each a few microseconds at batch 32 on an H200 and each writing its
result to memory for the next to read: MiniLM-L6 at batch 32 in fp16 spent 43 us of 350 on them.

The pattern, as ``targets.mixed_precision`` leaves it in float16 or bfloat16 (``dt``)::

    s = matmul(q, kt)                       # [B, H, Sq, Skv], dt
    s = op(s, x) ...                        # add / subtract / multiply / divide by tensors that
                                            # broadcast to s (the scale, the mask), in dt
    p = astype(softmax(astype(s, float32), axis=-1), dt)
    o = matmul(p, v)                        # [B, H, Sq, Dv], dt
    [o = permute_dims(o, [0, 2, 1, 3])]     # the head merge, when it is o's only reader

with every intermediate read only by the next step. q, kt and v may each be a chain of
``permute_dims``, ``reshape`` and ``strided_slice`` (the head split of a fused QKV projection): the
kernel reads through the chain from the tensor at its start (``layout_chain``), so the split costs no
kernel either. The bindings the call replaces are left dead for ``DeadCodeElimination``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import tvm
from tvm import relax, sym, tirx

from targets import attention_kernel as ak
from targets.relax_match import Bindings, broadcasts, call_of, dtype_of, replace_with_kernels, static_shape

logger = logging.getLogger(__name__)

LAYOUT_OPS = ("relax.permute_dims", "relax.reshape", "relax.strided_slice")
STEP_OPS = {"relax.add": "add", "relax.subtract": "subtract", "relax.multiply": "multiply",
            "relax.divide": "divide"}
NARROW = ("float16", "bfloat16")
MAX_CHAIN = 8
KERNEL_NAME = "fused_attention"


def fuse_attention() -> tvm.transform.Pass:
    """The module pass; a module without the pattern comes back unchanged."""

    @tvm.transform.module_pass(opt_level=0, name="effarch.FuseAttention")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        if "main" not in [gv.name_hint for gv in mod.get_global_vars()]:
            return mod
        found = find_attention(mod["main"])
        if not found:
            return mod
        return _rewrite(mod, found)

    return _pass


@dataclass(frozen=True)
class Match:
    var: relax.Var  # the binding whose value becomes the call
    args: list[relax.Expr]
    attention: ak.Attention
    plan: ak.Plan


def _ints(e: relax.Expr) -> list[int]:
    if isinstance(e, relax.ShapeExpr):
        return [int(x) for x in e.values]
    return [int(x.value) for x in e.fields]


def layout_chain(graph: Bindings, e: relax.Expr) -> tuple[relax.Expr, ak.IndexFn] | None:
    """``e`` as (source, index): ``e[i]`` is ``source[index(i)]`` through the permute_dims / reshape /
    strided_slice bindings before it (each read only on this path, else it stays a kernel of its own
    and is the source). None for a symbolic shape."""
    steps: list[ak.IndexFn] = []
    src = e
    for _ in range(MAX_CHAIN):
        call = graph.producer(src, LAYOUT_OPS) if isinstance(src, relax.DataflowVar) else None
        if call is None:
            break
        x = call.args[0]
        in_shape, out_shape = static_shape(x), static_shape(src)
        if in_shape is None or out_shape is None:
            return None
        step = _layout_step(call, in_shape, out_shape)
        if step is None:
            break
        steps.append(step)
        src = x

    def index(i: Sequence[tirx.Expr]) -> list[tirx.Expr]:
        out = list(i)
        for step in steps:
            out = step(out)
        return out

    return (src, index) if static_shape(src) is not None else None


def _layout_step(call: relax.Call, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> ak.IndexFn | None:
    """The index map of one layout op: its output's index -> its input's."""
    name = call.op.name
    if name == "relax.permute_dims":
        axes = call.attrs.axes
        perm = [int(a) for a in axes] if axes is not None else list(reversed(range(len(in_shape))))

        def permute(i: Sequence[tirx.Expr]) -> list[tirx.Expr]:
            src: list[tirx.Expr] = [tirx.IntImm("int32", 0)] * len(perm)
            for k, a in enumerate(perm):
                src[a] = i[k]
            return src

        return permute
    if name == "relax.reshape":

        def reshape(i: Sequence[tirx.Expr]) -> list[tirx.Expr]:
            flat: tirx.Expr = tirx.IntImm("int32", 0)
            for x, n in zip(i, out_shape, strict=True):
                flat = flat * n + x
            src = []
            for n in reversed(in_shape):
                src.append(flat % n)
                flat = flat // n
            return list(reversed(src))

        return reshape
    if name == "relax.strided_slice":
        axes, begin = _ints(call.args[1]), _ints(call.args[2])
        strides = _ints(call.args[4]) if len(call.args) > 4 else [1] * len(axes)
        if any(b < 0 for b in begin) or any(s < 1 for s in strides):
            return None
        starts = {a % len(in_shape): (b, s) for a, b, s in zip(axes, begin, strides, strict=True)}

        def slice_(i: Sequence[tirx.Expr]) -> list[tirx.Expr]:
            return [starts[k][0] + x * starts[k][1] if k in starts else x for k, x in enumerate(i)]

        return slice_
    return None


def contiguous(shape: tuple[int, ...], index: ak.IndexFn, dims: tuple[int, int, int, int],
                lanes: int = ak.VECTOR) -> bool:
    """Whether ``index`` over ``dims`` = (b, h, row, col) moves one element per col in the tensor's
    row-major order and starts every ``lanes`` cols at a multiple of ``lanes`` elements (vector copies:
    16 bytes of a 16-bit tensor for the default 8)."""
    if dims[3] % lanes:
        return False
    analyzer = sym.Analyzer()
    vs = [tirx.Var(n, "int32") for n in ("b", "h", "r", "cv")]
    for v, n in zip(vs, (dims[0], dims[1], dims[2], dims[3] // lanes), strict=True):
        analyzer.bind(v, tvm.ir.Range(0, n))
    lane = tirx.Var("lane", "int32")
    analyzer.bind(lane, tvm.ir.Range(0, lanes))

    def flat(col: tirx.Expr) -> tirx.Expr:
        out: tirx.Expr = tirx.IntImm("int32", 0)
        for x, n in zip(index([vs[0], vs[1], vs[2], col]), shape, strict=True):
            out = out * n + x
        return analyzer.simplify(out)

    start = flat(vs[3] * lanes)
    step = analyzer.simplify(flat(vs[3] * lanes + lane) - start - lane)
    return isinstance(step, tirx.IntImm) and int(step) == 0 and analyzer.can_prove(tirx.floormod(start, lanes) == 0)


def _product(graph: Bindings, value: relax.Expr, dt: str) -> relax.Call | None:
    """The matmul of two ``dt`` operands that ``value`` is, in ``dt``: a matmul into ``dt``, or one into
    float32 (bfloat16's, ``mixed_precision`` widens its accumulator) cast to ``dt``."""
    call = call_of(value, "relax.matmul")
    if call is None:
        cast = call_of(value, "relax.astype")
        if cast is None or not isinstance(cast.args[0], relax.Var):
            return None
        call = graph.producer(cast.args[0], "relax.matmul")
        if call is None or dtype_of(call) != "float32":
            return None
    elif dtype_of(call) != dt:
        return None
    return call if all(dtype_of(x) == dt for x in call.args) else None


def _match(graph: Bindings, var: relax.Var) -> Match | None:
    """The attention ending in the binding of ``var`` (the product with V), or None."""
    dt = dtype_of(var)
    call = _product(graph, graph.value[var], dt) if dt in NARROW else None
    if call is None:
        return None
    p, v = call.args
    narrowed = graph.producer(p, "relax.astype")
    softmax = graph.producer(narrowed.args[0], "relax.nn.softmax") if narrowed is not None else None
    if softmax is None or int(softmax.attrs.axis) not in (-1, 3):
        return None
    widened = graph.producer(softmax.args[0], "relax.astype")
    if widened is None or dtype_of(softmax.args[0]) != "float32" or dtype_of(widened.args[0]) != dt:
        return None
    s = widened.args[0]
    steps: list[tuple[str, relax.Expr, bool]] = []
    scores = None
    for _ in range(MAX_CHAIN):
        scores = _product(graph, graph.value[s], dt) if graph.only_read_once(s) and s in graph.value else None
        if scores is not None:
            break
        step = graph.producer(s, tuple(STEP_OPS))
        if step is None:
            return None
        lhs, rhs = step.args
        chain_left = (isinstance(lhs, relax.DataflowVar) and graph.only_read_once(lhs)
                      and static_shape(lhs) == static_shape(s))
        other = rhs if chain_left else lhs
        if dtype_of(step) != dt or static_shape(other) is None:
            return None
        steps.append((STEP_OPS[step.op.name], other, not chain_left))
        s = lhs if chain_left else rhs
    if scores is None:
        return None
    q, kt = scores.args
    shapes = [s for s in (static_shape(x) for x in (q, kt, v, var)) if s is not None and len(s) == 4]
    if len(shapes) != 4:
        return None
    (b, h, sq, d), (b2, h2, d2, skv), (b3, h3, skv2, dv), _ = shapes
    if (b2, h2, d2, b3, h3, skv2) != (b, h, d, b, h, skv):
        return None
    if any(len(static_shape(o) or ()) > 4 or not broadcasts(static_shape(o) or (), (b, h, sq, skv))
           for _, o, _ in steps):
        return None
    return _build_match(graph, var, dt, (b, h, sq, skv, d, dv), q, kt, v, steps[::-1])


def _build_match(graph: Bindings, var: relax.Var, dt: str, sizes: tuple[int, ...], q: relax.Expr, kt: relax.Expr,
                 v: relax.Expr, steps: list[tuple[str, relax.Expr, bool]]) -> Match | None:
    b, h, sq, skv, d, dv = sizes
    args: list[relax.Expr] = []

    def arg(e: relax.Expr) -> int:
        for i, a in enumerate(args):
            if a.same_as(e):
                return i
        args.append(e)
        return len(args) - 1

    operands = []
    for e, dims, transposed in ((q, (b, h, sq, d), False), (kt, (b, h, skv, d), True), (v, (b, h, skv, dv), False)):
        chain = layout_chain(graph, e)
        if chain is None:
            return None
        src, index = chain
        if transposed:  # kt is (b, h, d, key); the kernel reads K as (b, h, key, d)
            index = _swap_last(index)
        shape = static_shape(src)
        assert shape is not None
        operands.append(ak.Operand(arg(src), index, contiguous(shape, index, dims)))
    kernel_steps = tuple(ak.Step(op, arg(o), swap) for op, o, swap in steps)
    out_var, out_shape, out_index = var, (b, h, sq, dv), _identity
    merge = _head_merge(graph, var)
    if merge is not None:
        out_var, out_shape, out_index = merge, (b, sq, h, dv), _merged
    out_lanes = ak.OUT_VECTOR if contiguous(out_shape, out_index, (b, h, sq, dv), ak.OUT_VECTOR) else 1
    shapes = [static_shape(a) for a in args]  # every one static: the chains and steps checked theirs
    attention = ak.Attention(dt, b, h, sq, skv, d, dv, tuple((s or (), dtype_of(a)) for s, a in zip(shapes, args,
                                                                                                 strict=True)),
                             operands[0], operands[1], operands[2], kernel_steps, out_shape, out_index, out_lanes)
    plan = ak.plan(attention)
    if plan is None:
        logger.info("attention at %s (%s) stays unfused: the fused kernel does not take its sizes", str(var.name),
                    sizes)
        return None
    return Match(out_var, args, attention, plan)


def _swap_last(index: ak.IndexFn) -> ak.IndexFn:
    return lambda i: index([i[0], i[1], i[3], i[2]])


def _identity(i: Sequence[tirx.Expr]) -> list[tirx.Expr]:
    return list(i)


def _merged(i: Sequence[tirx.Expr]) -> list[tirx.Expr]:
    return [i[0], i[2], i[1], i[3]]


def _head_merge(graph: Bindings, var: relax.Var) -> relax.Var | None:
    """The binding ``permute_dims(var, [0, 2, 1, 3])`` when it is ``var``'s only reader."""
    if not graph.only_read_once(var):
        return None
    (reader,) = graph.readers[var]
    call = call_of(graph.value.get(reader), "relax.permute_dims") if reader is not None else None
    if call is None or call.attrs.axes is None:
        return None
    return reader if [int(a) for a in call.attrs.axes] == [0, 2, 1, 3] else None


def find_attention(func: relax.Function) -> list[Match]:
    graph = Bindings(func)
    found = []
    for var in graph.value:
        m = _match(graph, var)
        if m is not None:
            found.append(m)
    return found


def _rewrite(mod: tvm.IRModule, found: list[Match]) -> tvm.IRModule:
    calls = [(m.var, ak.build(m.attention, m.plan, KERNEL_NAME), m.args,
              relax.TensorType(m.attention.out_shape, m.attention.dtype)) for m in found]
    out = replace_with_kernels(mod, calls, KERNEL_NAME)
    logger.info("cuda: %d attentions fused into one kernel each", len(found))
    return out
