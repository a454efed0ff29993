"""Depthwise convolution on NVIDIA GPUs, channels last: consecutive threads own consecutive channels.

fp16/bf16 convolutional networks at batch >= 8 are lowered NHWC on CUDA (``CudaTarget.channels_last_for``).
``LegalizeOps`` + ``FuseTIR`` turn their depthwise layers (``conv2d(..., groups=C, data_layout="NHWC",
kernel_layout="HWIO")``, weight ``[kh, kw, 1, C]``) into a padding block, a reduction block
``out[n, y, x, c] += pad[n, y*s + ry, x*s + rx, c] * w[ry, rx, 0, c]`` and the fused element-wise epilogue (bias
add, clip / ReLU6, a residual add, casts). Without this rule dlight's ``GeneralReduction`` takes it, one output
element per thread, each of its taps a scalar load.

Channels are innermost here, so coalescing needs no shared-memory tile: a thread owns ``vector`` consecutive
channels (one 8-byte load of fp16/bf16, 16 bytes of fp32) of ``cols`` neighbouring outputs along a row, and the
threads of a warp take consecutive channel vectors, so each of its loads and stores covers contiguous bytes. The
thread loads its input window (``k x ((cols - 1) * s + k)`` vectors, the padding computed on the way, into a
register array) and its ``k x k`` weight vectors once, keeps the sums in registers (in the conv's own dtype:
fp16 sums for fp16, as the NCHW rule; the bf16 builds already sum in fp32), and writes each output vector
through the inlined epilogue; the overlap of neighbouring threads' windows is left to L1. An element-wise block
before the padding (a cast ``cast_fusion`` moved into the kernel) is computed in the window's loads. Anything
else returns ``None``.

Checked here (no GPU): MobileNetV2's ten depthwise layers at batch 32 compile with nvcc for sm_90 to 30-84
registers per thread and no spills (``ptxas -v``), fp16 products paired into HFMA2 by nvcc, 8- and 16-byte
global loads and stores (``LDG.E.64`` / ``.128``). Not yet measured on a GPU: ``tools/gpu_depthwise_check.py``
times the rule beside fixed-tile variants of it, dlight's schedule and the NCHW rule on the same layers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from tvm import s_tir, sym, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.s_tir.schedule import SBlockRV
from tvm.target import Target

from targets.schedules.gpu_depthwise import conv_blocks, static_dims

logger = logging.getLogger(__name__)

VECTOR = 4  # channels per thread: 8 bytes of fp16/bf16 (nvcc pairs them into HFMA2), 16 of fp32
COLS = 4  # outputs per thread along a row, where the row length allows
THREADS = 128  # threads per block aimed at; at most MAX_THREADS
MAX_THREADS = 256
MAX_VECTOR_BITS = 128  # 16-byte vectors, sums included (see choose_nhwc_tiles)
REGISTER_WORDS = 128  # window + weights + sums of one thread, in 32-bit words, before cols then vector shrink


@dataclass(frozen=True)
class NhwcTiles:
    """Per thread ``vector`` channels x ``cols`` outputs of a row; per block ``threads_c`` x ``threads_p``
    threads, channel vectors fastest."""

    vector: int
    cols: int
    threads_c: int
    threads_p: int

    @property
    def threads(self) -> int:
        return self.threads_c * self.threads_p


@dataclass(frozen=True)
class NhwcPlan:
    conv: SBlockRV
    pad: SBlockRV | None  # the padding block feeding the conv (None: unpadded)
    prologue: list[SBlockRV]  # element-wise blocks before the padding (a cast moved into the kernel)
    epilogue: list[SBlockRV]  # blocks after the conv, in order; the last writes the kernel's output
    shape: tuple[int, int, int, int]  # output N, H, W, C
    window: tuple[int, int, int, int, int, int]  # kh, kw, stride y, stride x, dilation y, dilation x
    in_bits: int  # of the input and weights
    acc_bits: int  # of the sums


def match_depthwise_nhwc(sch: s_tir.Schedule) -> NhwcPlan | str:
    """The plan, or why this kernel is not an NHWC depthwise convolution."""
    found = conv_blocks(sch, "NHWC")
    if isinstance(found, str):
        return found
    blocks, stmts, at, out, wshape, dshape = found
    conv = stmts[at]
    data, weight = conv.reads
    n, y, x, c, ry, rx, rc = (v.var for v in conv.iter_vars)
    if not all(r.min.same_as(v) for r, v in zip(weight.region, (ry, rx, rc, c), strict=True)):
        return "weight not read as HWIO at [ry, rx, rc, c]"
    if wshape[2] != 1 or wshape[3] != out[3] or dshape[3] != out[3] or dshape[0] != out[0]:
        return f"weight {wshape}, input {dshape}, output {out}: not NHWC groups == in == out channels"
    if [int(v.dom.extent) for v in conv.iter_vars[4:]] != [wshape[0], wshape[1], 1]:
        return "reduction extents not [kh, kw, 1]"
    window = _window(data.region, n, y, x, ry, rx)
    if isinstance(window, str):
        return window
    pad = [i for i in range(at) if stmts[i].writes[0].source.same_as(data.source)]
    prologue = [i for i in range(at) if i not in pad]
    if any(v.iter_type != tirx.IterVar.DataPar for i in prologue for v in stmts[i].iter_vars):
        return "a reduction before the conv"
    reason = _elementwise_epilogue(stmts[at + 1:], conv.writes[0].source, out)
    if reason:
        return reason
    return NhwcPlan(blocks[at], blocks[pad[0]] if pad else None, [blocks[i] for i in prologue],
                    list(blocks[at + 1:]), (out[0], out[1], out[2], out[3]), (wshape[0], wshape[1], *window),
                    int(data.source.dtype.bits), int(conv.writes[0].source.dtype.bits))


def _window(region: list[Any], n: tirx.Var, y: tirx.Var, x: tirx.Var, ry: tirx.Var, rx: tirx.Var
            ) -> tuple[int, int, int, int] | str:
    """Strides and dilations from the input's indices ``[n, y*s + ry*d, x*s + rx*d, ...]``."""
    if not region[0].min.same_as(n):
        return "input not read at the output's image"
    found = []
    for expr, (outer, tap) in ((region[1].min, (y, ry)), (region[2].min, (x, rx))):
        coeffs = sym.detect_linear_equation(expr, [outer, tap])
        if len(coeffs) != 3 or not all(isinstance(k, tirx.IntImm) and k.value > 0 for k in coeffs[:2]):
            return f"input row/column index {expr} not linear in the output position and the tap"
        found.append((int(coeffs[0].value), int(coeffs[1].value)))
    (sy, dy), (sx, dx) = found
    return sy, sx, dy, dx


