"""Seeded random graphs for checking passes: chains of blocks that carry the patterns passes look for.

Each block maps a value to a value of the same type, so blocks chain freely: elementwise ops,
multiplications and additions by constants (some all ones or zeros), Relu(Relu(x)), transposes that
cancel, reshapes through a constant shape chain, repeated subexpressions, Conv + BatchNormalization
(+ Relu) on images and MatMul + Add on matrices, dead nodes, and an inner value that is also a graph
output. The same seed gives the same graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from compiler.ir import DType, Graph, TensorType, Value

Block = Callable[[Graph, np.random.Generator, Value], Value]

IMAGE = (1, 4, 6, 6)  # NCHW; convolutions keep channels and size (3x3, pad 1)
MATRIX = (3, 8)


def random_graph(seed: int, blocks: int = 6) -> Graph:
    """A graph of ``blocks`` random blocks on an image or a matrix input (chosen by the seed)."""
    rng = np.random.default_rng(seed)
    shape = IMAGE if seed % 2 == 0 else MATRIX
    g = Graph(f"random{seed}")
    x = g.add_input("x", TensorType(DType.F32, shape))
    menu = [*_COMMON, *(_IMAGE_BLOCKS if shape == IMAGE else _MATRIX_BLOCKS)]
    outputs = []
    for i in range(blocks):
        x = menu[int(rng.integers(len(menu)))](g, rng, x)
        if i == blocks // 2 and rng.random() < 0.5:
            outputs.append(x)  # an inner value that is an output too: rewrites must keep it
    g.outputs = [*outputs, x]
    return g


def _node(g: Graph, op: str, inputs: list[Value], attrs: dict | None = None) -> Value:
    """A node whose output has the type of its first input (every block keeps the type)."""
    return g.make_node(op, inputs, attrs or {}, types=[inputs[0].type]).outputs[0]


def _static(x: Value) -> tuple[int, ...]:
    """Every value here has a static shape: the input's, kept by every block."""
    assert x.type is not None and x.type.is_static
    return x.type.static_shape()


def _const(g: Graph, hint: str, array: np.ndarray) -> Value:
    return g.add_constant(g.fresh_name(hint), np.asarray(array, np.float32))


def _unary(g: Graph, rng: np.random.Generator, x: Value) -> Value:
    return _node(g, str(rng.choice(["Relu", "Sigmoid", "Neg", "Identity", "Abs", "Tanh"])), [x])


def _with_constant(g: Graph, rng: np.random.Generator, x: Value) -> Value:
    op = str(rng.choice(["Add", "Mul", "Sub"]))
    kind = rng.integers(3)
    shape = _static(x)[-1:]
    fill = {0: np.zeros(shape), 1: np.ones(shape)}.get(int(kind), rng.standard_normal(shape))
    return _node(g, op, [x, _const(g, "c", fill)])


def _relu_relu(g: Graph, rng: np.random.Generator, x: Value) -> Value:
    return _node(g, "Relu", [_node(g, "Relu", [x])])


def _transposes(g: Graph, rng: np.random.Generator, x: Value) -> Value:
    shape = _static(x)
    perm = [int(p) for p in rng.permutation(len(shape))]
    there = g.make_node("Transpose", [x], {"perm": perm}, types=[TensorType(DType.F32, tuple(shape[p] for p in perm))])
    back = [perm.index(i) for i in range(len(shape))]
    return g.make_node("Transpose", [there.outputs[0]], {"perm": back}, types=[x.type]).outputs[0]


def _reshape_round_trip(g: Graph, rng: np.random.Generator, x: Value) -> Value:
    shape = _static(x)
    flat_shape = g.add_constant(g.fresh_name("flat"), np.array([math.prod(shape)], np.int64))
    flat = g.make_node("Reshape", [x, flat_shape], types=[TensorType(DType.F32, (math.prod(shape),))])
    back_shape = g.add_constant(g.fresh_name("shape"), np.array(shape, np.int64))
    return g.make_node("Reshape", [flat.outputs[0], back_shape], types=[x.type]).outputs[0]


def _common_subexpression(g: Graph, rng: np.random.Generator, x: Value) -> Value:
    return _node(g, "Add", [_node(g, "Sigmoid", [x]), _node(g, "Sigmoid", [x])])


def _dead_end(g: Graph, rng: np.random.Generator, x: Value) -> Value:
    _node(g, "Neg", [x])  # nothing uses it
    return x


def _conv_bn(g: Graph, rng: np.random.Generator, x: Value) -> Value:
    c = IMAGE[1]
    w = _const(g, "w", rng.standard_normal((c, c, 3, 3)) * 0.3)
    y = _node(g, "Conv", [x, w, _const(g, "b", rng.standard_normal(c))], {"pads": [1, 1, 1, 1]})
    stats = [_const(g, n, a) for n, a in (("scale", rng.uniform(0.5, 1.5, c)), ("shift", rng.standard_normal(c)),
                                           ("mean", rng.standard_normal(c)), ("var", rng.uniform(0.5, 2, c)))]
    y = _node(g, "BatchNormalization", [y, *stats], {"epsilon": 1e-5})
    return _node(g, "Relu", [y]) if rng.random() < 0.5 else y


def _matmul_add(g: Graph, rng: np.random.Generator, x: Value) -> Value:
    n = MATRIX[1]
    y = _node(g, "MatMul", [x, _const(g, "w", rng.standard_normal((n, n)) * 0.3)])
    return _node(g, "Add", [y, _const(g, "b", rng.standard_normal(n))])


_COMMON: list[Block] = [_unary, _with_constant, _relu_relu, _transposes, _reshape_round_trip,
                        _common_subexpression, _dead_end]
_IMAGE_BLOCKS: list[Block] = [_conv_bn, _conv_bn]
_MATRIX_BLOCKS: list[Block] = [_matmul_add, _matmul_add]
