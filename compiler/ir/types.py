"""Tensor types: an element dtype and a shape whose dimensions may be symbolic.

A dimension is an ``int`` (static), a ``str`` (a named symbolic dimension such as ``"batch"``) or
``None`` (unknown). A shape of ``None`` means the rank itself is unknown.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

Dim = int | str | None


class DType(enum.Enum):
    """Element types, named as in the text form (``f32``) with their numpy and ONNX equivalents."""

    F16 = ("f16", "float16", 10)
    BF16 = ("bf16", "bfloat16", 16)
    F32 = ("f32", "float32", 1)
    F64 = ("f64", "float64", 11)
    I8 = ("i8", "int8", 3)
    I16 = ("i16", "int16", 5)
    I32 = ("i32", "int32", 6)
    I64 = ("i64", "int64", 7)
    U8 = ("u8", "uint8", 2)
    U16 = ("u16", "uint16", 4)
    U32 = ("u32", "uint32", 12)
    U64 = ("u64", "uint64", 13)
    I4 = ("i4", "int4", 22)  # weight-only quantization; numpy holds one per byte (ml_dtypes)
    U4 = ("u4", "uint4", 21)
    BOOL = ("bool", "bool", 9)

    def __init__(self, short: str, numpy_name: str, onnx_code: int) -> None:
        self.short = short
        self.numpy_name = numpy_name
        self.onnx_code = onnx_code

    @property
    def numpy(self) -> np.dtype:
        if self in (DType.BF16, DType.I4, DType.U4):
            import ml_dtypes  # only needed where these constants occur

            return np.dtype(getattr(ml_dtypes, self.numpy_name))
        return np.dtype(self.numpy_name)

    @property
    def is_float(self) -> bool:
        return self in (DType.F16, DType.BF16, DType.F32, DType.F64)

    @classmethod
    def from_short(cls, short: str) -> DType:
        for d in cls:
            if d.short == short:
                return d
        raise ValueError(f"unknown dtype '{short}' (known: {', '.join(d.short for d in cls)})")

    @classmethod
    def from_numpy(cls, dtype: np.dtype | type) -> DType:
        name = np.dtype(dtype).name
        for d in cls:
            if d.numpy_name == name:
                return d
        raise ValueError(f"numpy dtype {name} has no effarch dtype")

    @classmethod
    def from_onnx(cls, code: int) -> DType:
        for d in cls:
            if d.onnx_code == code:
                return d
        raise ValueError(f"ONNX element type {code} is not supported by effarch")


# The largest single tensor effarch compiles: a declared or computed value beyond it is a broken
# model (a wrong dimension), and TVM would fail late and obscurely on it.
MAX_TENSOR_BYTES = 16 << 30


@dataclass(frozen=True, slots=True)
class TensorType:
    """dtype plus shape; ``shape is None`` means unknown rank."""

    dtype: DType
    shape: tuple[Dim, ...] | None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    def static_shape(self) -> tuple[int, ...]:
        if not self.is_static:
            raise ValueError(f"shape of {self} is not static")
        return tuple(int(d) for d in self.shape)  # type: ignore[union-attr, arg-type]

    def numel(self) -> int | None:
        return math.prod(self.static_shape()) if self.is_static else None  # exact: no int64 overflow

    def nbytes(self) -> int | None:
        n = self.numel()
        if n is None:
            return None
        return (n + 1) // 2 if self.dtype in (DType.I4, DType.U4) else n * self.dtype.numpy.itemsize  # 4-bit: packed

    def __str__(self) -> str:
        if self.shape is None:
            return f"{self.dtype.short}[*]"
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype.short}[{dims}]"

    @classmethod
    def of(cls, array: np.ndarray) -> TensorType:
        return cls(DType.from_numpy(array.dtype), tuple(int(d) for d in array.shape))
