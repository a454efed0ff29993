"""Seeded random graphs with awkward names, attributes and provenance round-trip exactly."""

from __future__ import annotations

import random

import numpy as np
import pytest

from compiler.ir import DType, Graph, Provenance, TensorType, Value
from compiler.ir.parser import parse_graph
from compiler.ir.printer import print_graph

ALPHABET = 'ab_Z09.:/-%" \\,<>{}()[]#=@ü\n\t'
DTYPES = [DType.F32, DType.F16, DType.I64, DType.I8, DType.BOOL, DType.U8, DType.F64, DType.U16, DType.U32, DType.U64]


def name(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 6)))


def tensor_type(rng: random.Random) -> TensorType | None:
    if rng.random() < 0.1:
        return None
    dims = [rng.choice([rng.randint(0, 9), "batch", "seq_len", None]) for _ in range(rng.randint(0, 4))]
    return TensorType(rng.choice(DTYPES), None if rng.random() < 0.1 else tuple(dims))


def array(rng: random.Random, size: int) -> np.ndarray:
    dtype = rng.choice(DTYPES).numpy
    shape = [rng.randint(1, 3) for _ in range(rng.randint(0, 3))] if size <= 16 else [size]
    return np.random.default_rng(rng.randint(0, 999)).normal(size=shape).astype(dtype)


def attr(rng: random.Random) -> object:
    kind = rng.randrange(7)
    scalar = [lambda: rng.randint(-9, 9), lambda: rng.uniform(-1e6, 1e6), lambda: name(rng)][kind % 3]
    if kind < 3:
        return scalar()
    if kind < 6:
        return [scalar() for _ in range(rng.randint(0, 3))]
    return array(rng, 4)


def provenance(rng: random.Random) -> Provenance:
    return Provenance(name(rng) if rng.random() < 0.7 else "",
                      tuple(name(rng) for _ in range(rng.randint(0, 2))),
                      tuple(name(rng) for _ in range(rng.randint(0, 2))))


def random_graph(seed: int) -> Graph:
    rng = random.Random(seed)
    g = Graph(name(rng))
    g.metadata = {name(rng): name(rng) for _ in range(rng.randint(0, 2))}
    pool: list[Value] = [g.add_input(name(rng), tensor_type(rng)) for _ in range(rng.randint(0, 3))]  # type: ignore[arg-type]
    pool += [g.add_constant(name(rng), array(rng, rng.choice([4, 40]))) for _ in range(rng.randint(0, 3))]
    for _ in range(rng.randint(1, 8)):
        ins = [rng.choice(pool) if pool and rng.random() < 0.8 else None for _ in range(rng.randint(0, 3))]
        attrs = {name(rng): attr(rng) for _ in range(rng.randint(0, 3))}
        n_out = rng.randint(0, 3)
        node = g.make_node(name(rng), ins, attrs, num_outputs=n_out,
                           types=[tensor_type(rng) for _ in range(n_out)],
                           output_names=[name(rng) for _ in range(n_out)],
                           domain=name(rng) if rng.random() < 0.3 else "",
                           name=name(rng) if rng.random() < 0.3 else "", provenance=provenance(rng))
        pool += node.outputs
    g.outputs = rng.sample(pool, min(len(pool), 2))
    return g


@pytest.mark.parametrize("seed", range(150))
def test_random_graph_round_trips(seed: int) -> None:
    g = random_graph(seed)
    text = print_graph(g)
    parsed = parse_graph(text, {k: v.const for k, v in g.constants.items()})  # type: ignore[misc]
    assert print_graph(parsed) == text
    assert [n.provenance for n in parsed.nodes] == [n.provenance for n in g.nodes]
    assert [n.name for n in parsed.nodes] == [n.name for n in g.nodes]
    assert [v.name for v in parsed.values()] == [v.name for v in g.values()]
    assert parsed.metadata == g.metadata
