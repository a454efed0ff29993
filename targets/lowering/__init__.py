"""Lowering to Relax: op converters, one module per op kind, sharing one table; `to_relax` lowers a graph."""

# Importing each kind's module registers its converters in CONVERTERS.
from targets.lowering import attention as _attention  # noqa: F401
from targets.lowering import consteval
from targets.lowering import contraction as _contraction  # noqa: F401
from targets.lowering import elementwise as _elementwise  # noqa: F401
from targets.lowering import elementwise_more as _elementwise_more  # noqa: F401
from targets.lowering import indexing as _indexing  # noqa: F401
from targets.lowering import linear_attention as _linear_attention  # noqa: F401
from targets.lowering import losses as _losses  # noqa: F401
from targets.lowering import newer_ops as _newer_ops  # noqa: F401
from targets.lowering import normalization as _normalization  # noqa: F401
from targets.lowering import pooling as _pooling  # noqa: F401
from targets.lowering import qlinear as _qlinear  # noqa: F401
from targets.lowering import quantized as _quantized  # noqa: F401
from targets.lowering import recurrent as _recurrent  # noqa: F401
from targets.lowering import reduction as _reduction  # noqa: F401
from targets.lowering import reduction_more as _reduction_more  # noqa: F401
from targets.lowering import resize as _resize  # noqa: F401
from targets.lowering import shape as _shape  # noqa: F401
from targets.lowering import spatial_more as _spatial_more  # noqa: F401
from targets.lowering import transformer_parts as _transformer_parts  # noqa: F401
from targets.lowering.registry import CONVERTERS, Call, LoweringError, converter, describe, static_shape

__all__ = ["CONVERTERS", "Call", "LoweringError", "consteval", "converter", "describe", "static_shape"]
