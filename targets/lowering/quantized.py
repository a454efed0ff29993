"""Converters of ONNX's quantization ops (opset-21 semantics).

- ``QuantizeLinear``: ``saturate(round_half_even(x / scale) + zero_point)`` to u8 / i8 / i16;
- ``DequantizeLinear``: ``(x - zero_point) * scale`` in the scale's float type;
- ``DynamicQuantizeLinear``: u8 with the scale and zero point taken from the tensor's range;
- ``MatMulInteger`` / ``ConvInteger``: ``(A - za) (W - zw)`` accumulated in int32.

Scale and zero point are per tensor (one element), per axis (a vector along ``axis``) or blocked
(``block_size`` elements along ``axis`` share one). Quantizing arithmetic is float32 whatever the
float type, as onnxruntime does.

With the weight known at compile time, scalar zero points and a CPU whose dot-product family is
known (``Call.int8``), MatMulInteger and ConvInteger (NHWC, ``conv_integer_nhwc``) run on packed
weights with integer dot-product instructions (``lowering.packed_int8``, ``schedules.dot``);
otherwise they compute the definition in int32 (correct, not fast).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tvm import relax
from tvm.relax import op as R

from compiler.ir.core import Node
from targets.lowering import quantized_cuda
from targets.lowering.packed_int8 import (
    PackedInt8,
    conv2d_nhwc_int8,
    dense_int8,
    dense_int8_mmla,
    pack,
    pack_mmla,
    reduction_last_conv,
    reduction_last_dense,
)
from targets.lowering.registry import Call, converter, norm_axis
from targets.lowering.spatial import window
from targets.schedules.dot import choose_kernel

# The integer types effarch quantizes to, by ONNX element type code, with their saturation range.
_QUANT_TYPES = {2: "uint8", 3: "int8", 4: "uint16", 5: "int16"}
_RANGE = {"uint8": (0, 255), "int8": (-128, 127), "uint16": (0, 65535), "int16": (-32768, 32767)}


def _f32(e: relax.Expr, dtype: str) -> relax.Expr:
    return e if dtype == "float32" else R.astype(e, "float32")


def _param(c: Call, i: int, x_shape: list[int]) -> relax.Expr:
    """Input ``i`` (a scale or zero point) shaped to broadcast against ``x``: per tensor, per axis
    or blocked along ``axis``."""
    shape, rank = c.shape(i), len(x_shape)
    if int(np.prod(shape)) == 1:
        return c.emit(R.reshape(c.arg(i), []))
    axis = norm_axis(int(c.attr("axis", 1)), rank)
    block = int(c.attr("block_size", 0))
    if not block:
        if len(shape) != 1 or shape[0] != x_shape[axis]:
            raise c.fail(f"a per-axis parameter must have {x_shape[axis]} elements (axis {axis}), got {shape}")
        return c.emit(R.reshape(c.arg(i), [x_shape[axis] if d == axis else 1 for d in range(rank)]))
    if len(shape) != rank or -(-x_shape[axis] // block) != shape[axis]:
        raise c.fail(f"a blocked parameter must have x's shape with ceil({x_shape[axis]}/{block}) along axis {axis}")
    repeated = c.emit(R.repeat(c.arg(i), block, axis))
    return c.emit(R.strided_slice(repeated, [axis], [0], [x_shape[axis]]))


def _quant_type(c: Call) -> str:
    if c.has(2):
        dtype = c.dtype(2)
    else:
        code = int(c.attr("output_dtype", 0)) or 2
        dtype = _QUANT_TYPES.get(code, f"ONNX element type {code}")
    if dtype not in _RANGE:
        raise c.fail(f"quantizing to {dtype} is not supported (u8, i8, u16 and i16 are)")
    return dtype


def quantize(c: Call, x: relax.Expr, scale: relax.Expr, zero: relax.Expr | None, dtype: str) -> relax.Expr:
    """``saturate(round(x / scale) + zero)`` in ``dtype``; ``x`` and ``scale`` float32."""
    q = c.emit(R.round(c.emit(R.divide(x, scale))))
    if zero is not None:
        q = c.emit(R.add(q, R.astype(zero, "float32")))
    lo, hi = _RANGE[dtype]
    return R.astype(c.emit(R.clip(q, lo, hi)), dtype)


@converter("QuantizeLinear")
def _quantize_linear(c: Call) -> relax.Expr:
    dtype = _quant_type(c)
    x_shape = c.shape(0)
    scale = _f32(_param(c, 1, x_shape), c.dtype(1))
    zero = _param(c, 2, x_shape) if c.has(2) else None
    return quantize(c, c.emit(_f32(c.arg(0), c.dtype(0))), c.emit(scale), zero, dtype)


@converter("DequantizeLinear")
def _dequantize_linear(c: Call) -> relax.Expr:
    if c.dtype(0) not in (*_RANGE, "int32"):
        raise c.fail(f"dequantizing {c.dtype(0)} is not supported (u8, i8, u16, i16 and i32 are)")
    x_shape, out = c.shape(0), c.dtype(1)
    x = c.emit(R.astype(c.arg(0), "int32"))
    if c.has(2):
        x = c.emit(R.subtract(x, R.astype(_param(c, 2, x_shape), "int32")))
    y = c.emit(R.multiply(R.astype(x, "float32"), _f32(_param(c, 1, x_shape), out)))
    return y if out == "float32" else R.astype(y, out)


@converter("DynamicQuantizeLinear")
def _dynamic_quantize_linear(c: Call) -> list[relax.Expr]:
    # The range always includes 0 (so that 0 is exact); scale = range / 255; zero point = -min / scale.
    x = c.emit(_f32(c.arg(0), c.dtype(0)))
    lo = c.emit(R.minimum(R.min(x), relax.const(0.0, "float32")))
    hi = c.emit(R.maximum(R.max(x), relax.const(0.0, "float32")))
    scale = c.emit(R.divide(R.subtract(hi, lo), relax.const(255.0, "float32")))
    # An all-zero tensor has scale 0: divide by 1 instead, which quantizes it to the zero point (0).
    safe = c.emit(R.where(R.equal(scale, relax.const(0.0, "float32")), relax.const(1.0, "float32"), scale))
    zero = c.emit(quantize(c, c.emit(R.negative(lo)), safe, None, "uint8"))
    return [c.emit(quantize(c, x, safe, zero, "uint8")), scale, zero]


# ---- integer contractions ------------------------------------------------------------------------
def _integer_operands(c: Call) -> None:
    for i in (0, 1):
        if c.dtype(i) not in ("uint8", "int8"):
            raise c.fail(f"input {i} is {c.dtype(i)}; {c.op} takes u8 or i8")


def _minus_zero(c: Call, i: int, zero: relax.Expr) -> relax.Expr:
    return c.emit(R.subtract(R.astype(c.arg(i), "int32"), R.astype(zero, "int32")))


def _scalar(c: Call, i: int) -> relax.Expr | None:
    """Zero point ``i`` as a rank-0 tensor when it has one element; None when absent."""
    return c.emit(R.reshape(c.arg(i), [])) if c.has(i) and int(np.prod(c.shape(i))) == 1 else None


@converter("MatMulInteger")
def _matmul_integer(c: Call) -> relax.Expr:
    _integer_operands(c)
    fast = quantized_cuda.matmul_integer(c) if c.int8 == quantized_cuda.CUDA_INT8 else _matmul_packed(c)
    if fast is not None:
        return fast
    a, b = c.arg(0), c.arg(1)
    if c.has(2):  # scalar, or one per row of A
        za = _scalar(c, 2)
        za = za if za is not None else c.emit(R.reshape(c.arg(2), [-1, 1]))
        a = _minus_zero(c, 0, za)
    if c.has(3):  # scalar, or one per column of B
        b = _minus_zero(c, 1, c.arg(3))
    return R.matmul(R.astype(a, "int32"), R.astype(b, "int32"), out_dtype="int32")


def _weight_minus_zero(c: Call, i: int, zero_input: int) -> np.ndarray | None:
    """The weight with its (compile-time, scalar) zero point taken off, as int32; None if either
    is not known or the zero point is not scalar."""
    w = c.weight(i)
    if w is None:
        return None
    zero = np.zeros(1, w.dtype)
    if c.has(zero_input):
        known = c.consts[zero_input]
        if known is None or known.size != 1:
            return None
        zero = known
    return w.astype(np.int32) - int(np.asarray(zero).reshape(-1)[0])


def _packable(c: Call, w_last4: np.ndarray, columns: int) -> bool:
    return bool(c.int8) and (not c.has(2) or int(np.prod(c.shape(2))) == 1) and columns > 0 and w_last4.size > 0


def _packed(c: Call, w_last: Any, columns: int) -> PackedInt8 | None:
    """The weight packed for the CPU's exact dot-product kernel; ``w_last(depth)`` lays it out."""
    kernel = choose_kernel(c.int8, w_last(4))
    if kernel is None or columns % kernel.lanes:
        return None
    return pack(kernel, w_last(kernel.depth))


