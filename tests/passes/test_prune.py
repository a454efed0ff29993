"""prune-channels on small graphs through the shared harness: channels whose weights are all zero
are the least important, so removing exactly them must keep the outputs (within f32 rounding of the
shorter sums), whatever the ops in between; plus the cases it must refuse, with their reasons."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from compiler.ir import Graph, TensorType, Value
from compiler.pass_manager import PassContext
from passes.prune import PruneChannels
from tests.passes.harness import check_not_fired, check_pass

N, C, HW = 2, 8, 5
DEAD = (1, 6)  # channels of the first conv with zero weights and bias: 2 of 8 = 25%


def _t(*shape: int) -> TensorType:
    return TensorType.of(np.zeros(shape, np.float32))


class Builder:
    def __init__(self, seed: int = 0) -> None:
        self.g, self.rng = Graph(), np.random.default_rng(seed)

    def const(self, name: str, array: np.ndarray) -> Value:
        return self.g.add_constant(name, array.astype(np.float32))

    def conv(self, x: Value, c_out: int, name: str, *, dead: tuple[int, ...] = (), group: int = 1) -> Value:
        c_in = x.type.shape[1]  # type: ignore[union-attr, index]
        w = self.rng.normal(0, 1, (c_out, c_in // group, 3, 3))
        b = self.rng.normal(0, 1, c_out)
        w[list(dead)], b[list(dead)] = 0.0, 0.0
        attrs = {"group": group, "pads": [1, 1, 1, 1], "kernel_shape": [3, 3]}
        node = self.g.make_node("Conv", [x, self.const(f"{name}.w", w), self.const(f"{name}.b", b)], attrs,
                                types=[_t(N, c_out, HW, HW)], output_names=[name], name=name)
        return node.outputs[0]

    def op(self, op: str, inputs: list[Value], shape: tuple[int, ...], name: str, **attrs: object) -> Value:
        node = self.g.make_node(op, inputs, dict(attrs), types=[_t(*shape)], output_names=[name], name=name)
        return node.outputs[0]

    def done(self, *outputs: Value) -> Graph:
        self.g.outputs = list(outputs)
        return self.g


def _chain(middle: Callable[[Builder, Value], Value]) -> Graph:
    """x -> conv (2 dead channels) -> middle -> conv -> y."""
    b = Builder()
    x = b.g.add_input("x", _t(N, 3, HW, HW))
    h = middle(b, b.conv(x, C, "c1", dead=DEAD))
    return b.done(b.conv(h, 4, "c2"))


def _weight(g: Graph, node: str, index: int = 1) -> tuple[int, ...]:
    n = next(n for n in g.nodes if n.name == node)
    return tuple(n.inputs[index].const.shape)  # type: ignore[union-attr]


PRUNE = PruneChannels(ratio=0.25)


def test_dead_channels_go_and_the_consumer_loses_their_inputs() -> None:
    g = _chain(lambda b, h: b.op("Relu", [h], (N, C, HW, HW), "r"))

    def expect(out: Graph) -> bool:
        return (_weight(out, "c1") == (6, 3, 3, 3) and _weight(out, "c1", 2) == (6,)
                and _weight(out, "c2") == (4, 6, 3, 3))
    result = check_pass(PRUNE, g, expect=expect)
    fired = [n for n in result.notes if n.fired]
    assert [n.node for n in fired] == ["c1"] and "8 -> 6 channels" in fired[0].reason


def test_an_unfolded_batchnorm_loses_the_same_channels() -> None:
    def bn(b: Builder, h: Value) -> Value:
        gamma, var = b.rng.uniform(0.5, 2, C), b.rng.uniform(0.5, 2, C)
        mean, beta = b.rng.normal(0, 1, C), b.rng.normal(0, 1, C)
        mean[list(DEAD)], beta[list(DEAD)] = 0.0, 0.0  # dead channels stay 0 through BN
        arrays = {"gamma": gamma, "beta": beta, "mean": mean, "var": var}
        params = [b.const(k, a) for k, a in arrays.items()]
        return b.op("BatchNormalization", [h, *params], (N, C, HW, HW), "bn")
    result = check_pass(PRUNE, _chain(bn), expect=lambda out: _weight(out, "bn", 3) == (6,))
    assert any(n.fired for n in result.notes)


def test_a_depthwise_conv_follows_with_its_group() -> None:
    def depthwise(b: Builder, h: Value) -> Value:
        return b.conv(h, C, "dw", dead=DEAD, group=C)

    def expect(out: Graph) -> bool:
        dw = next(n for n in out.nodes if n.name == "dw")
        return dw.attrs["group"] == 6 and _weight(out, "dw") == (6, 1, 3, 3) and _weight(out, "c2") == (4, 6, 3, 3)
    check_pass(PRUNE, _chain(depthwise), expect=expect)


def test_a_residual_add_couples_both_branches() -> None:
    b = Builder()
    x = b.g.add_input("x", _t(N, 3, HW, HW))
    a = b.op("Relu", [b.conv(x, C, "c1", dead=DEAD)], (N, C, HW, HW), "a")
    s = b.op("Add", [b.conv(a, C, "c2", dead=DEAD), a], (N, C, HW, HW), "s")
    g = b.done(b.conv(s, 4, "c3"))

    def expect(out: Graph) -> bool:
        return _weight(out, "c1")[0] == _weight(out, "c2")[0] == _weight(out, "c3")[1] == 6
    result = check_pass(PRUNE, g, expect=expect)
    assert "coupled with 1 more" in next(n.reason for n in result.notes if n.fired)


def test_concat_places_each_group_at_its_offset() -> None:
    b = Builder()
    x = b.g.add_input("x", _t(N, 3, HW, HW))
    cat = b.op("Concat", [b.conv(x, C, "c1", dead=DEAD), b.conv(x, C, "c2", dead=(0, 3))], (N, 2 * C, HW, HW),
               "cat", axis=1)
    g = b.done(b.conv(cat, 4, "c3"))
    check_pass(PRUNE, g, expect=lambda out: _weight(out, "c3") == (4, 12, 3, 3))


def test_flatten_into_gemm_removes_each_channels_features() -> None:
    b = Builder()
    x = b.g.add_input("x", _t(N, 3, HW, HW))
    h = b.op("Relu", [b.conv(x, C, "c1", dead=DEAD)], (N, C, HW, HW), "r")
    flat = b.op("Reshape", [h, b.g.add_constant("shape", np.array([N, C * HW * HW], np.int64))],
                (N, C * HW * HW), "flat")
    w = b.const("fc.w", b.rng.normal(0, 1, (10, C * HW * HW)))
    g = b.done(b.op("Gemm", [flat, w, b.const("fc.b", b.rng.normal(0, 1, 10))], (N, 10), "fc", transB=1))
    check_pass(PRUNE, g, expect=lambda out: _weight(out, "fc") == (10, 6 * HW * HW))


def test_mlp_neurons_with_a_bias_add() -> None:
    b = Builder()
    x = b.g.add_input("x", _t(N, 4, 16))
    w1, bias = b.rng.normal(0, 1, (16, 32)), b.rng.normal(0, 1, 32)
    w1[:, :8], bias[:8] = 0.0, 0.0
    h = b.op("MatMul", [x, b.const("w1", w1)], (N, 4, 32), "up")
    h = b.op("Gelu", [b.op("Add", [h, b.const("b1", bias)], (N, 4, 32), "up_b")], (N, 4, 32), "act")
    g = b.done(b.op("MatMul", [h, b.const("w2", b.rng.normal(0, 1, (32, 16)))], (N, 4, 16), "down"))
    check_pass(PRUNE, g, expect=lambda out: _weight(out, "up") == (16, 24) and _weight(out, "down") == (24, 16))


def test_a_second_run_prunes_nothing_more() -> None:
    g = _chain(lambda b, h: b.op("Relu", [h], (N, C, HW, HW), "r"))
    once = PRUNE.run(g, PassContext()).graph
    check_not_fired(PRUNE, once, "already pruned")


@pytest.mark.parametrize(("middle", "reason"), [
    (lambda b, h: h, "graph output"),
    (lambda b, h: b.op("Softmax", [h], (N, C, HW, HW), "sm", axis=1), "Softmax normalises over the channel axis"),
    (lambda b, h: b.op("LRN", [h], (N, C, HW, HW), "lrn", size=3), "LRN, which prune-channels does not follow"),
])
def test_refused_with_a_reason(middle: Callable[[Builder, Value], Value], reason: str) -> None:
    b = Builder()
    x = b.g.add_input("x", _t(N, 3, HW, HW))
    g = b.done(middle(b, b.conv(x, C, "c1", dead=DEAD)))
    check_not_fired(PRUNE, g, reason)


def test_grouped_conv_is_refused() -> None:
    g = _chain(lambda b, h: b.conv(h, C, "grouped", group=2))
    check_not_fired(PRUNE, g, "group=2 mixes channels in groups")


def test_default_options_only_analyse() -> None:
    g = _chain(lambda b, h: b.op("Relu", [h], (N, C, HW, HW), "r"))
    assert not PruneChannels().run(g.clone(), PassContext()).modified


def test_bad_options_are_one_line_errors() -> None:
    from compiler.errors import EffarchError

    with pytest.raises(EffarchError, match="l1 or l2"):
        PruneChannels(importance="l3")
    with pytest.raises(EffarchError, match=r"\[0, 1\)"):
        PruneChannels(ratio=1.5)
