"""Values known while lowering: small results of shape arithmetic, computed as nodes are visited.

Exporters often leave ``Shape -> Gather -> Unsqueeze -> Concat -> Reshape`` chains unfolded. With
static input shapes those values are known while lowering; computing them here lets the shape-like
arguments of Reshape, Expand, Slice... be constants even before any folding pass ran. The ops are
evaluated by the same evaluator fold-constants uses (``compiler.ir.consteval``); this module only
decides what is worth computing now: small results (larger ones are real tensors that Relax should
compute) from small, known inputs.
"""

from __future__ import annotations

import numpy as np

from compiler.ir.consteval import (
    can_evaluate,
    check_tensor_size,
    constant_value,
    evaluate_op,
    output_elements,
    shape_op,
)
from compiler.ir.core import Node

# Results with more elements than this are left to Relax; inputs larger than this are not read.
MAX_RESULT_ELEMENTS = 64
MAX_INPUT_ELEMENTS = 4096

Arrays = list[np.ndarray | None]
Shapes = list[tuple[int, ...] | None]


def evaluate(node: Node, consts: Arrays, shapes: Shapes) -> list[np.ndarray] | None:
    """The outputs of ``node`` when they are computable now and small, else None."""
    if node.domain:
        return None
    if node.op == "Constant":
        return [constant_value(node)]  # its payload exists already, whatever its size
    if node.op in ("Shape", "Size") and shapes and shapes[0] is not None:
        return [shape_op(node, shapes[0])]
    if not can_evaluate(node) or len(node.outputs) != 1 or not _all_known_and_small(node, consts):
        return None
    check_tensor_size(node, output_elements(node, consts))
    try:
        (result,) = evaluate_op(node, consts, max_elements=MAX_RESULT_ELEMENTS)
    except ValueError:  # too large, or inputs ONNX declares invalid: left to Relax, which reports the latter
        return None
    if result.size > MAX_RESULT_ELEMENTS:
        return None
    out_type = node.outputs[0].type
    if out_type is not None and result.dtype != out_type.dtype.numpy:
        result = result.astype(out_type.dtype.numpy)
    return [result]


def _all_known_and_small(node: Node, consts: Arrays) -> bool:
    for v, c in zip(node.inputs, consts, strict=True):
        if v is not None and (c is None or c.size > MAX_INPUT_ELEMENTS):
            return False
    return True