def _matmul_packed(c: Call) -> relax.Expr | None:
    w = _weight_minus_zero(c, 1, 3)
    if w is None or w.ndim != 2 or c.rank(0) < 2 or not _packable(c, w, w.shape[1]):
        return None
    if c.int8 == "i8mm" and _mmla_fits(c, w):
        blocked = pack_mmla(reduction_last_dense(w, 8))
        wp, colsum, za = _packed_args(c, blocked, "smmla_2x8")
        return c.bb.emit_te(dense_int8_mmla, c.arg(0), wp, colsum, za, shift=blocked.kernel.act_shift(c.dtype(0)),
                            primfunc_name_hint="int8_mmla")
    p = _packed(c, lambda depth: reduction_last_dense(w, depth), w.shape[1])
    if p is None:
        return None
    wp, colsum, za = _packed_args(c, p)
    return c.bb.emit_te(dense_int8, c.arg(0), wp, colsum, za, shift=p.kernel.act_shift(c.dtype(0)),
                        act_dtype=p.kernel.act_dtype, kernel=p.kernel.name, primfunc_name_hint="int8_dense")


def _mmla_fits(c: Call, w: np.ndarray) -> bool:
    """smmla takes s8 weights (after the zero point), an even column count and static row counts."""
    static = all(isinstance(d, int) for d in c.shape(0))
    return static and w.shape[1] % 2 == 0 and int(w.min(initial=0)) >= -128 and int(w.max(initial=0)) <= 127


