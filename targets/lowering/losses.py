"""Converters of NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss (all reductions, class
weights, ignore_index, inputs of shape [N, C, d1, ..., dk])."""

from __future__ import annotations

from tvm import relax
from tvm.relax import op as R

from targets.lowering.elementwise import scalar
from targets.lowering.registry import Call, converter

_REDUCTIONS = ("none", "sum", "mean")


@converter("NegativeLogLikelihoodLoss")
def _nll_loss(c: Call) -> relax.Expr:
    return _nll(c, c.arg(0))


@converter("SoftmaxCrossEntropyLoss")
def _softmax_cross_entropy(c: Call) -> relax.Expr | list[relax.Expr]:
    log_prob = c.emit(R.nn.log_softmax(c.arg(0), 1))
    loss = _nll(c, log_prob)
    return [c.emit(loss), log_prob] if len(c.node.outputs) > 1 else loss


def _nll(c: Call, log_prob: relax.Expr) -> relax.Expr:
    # loss[n, d...] = -log_prob[n, target[n, d...], d...] * weight[target[n, d...]], zero where the
    # target is ignore_index; "mean" divides the sum by the sum of the weights actually applied.
    reduction = c.attr("reduction", "mean")
    if reduction not in _REDUCTIONS:
        raise c.fail(f"reduction '{reduction}' is not one of none, sum, mean")
    if c.rank(0) < 2:
        raise c.fail(f"the scores need shape [N, C, ...]; got rank {c.rank(0)}")
    target = c.arg(1)
    ignore = c.attr("ignore_index")
    valid = None if ignore is None else c.emit(R.not_equal(target, relax.const(int(ignore), c.dtype(1))))
    if valid is not None:  # an ignored target may be out of range: pick class 0 instead, weighted 0
        target = c.emit(R.where(valid, target, relax.const(0, c.dtype(1))))
    picked = c.emit(R.gather_elements(log_prob, c.emit(R.expand_dims(target, [1])), 1))
    picked = c.emit(R.squeeze(picked, [1]))
    weight = _weights(c, target, valid)
    loss = c.emit(R.negative(picked) if weight is None else R.multiply(R.negative(picked), weight))
    if reduction == "none":
        return loss
    total = c.emit(R.sum(loss, None))
    if reduction == "sum":
        return total
    if weight is None:
        return R.mean(loss, None)
    return R.divide(total, c.emit(R.sum(weight, None)))


def _weights(c: Call, target: relax.Expr, valid: relax.Expr | None) -> relax.Expr | None:
    """Each element's class weight (zero where ignored); None where every weight is one."""
    dt = c.dtype(0)
    weight = c.emit(R.take(c.arg(2), target, axis=0)) if c.has(2) else None
    if valid is None:
        return weight
    return c.emit(R.where(valid, scalar(1, dt) if weight is None else weight, scalar(0, dt)))