def _elementwise_epilogue(stmts: list[Any], conv_out: Any, out: list[int]) -> str:
    """Why the blocks after the conv are not an element-wise chain ending in the kernel's output ('' if they are):
    each block that reads the conv's result (or one derived from it) reads it at its own index, so the
    epilogue computes each output element from that element of the sums."""
    derived = [conv_out]
    for s in stmts:
        if any(v.iter_type != tirx.IterVar.DataPar for v in s.iter_vars) or len(s.writes) != 1:
            return "a block after the conv is not element-wise"
        own = [v.var for v in s.iter_vars]
        reads = [r for r in s.reads if any(r.source.same_as(b) for b in derived)]
        for r in reads:
            if len(r.region) != len(own) or not all(rg.min.same_as(v) and _is_one(rg.extent)
                                                    for rg, v in zip(r.region, own, strict=True)):
                return "a block reads the conv's result at another element (a layout change or a reduction)"
        if reads:
            derived.append(s.writes[0].source)
    last = stmts[-1].writes[0].source if stmts else conv_out
    if not any(last.same_as(b) for b in derived) or static_dims(last.shape) != out:
        return "the kernel's output is not the conv's result, element for element"
    return ""


def _is_one(expr: object) -> bool:
    return isinstance(expr, tirx.IntImm) and expr.value == 1