def _packed_args(c: Call, p: PackedInt8, layout: str = "") -> tuple[relax.Expr, relax.Expr, relax.Expr | None]:
    wp = c.relaid_weight(1, p.packed, layout or p.kernel.name.removeprefix("effarch_"))
    colsum = c.relaid_weight(1, p.colsum, "colsum")
    return wp, colsum, _scalar(c, 2)


@converter("ConvInteger")
def _conv_integer(c: Call) -> relax.Expr:
    _integer_operands(c)
    gpu = quantized_cuda.conv_integer(c) if c.int8 == quantized_cuda.CUDA_INT8 else None
    if gpu is not None:
        return gpu
    x, w = c.arg(0), c.arg(1)
    spatial, kernel = c.shape(0)[2:], c.shape(1)[2:]
    conv = {1: (R.nn.conv1d, "NCW", "OIW"), 2: (R.nn.conv2d, "NCHW", "OIHW")}.get(len(spatial))
    if conv is None:
        raise c.fail(f"{len(spatial)}-D ConvInteger is not supported (1-D and 2-D are)")
    if c.has(2):  # x's zero point is one number
        x = _minus_zero(c, 0, c.emit(R.reshape(c.arg(2), [])))
    if c.has(3):  # scalar, or one per output channel
        zw = c.arg(3) if c.rank(3) == 0 else c.emit(R.reshape(c.arg(3), [-1] + [1] * (len(spatial) + 1)))
        w = _minus_zero(c, 1, zw)
    win = window(c, spatial, kernel)
    fn, layout, kernel_layout = conv
    return fn(R.astype(x, "int32"), R.astype(w, "int32"), strides=win.strides, padding=win.pads,
              dilation=win.dilations, groups=int(c.attr("group", 1)), data_layout=layout,
              kernel_layout=kernel_layout, out_dtype="int32")


def conv_integer_nhwc(lowering: Any, node: Node) -> relax.Expr | None:
    """A 2-D ConvInteger on packed weights, channels-last (for ``lowering.channels_last``); None
    where the fast path does not apply (the NCHW definition is used then)."""
    c = lowering.call(node, nchw=False)
    x_type = node.inputs[0].type if node.inputs[0] is not None else None
    w = _weight_minus_zero(c, 1, 3)
    if x_type is None or x_type.dtype.numpy_name not in ("uint8", "int8") or w is None or w.ndim != 4:
        return None
    if int(c.attr("group", 1)) != 1 or not _packable(c, w, w.shape[0]):
        return None
    p = _packed(c, lambda depth: reduction_last_conv(w, depth), w.shape[0])
    if p is None:
        return None
    win = window(c, list(x_type.static_shape()[2:]), list(w.shape[2:]))
    wp, colsum, za = _packed_args(c, p)
    return c.bb.emit_te(conv2d_nhwc_int8, lowering.nhwc(node.inputs[0]), wp, colsum, za, strides=win.strides,
                        pads=win.pads, dilations=win.dilations, shift=p.kernel.act_shift(x_type.dtype.numpy_name),
                        act_dtype=p.kernel.act_dtype, kernel=p.kernel.name, primfunc_name_hint="int8_conv2d")
