"""Op converters from effarch's IR to Relax, one module per op kind, sharing one table."""

from targets.lowering import consteval
from targets.lowering import contraction as _contraction  # noqa: F401  (registers converters)
from targets.lowering import elementwise as _elementwise  # noqa: F401  (registers converters)
from targets.lowering.registry import CONVERTERS, Call, LoweringError, converter, describe, static_shape

__all__ = ["CONVERTERS", "Call", "LoweringError", "consteval", "converter", "describe", "static_shape"]
