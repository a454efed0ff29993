"""Weight-only quantized MatMul/Gemm: one kernel reads the 8-bit or 4-bit weight and computes in float.

quantize-weights writes ``MatMul(x, DequantizeLinear(Wq, scale))`` with ``Wq`` and ``scale`` constants.
Lowered op by op, that is a dequantize kernel writing the whole float weight on every call and a
float matmul reading it back: slower than the float model. Here the pair is one kernel:

- the weight is packed at compile time like a float weight (``lowering.packed``: ``[N/NR, K, NR]``),
  int8 as is, int4 two per byte (``[N/NR, K, NR/2]`` uint8: column ``j`` of a panel in the low
  nibble of byte ``j``, column ``j + NR/2`` in its high nibble, each stored as ``q + 8``), with the
  scales in the same panel order (one per column, or one per column and group of K);
- the kernel's ``dequantize`` block expands packed panel entries times their scale into floats and
  its reduction is the float ``dense_packed`` product of them; ``schedules.weight_only`` places the
  expansion in registers or in a per-thread slice buffer, never in a tensor of the model.

The numbers are the DequantizeLinear's then MatMul's exactly (the same float weights; only the
order of the sums may differ). The DequantizeLinear node is not lowered at all when every reader
of its result is such a product (``deferred_weight``), so the unpacked integer weight leaves the
artifact too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from tvm import relax, te, tirx
from tvm.relax import op as R

from compiler.ir.core import Node, Value
from compiler.ir.types import DType
from targets.lowering.packed import panel_width
from targets.lowering.registry import Call
from targets.schedules.contraction import PACK_ATTR
from targets.schedules.weight_only import DEQUANTIZE_BLOCK, WEIGHT_ONLY_ATTR

INT4_OFFSET = 8  # a signed int4 value q is stored as the nibble q + 8


@dataclass(frozen=True)
class DenseWeight:
    """A weight-only quantized [K, N] weight: ``w[k, n] = q[k, n] * scale[k // group, n]``."""

    q: np.ndarray  # [K, N] integers (int8 range, or int4/uint4 range when bits == 4)
    scale: np.ndarray  # [K // group, N] float32; group == K: one scale per column
    group: int
    bits: int  # 8 or 4: the stored width
    signed: bool

    @property
    def k(self) -> int:
        return int(self.q.shape[0])

    @property
    def n(self) -> int:
        return int(self.q.shape[1])


def pack_int8(w: DenseWeight, nr: int) -> tuple[np.ndarray, np.ndarray]:
    """(q as [N/NR, K, NR] int8 or uint8, scales as [N/NR, K/group, NR] float32)."""
    dtype = np.int8 if w.signed else np.uint8
    return _panels(w.q, nr).astype(dtype), _panels(w.scale, nr).astype(np.float32)


def pack_int4(w: DenseWeight, nr: int) -> tuple[np.ndarray, np.ndarray]:
    """(q as [N/NR, K, NR/2] uint8, two columns per byte, scales as [N/NR, K/group, NR] float32)."""
    nibbles = _panels(w.q, nr).astype(np.int16) + (INT4_OFFSET if w.signed else 0)
    if nibbles.min(initial=0) < 0 or nibbles.max(initial=0) > 15:
        raise ValueError("int4 weights out of range")
    half = nr // 2
    packed = nibbles[..., :half] | (nibbles[..., half:] << 4)
    return np.ascontiguousarray(packed.astype(np.uint8)), _panels(w.scale, nr).astype(np.float32)


def _panels(a: np.ndarray, nr: int) -> np.ndarray:
    """[R, N] -> [ceil(N/NR), R, NR], the last panel padded with zeros."""
    a = np.pad(a, [(0, 0), (0, -a.shape[1] % nr)])
    r, n = a.shape
    return np.ascontiguousarray(a.reshape(r, n // nr, nr).transpose(1, 0, 2))


def dense_weight_only(x: te.Tensor, wq: te.Tensor, scale: te.Tensor, *, columns: int, bits: int,
                      signed: bool) -> te.Tensor:
    """x[..., M, K] @ W[K, columns] with W packed by ``pack_int8`` (``bits`` 8) or ``pack_int4`` (4)."""
    panels, k_ext = (int(d) for d in wq.shape[:2])
    nr = int(scale.shape[2])
    group = k_ext // int(scale.shape[1])
    half = nr // 2

    def expand(p: tirx.Var, k: tirx.Var, j: tirx.Var) -> tirx.PrimExpr:
        if bits == 8:
            q = wq[p, k, j].astype("float32")
        else:
            byte = wq[p, k, j % half].astype("int32")
            # Index arithmetic is int64 here: a shift by (j // half) * 4 would widen the data to it.
            nibble = tirx.Select(j < half, byte & tirx.const(15, "int32"), byte >> tirx.const(4, "int32"))
            q = (nibble - tirx.const(INT4_OFFSET if signed else 0, "int32")).astype("float32")
        return q * scale[p, k // group, j]

    w = te.compute((panels, k_ext, nr), expand, name=DEQUANTIZE_BLOCK)
    batch = list(x.shape[:-1])
    k = te.reduce_axis((0, k_ext), "k")

    def body(*idx: tirx.Var) -> tirx.PrimExpr:
        *lead, n = idx
        return te.sum(x[(*lead, k)] * w[n // nr, k, n % nr], axis=k)

    return te.compute((*batch, columns), body, name="dense_weight_only",
                      attrs={PACK_ATTR: nr, WEIGHT_ONLY_ATTR: bits})


# ---- which products take the fused kernel --------------------------------------------------------
@dataclass(frozen=True)
class QuantizedTensor:
    """A DequantizeLinear of constants, as written (``axis``/``block`` as in ONNX)."""

    q: np.ndarray
    scale: np.ndarray
    axis: int
    block: int
    bits: int
    signed: bool


_INTEGER_TYPES = {DType.I8: (8, True), DType.U8: (8, False), DType.I4: (4, True), DType.U4: (4, False)}


def quantized_tensor(lowering: Any, node: Node) -> QuantizedTensor | None:
    """``node``'s weight when it is a DequantizeLinear of a constant 2-D integer matrix with float32
    scales and zero points of 0 (what quantize-weights writes); else None."""
    if node.op != "DequantizeLinear" or node.domain or len(node.outputs) != 1:
        return None
    ins = list(node.inputs) + [None] * (3 - len(node.inputs))
    w, scale, zero = (None if v is None else _known(lowering, v) for v in ins[:3])
    w_type = ins[0].type if ins[0] is not None else None
    out_type = node.outputs[0].type
    if w is None or scale is None or w_type is None or w_type.dtype not in _INTEGER_TYPES or w.ndim != 2:
        return None
    if out_type is None or out_type.dtype is not DType.F32 or scale.dtype != np.float32:
        return None
    if ins[2] is not None and (zero is None or np.any(np.asarray(zero) != 0)):
        return None
    bits, signed = _INTEGER_TYPES[w_type.dtype]
    axis = int(node.attrs.get("axis", 1))
    return QuantizedTensor(w, scale, axis + 2 if axis < 0 else axis, int(node.attrs.get("block_size", 0)), bits, signed)


def _known(lowering: Any, v: Value) -> np.ndarray | None:
    """``v``'s value known at compile time: a constant, or a group's weight (``_Lowerer.weight_arrays``)."""
    known = lowering.known.get(id(v))
    return known if known is not None else lowering.weight_arrays.get(id(v))


def dense_form(t: QuantizedTensor, transposed: bool) -> DenseWeight | None:
    """``t`` as the [K, N] weight of a product (``transposed``: ``t`` is [N, K], Gemm's transB),
    when its scales are per tensor, per output column or in blocks along K; else None."""
    q = t.q.T if transposed else t.q
    k_axis = 1 if transposed else 0
    k, n = q.shape
    scale = t.scale
    if scale.size == 1:
        kn_scale = np.full((1, n), scale.reshape(-1)[0], np.float32)
    elif not t.block and scale.ndim == 1 and t.axis == 1 - k_axis and scale.shape[0] == n:
        kn_scale = scale.reshape(1, n)
    elif t.block and t.axis == k_axis and k % t.block == 0 and scale.ndim == 2:
        kn_scale = scale.T if transposed else scale
        if kn_scale.shape != (k // t.block, n):
            return None
    else:
        return None
    return DenseWeight(q, np.ascontiguousarray(kn_scale, np.float32), k // kn_scale.shape[0], t.bits, t.signed)


def _takes(node: Node, index: int, t: QuantizedTensor, pack: int) -> bool:
    """Whether ``node`` reads ``t`` as its weight (input ``index``) in a form the kernel computes."""
    if node.domain or node.op not in ("MatMul", "Gemm") or index != 1:
        return False
    x, y = node.inputs[0], node.outputs[0]
    if x is None or x.type is None or x.type.dtype is not DType.F32 or y.type is None or y.type.dtype is not DType.F32:
        return False
    # Static shapes only: the symbolic-shape rules (schedules.symbolic) know no expansion block.
    if x.type.shape is None or not all(isinstance(d, int) for d in x.type.shape):
        return False
    if node.op == "MatMul" and len(x.type.shape) < 2:
        return False
    w = dense_form(t, node.op == "Gemm" and bool(node.attrs.get("transB", 0)))
    return w is not None and _panel(w.n, pack) > 0


def _panel(n: int, pack: int) -> int:
    """The panel width: one that divides N (``lowering.packed``), else one vector, N padded to it."""
    return panel_width(n, pack) or (pack // 2 if pack >= 8 else 0)


def _all_readers_take(v: Value, t: QuantizedTensor, pack: int, outputs: list[Value]) -> bool:
    """Every reader of ``v`` is a product that takes it (through group bodies), and none needs it as a tensor."""
    if not v.uses or any(o is v for o in outputs):
        return False
    for node, i in v.uses:
        if node.body is not None:
            if not _all_readers_take(node.body.inputs[i], t, pack, node.body.outputs):
                return False
        elif not _takes(node, i, t, pack):
            return False
    return True


def defer(lowering: Any, node: Node) -> bool:
    """Record ``node`` (a DequantizeLinear) as a weight read by fused kernels and lower nothing for
    it, when every reader is a weight-only product; False: lower it as usual."""
    if not lowering.pack:
        return False
    t = quantized_tensor(lowering, node)
    if t is None or not _all_readers_take(node.outputs[0], t, lowering.pack, list(lowering.g.outputs)):
        return False
    lowering.quantized[id(node.outputs[0])] = t
    return True


# ---- the fused kernel ----------------------------------------------------------------------------
def lower_product(lowering: Any, node: Node) -> relax.Expr | None:
    """``node`` (MatMul/Gemm) on its deferred quantized weight as one kernel; None when its weight
    is not deferred."""
    w_value = node.inputs[1] if len(node.inputs) > 1 else None
    t = lowering.quantized.get(id(w_value)) if w_value is not None else None
    if t is None:
        return None
    c: Call = lowering.call(node)
    transposed = c.op == "Gemm" and bool(c.attr("transB", 0))
    w = dense_form(t, transposed)
    nr = _panel(w.n, c.pack) if w is not None else 0
    if w is None or not nr:
        raise c.fail("a deferred weight-only weight has no fused kernel (internal error)")
    packed, scale = pack_int8(w, nr) if w.bits == 8 else pack_int4(w, nr)
    wq = c.relaid_weight(1, packed, f"i{w.bits}p{nr}")
    scales = c.relaid_weight(1, scale, f"scale_p{nr}")
    a = c.arg(0)
    if c.op == "Gemm" and c.attr("transA", 0):
        a = c.emit(R.permute_dims(a, [1, 0]))
    y = c.bb.emit_te(dense_weight_only, a, wq, scales, columns=w.n, bits=w.bits, signed=w.signed,
                     primfunc_name_hint=f"dense_int{w.bits}_weights")
    return y if c.op == "MatMul" else _gemm_epilogue(c, y)


def _gemm_epilogue(c: Call, y: relax.Expr) -> relax.Expr:
    """``alpha * y + beta * C``."""
    alpha, beta = float(c.attr("alpha", 1.0)), float(c.attr("beta", 1.0))
    if alpha != 1.0:
        y = c.emit(R.multiply(y, relax.const(alpha, "float32")))
    if not c.has(2) or beta == 0.0:
        return y
    bias = c.arg(2) if beta == 1.0 else c.emit(R.multiply(c.arg(2), relax.const(beta, "float32")))
    return R.add(y, bias)