def choose_nhwc_tiles(plan: NhwcPlan, vector: int | None = None, cols: int | None = None) -> NhwcTiles:
    """``VECTOR`` channels (fewer where ``C`` or 16-byte vectors need) x ``COLS`` outputs (a divisor of the row)
    per thread, both halved while the thread's window, weights and sums pass ``REGISTER_WORDS``; threads: every
    channel vector of a pixel (or the largest divisor of their count up to ``THREADS``), then pixels up to
    ``THREADS``. ``vector`` / ``cols`` override the choice (``tools/gpu_depthwise_check.py`` measures variants)."""
    n, ho, wo, c = plan.shape
    kh, kw, _, sx, dy, dx = plan.window
    # At most 16 bytes a vector, sums included: TVM 0.27 writes 8 float32 lanes as a ulonglong4 made from 8
    # values, which nvcc rejects.
    widest = MAX_VECTOR_BITS // max(plan.in_bits, plan.acc_bits)
    v = next(k for k in (min(vector or VECTOR, widest), 4, 2, 1) if k <= widest and c % k == 0)
    cw = cols or next(k for k in (COLS, 2, 1) if wo % k == 0)

    def words(v: int, cw: int) -> int:
        window = ((kh - 1) * dy + 1) * ((cw - 1) * sx + (kw - 1) * dx + 1)
        return -(-((window + kh * kw) * plan.in_bits + cw * plan.acc_bits) * v // 32)

    while vector is None and cols is None and words(v, cw) > REGISTER_WORDS and (cw > 1 or v > 1):
        if cw > 1:
            cw = next(k for k in range(cw // 2, 0, -1) if wo % k == 0)
        else:
            v = next(k for k in range(v // 2, 0, -1) if c % k == 0)
    threads_c = _divisors(c // v, THREADS)[-1]
    fits = _divisors(n * ho * (wo // cw), MAX_THREADS // threads_c)
    threads_p = next((d for d in fits if d * threads_c >= THREADS), fits[-1])
    return NhwcTiles(v, cw, threads_c, threads_p)


def _divisors(total: int, cap: int) -> list[int]:
    """The divisors of ``total`` up to ``cap``, ascending (splits by them leave no partial tile to predicate)."""
    return [d for d in range(1, min(total, cap) + 1) if total % d == 0]


class GpuDepthwiseNhwc(ScheduleRule):
    """effarch's rule for NHWC depthwise convolutions (see the module docstring); declines anything else.
    ``vector`` / ``cols`` fix the per-thread tile (measurement only; the build uses the chosen one)."""

    def __init__(self, vector: int | None = None, cols: int | None = None) -> None:
        self.vector, self.cols = vector, cols

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "cuda":
            return None
        sch = s_tir.Schedule(func)
        try:
            plan = match_depthwise_nhwc(sch)
            if isinstance(plan, NhwcPlan):
                tiles = choose_nhwc_tiles(plan, self.vector, self.cols)
                schedule_depthwise_nhwc(sch, plan, tiles)
        except (s_tir.ScheduleError, IndexError, AttributeError, TypeError) as exc:  # not this shape of kernel
            plan = f"not scheduled ({type(exc).__name__}: {str(exc).strip().splitlines()[0][:120]})"
        if isinstance(plan, str):
            logger.debug("gpu-depthwise-nhwc declines: %s", plan)
            return None
        return sch


def schedule_depthwise_nhwc(sch: s_tir.Schedule, plan: NhwcPlan, t: NhwcTiles) -> None:
    conv = plan.conv
    for block in plan.prologue:  # into the padding: the window loads compute it
        sch.compute_inline(block)
    # The epilogue becomes one block (all but the last inlined into it) written back from the thread's registers.
    for block in plan.epilogue[:-1]:
        sch.compute_inline(block)
    final = plan.epilogue[-1] if plan.epilogue else sch.cache_write(conv, 0, "local")
    if plan.epilogue:
        sch.set_scope(conv, 0, "local")
    n, y, x, c, ry, rx, rc = sch.get_loops(conv)
    c_o, c_t, c_v = sch.split(c, [None, t.threads_c, t.vector])
    x_o, x_r = sch.split(x, [None, t.cols])
    sch.reorder(n, y, x_o, c_o, c_t, ry, rx, rc, x_r, c_v)
    p_o, p_t = sch.split(sch.fuse(n, y, x_o), [None, t.threads_p])
    sch.reorder(p_o, c_o, p_t, c_t)
    # Pixels and channels on separate grid and block axes: fused into one, their div/mod mix (e.g. 98 pixel
    # tiles a map, 2 channel tiles) so that the window and sums are no longer compacted to the thread's
    # registers, and a full-size local array takes their place (MobileNetV2's 576-channel 14x14 layer: 400 us
    # instead of 8 on the H200, 2026-12-02).
    sch.bind(p_o, "blockIdx.x")
    sch.bind(c_o, "blockIdx.y")
    sch.bind(p_t, "threadIdx.y")
    sch.bind(c_t, "threadIdx.x")
    tx = c_t
    weight = sch.cache_read(conv, 1, "local")
    sch.compute_at(weight, tx)
    window = plan.pad if plan.pad is not None else sch.cache_read(conv, 0, "local")
    if plan.pad is not None:
        sch.set_scope(window, 0, "local")
    sch.compute_at(window, tx)
    sch.reverse_compute_at(final, tx)
    sch.vectorize(c_v)  # before splitting off the init: a reduction block without one cannot be vectorized
    init = sch.decompose_reduction(conv, ry)
    for block in (weight, window, final):
        _unroll_vectorize(sch, block, vectorize=True)
    for block in (init, conv):
        _unroll_vectorize(sch, block, vectorize=False)


def _unroll_vectorize(sch: s_tir.Schedule, block: SBlockRV, vectorize: bool) -> None:
    """The block's loops under the thread loop unrolled, the innermost (the channel vector) vectorized."""
    loops = sch.get_loops(block)[4:]  # under the grid and block axes (pixels, channels)
    for loop in loops[:-1]:
        sch.unroll(loop)
    if vectorize:
        sch.vectorize(loops[-1])


def depthwise_nhwc_kernel(batch: int, channels: int, size: int, stride: int, dtype: str, acc: str | None = None,
                          kernel: int = 3) -> tirx.PrimFunc:
    """The fused PrimFunc of ``clip(conv2d(x, w, groups=C) + b, 0, 6)`` in NHWC / HWIO (MobileNet's depthwise
    layer as effarch's channels-last CUDA build lowers it) on a ``size x size`` map, summed in ``acc`` (None:
    ``dtype``; the bf16 builds sum in float32) and cast back: for the tests and ``tools/gpu_depthwise_check.py``."""
    from tvm import relax

    from targets.schedules.gpu_rules import fused_kernel

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((batch, size, size, channels), dtype))
    w = relax.Var("w", relax.TensorType((kernel, kernel, 1, channels), dtype))
    b = relax.Var("b", relax.TensorType((1, 1, 1, channels), dtype))
    with bb.function("main", [x, w, b]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, w, strides=stride, padding=kernel // 2, groups=channels,
                                           data_layout="NHWC", kernel_layout="HWIO", out_dtype=acc or dtype))
            if acc and acc != dtype:
                y = bb.emit(relax.op.astype(y, dtype))
            y = bb.emit(relax.op.clip(relax.op.add(y, b), 0, 6))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return fused_kernel(bb.get())


# Per-thread tiles measured beside the chosen one (``tools/gpu_depthwise_check.py``): 4-byte and 16-byte fp16
# vectors, and one output per thread.
VARIANTS = {"effarch": {}, "effarch-v2": {"vector": 2}, "effarch-v8": {"vector": 8}, "effarch-c1": {"cols": 1}}


def schedule_nhwc_with(func: tirx.PrimFunc, schedule: str, target: Target) -> tuple[tirx.PrimFunc, str]:
    """``func`` scheduled by this rule (a name of ``VARIANTS``) or by dlight's GeneralReduction ('dlight': what
    takes NHWC depthwise kernels without this rule; its Fallback if that declines), and how: the tiles, or the
    dlight rule. Raises if the rule declines."""
    from tvm.s_tir import dlight as dl

    if schedule in VARIANTS:
        rule = GpuDepthwiseNhwc(**VARIANTS[schedule])
        plan = match_depthwise_nhwc(s_tir.Schedule(func))
        sch = rule.apply(func, target, False)
        if sch is not None and isinstance(plan, NhwcPlan):
            t = choose_nhwc_tiles(plan, rule.vector, rule.cols)
            how = f"{t.vector} ch x {t.cols} px per thread, {t.threads_c}x{t.threads_p} threads"
            return sch.mod["main"].with_attr("tirx.is_scheduled", True), how
    else:
        for fallback in (dl.gpu.GeneralReduction(), dl.gpu.Fallback()):
            sch = fallback.apply(func, target, False)
            if sch is not None:
                return sch.mod["main"].with_attr("tirx.is_scheduled", True), type(fallback).__name__
    raise ValueError(f"{schedule} declined this kernel")
