"""GEMMs with their elementwise epilogues as Hopper wgmma kernels: a Relax pass for sm_90 that replaces
each 16-bit ``matmul`` by a 2-D weight, with the elementwise steps after it, by one call of
``targets.gemm_kernel``'s kernel.

Two forms, as ``targets.mixed_precision`` and effarch's lowering leave them:

- a private function effarch's lowering grouped (``Primitive``): ``matmul(x, w)`` (into ``dt``, or into
  float32 then cast: bfloat16's form), then elementwise steps, each reading the step before and at most one
  other input (a parameter or a constant: bias, residual) -- ``add`` / ``subtract`` / ``multiply`` /
  ``divide`` / ``maximum`` / ``minimum``, ``gelu``, ``gelu_tanh``, ``relu``, ``sigmoid``, ``silu``,
  ``tanh``, ``astype``;
- a ``matmul`` in ``main`` itself (a QKV projection before the head split, a language-model head), with
  the casts after it (at most two) while each is the only reader of what it casts.

``w`` is read as it is stored ([K, N]: wgmma's transposed B), or through a ``permute_dims`` of a [N, K]
tensor in ``main``. Taken only where the rows (the product of x's leading dims) are at least ``MIN_ROWS``:
below that the kernel's 64-row tiles leave the GPU idle, and the WMMA kernels of ``gpu_tensorcore`` (with
smaller tiles and split reductions) were already ahead of PyTorch at batch 1.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import tvm
from tvm import relax

from targets import gemm_kernel as gk
from targets.relax_match import Bindings, broadcasts, call_of, dtype_of, replace_with_kernels, static_shape

logger = logging.getLogger(__name__)

KERNEL_NAME = "wgmma_gemm"
MIN_ROWS = 256
MAX_CASTS = 2
UNARY_OPS = {"relax.nn.gelu": "gelu", "relax.nn.gelu_tanh": "gelu_tanh", "relax.nn.relu": "relu",
             "relax.sigmoid": "sigmoid", "relax.nn.silu": "silu", "relax.tanh": "tanh", "relax.astype": "astype"}
BINARY_OPS = {f"relax.{op}": op for op in gk.BINARY}


def fuse_gemms() -> tvm.transform.Pass:
    """The module pass; a module without the pattern comes back unchanged."""

    @tvm.transform.module_pass(opt_level=0, name="effarch.FuseGemms")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        if "main" not in [gv.name_hint for gv in mod.get_global_vars()]:
            return mod
        found = find_gemms(mod)
        if not found:
            return mod
        calls = [(m.var, gk.build(m.gemm, m.plan, KERNEL_NAME), m.args,
                  relax.TensorType(m.gemm.out_shape, m.gemm.out_dtype)) for m in found]
        out = replace_with_kernels(mod, calls, KERNEL_NAME)
        logger.info("cuda: %d GEMMs and their epilogues as wgmma kernels", len(found))
        return out

    return _pass


@dataclass(frozen=True)
class Match:
    var: relax.Var  # main's binding the call replaces
    args: list[relax.Expr]
    gemm: gk.Gemm
    plan: gk.Plan


def find_gemms(mod: tvm.IRModule) -> list[Match]:
    graph = Bindings(mod["main"])
    found = []
    for var, value in graph.value.items():
        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.GlobalVar):
            func = mod[value.op]
            m = (_from_function(func, list(value.args), var)
                 if isinstance(func, relax.Function) and func.attrs and func.attrs.get("Primitive") else None)
        else:
            m = _from_main(graph, var)
        if m is not None:
            found.append(m)
    return found


def _product(value: relax.Expr) -> tuple[relax.Call, str] | None:
    """``(matmul, its output type)`` for a matmul of two 16-bit operands of one type into that type or float32."""
    call = call_of(value, "relax.matmul")
    if call is None:
        return None
    x, w = call.args
    dt = dtype_of(x)
    if dt not in gk.NARROW or dtype_of(w) != dt or dtype_of(call) not in (dt, "float32"):
        return None
    return call, dtype_of(call)


def _from_main(graph: Bindings, var: relax.Var) -> Match | None:
    """A matmul bound in main, and the casts after it while each is the only reader of what it casts (bfloat16's
    product into float32 cast back; a language-model head's logits cast to float32; in bfloat16 both)."""
    found = _product(graph.value[var])
    if found is None:
        return None
    call, product = found
    out_var, steps = var, []
    for _ in range(MAX_CASTS):
        if not graph.only_read_once(out_var):
            break
        (reader,) = graph.readers[out_var]
        cast = call_of(graph.value.get(reader), "relax.astype") if reader is not None else None
        if cast is None or dtype_of(cast) not in (*gk.NARROW, "float32"):
            break
        out_var = reader
        steps.append(gk.Step("astype", dtype_of(cast)))
    x, w = call.args
    w_kmajor = False
    transpose = graph.producer(w, "relax.permute_dims")
    axes = transpose.attrs.axes if transpose is not None else None
    if transpose is not None and len(static_shape(transpose.args[0]) or ()) == 2 \
            and (axes is None or [int(a) for a in axes] == [1, 0]):
        w, w_kmajor = transpose.args[0], True
    return _match(out_var, call, product, x, w, w_kmajor, [], steps)


def _from_function(func: relax.Function, args: list[relax.Expr], var: relax.Var) -> Match | None:
    """The function's body as one kernel: a matmul of two parameters, then elementwise steps, each reading the
    step before (and one parameter or constant); its result is the last step."""
    body = func.body
    if not isinstance(body, relax.SeqExpr) or len(body.blocks) != 1:
        return None
    param = {p: a for p, a in zip(func.params, args, strict=True)}
    bindings = list(body.blocks[0].bindings)
    first = _product(bindings[0].value) if bindings else None
    if first is None:
        return None
    call, product = first
    x, w = call.args
    if x not in param or w not in param:
        return None
    extras: list[relax.Expr] = []
    steps: list[gk.Step] = []
    current = bindings[0].var
    for b in bindings[1:]:
        if isinstance(b.value, relax.Var):  # the output's alias
            if not b.value.same_as(current):
                return None
            current = b.var
            continue
        step = _step(b.value, current, param, extras)
        if step is None:
            return None
        steps.append(step)
        current = b.var
    if not body.body.same_as(current):
        return None
    return _match(var, call, product, param[x], param[w], False, extras, steps)


def _step(value: relax.Expr, current: relax.Var, param: dict, extras: list[relax.Expr]) -> gk.Step | None:
    """``value`` as a step on ``current``; a binary step's other input is appended to ``extras``."""
    if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
        return None
    name, dt = value.op.name, dtype_of(value)
    if dt not in (*gk.NARROW, "float32") or static_shape(value) != static_shape(current):
        return None
    if name in UNARY_OPS and len(value.args) == 1 and value.args[0].same_as(current):
        return gk.Step(UNARY_OPS[name], dt)
    if name not in BINARY_OPS or len(value.args) != 2:
        return None
    lhs, rhs = value.args
    swap = rhs.same_as(current)
    other = lhs if swap else rhs
    if not (swap or lhs.same_as(current)) or other.same_as(current):
        return None
    source = param.get(other) if isinstance(other, relax.Var) else other
    if not isinstance(source, (relax.Var, tvm.ir.expr.Constant)) or dtype_of(source) not in (*gk.NARROW, "float32"):
        return None
    shape = static_shape(source)
    out_shape = static_shape(value)
    if shape is None or out_shape is None or len(shape) > len(out_shape) or not broadcasts(shape, out_shape):
        return None
    extras.append(source)
    return gk.Step(BINARY_OPS[name], dt, 1 + len(extras), swap)


def _match(var: relax.Var, call: relax.Call, product: str, x: relax.Expr, w: relax.Expr, w_kmajor: bool,
           extras: list[relax.Expr], steps: list[gk.Step]) -> Match | None:
    x_shape, w_shape = static_shape(x), static_shape(w)
    if x_shape is None or w_shape is None or len(x_shape) < 2 or len(w_shape) != 2:
        return None
    k, n = (w_shape[1], w_shape[0]) if w_kmajor else w_shape
    if x_shape[-1] != k:
        return None
    args = [x, w, *extras]
    gemm = gk.Gemm(dtype_of(x), product, x_shape, n, w_kmajor,
                   tuple((static_shape(a) or (), dtype_of(a)) for a in args), tuple(steps))
    if gemm.m < MIN_ROWS:
        return None
    plan = gk.plan(gemm)
    if plan is None:
        logger.info("GEMM %s (%d x %d x %d) stays with the schedule rules: the wgmma kernel does not take its "
                    "sizes", str(var.name), gemm.m, n, k)
        return None
    return Match(var, args, gemm, plan)
