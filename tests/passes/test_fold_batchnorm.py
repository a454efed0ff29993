"""fold-batchnorm through the shared harness, including the cases onnxoptimizer's fuse_bn_into_conv got
wrong (#133 epsilon, #178 missing bias, #255 grouped kernels) and the cases that must not fold."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from compiler.frontends.torch import import_torch
from compiler.ir import Graph, TensorType
from compiler.ir.core import Provenance
from compiler.pass_manager import PassContext, PassManager, parse_pipeline
from passes.fold_batchnorm import FoldBatchNorm
from tests.passes.harness import check_not_fired, check_pass


def _t(shape: tuple[int, ...], dtype: Any = np.float32) -> TensorType:
    return TensorType.of(np.zeros(shape, dtype))


def _bn_params(g: Graph, c: int, rng: np.random.Generator, *, as_inputs: bool = False) -> list:
    # Variances far from 1 and means far from 0, so a wrong epsilon or a dropped shift shows.
    arrays = [rng.uniform(0.5, 2.0, c), rng.normal(0, 1, c), rng.normal(0, 3, c), rng.uniform(1e-3, 4.0, c)]
    names = ["gamma", "beta", "mean", "var"]
    if as_inputs:
        return [g.add_input(n, _t((c,))) for n in names]
    return [g.add_constant(n, a.astype(np.float32)) for n, a in zip(names, arrays, strict=True)]


def conv_bn(op: str = "Conv", *, c_in: int = 4, c_out: int = 6, group: int = 1, bias: bool = True,
            epsilon: float | None = None, seed: int = 0, bn_inputs: bool = False,
            extra_user: bool = False) -> Graph:
    """x -> op(x, W[, b]) -> BatchNormalization -> y (with out shapes for a 3x3 kernel, pads 1)."""
    rng = np.random.default_rng(seed)
    g = Graph()
    x = g.add_input("x", _t((2, c_in, 5, 5)))
    shape = (c_out, c_in // group, 3, 3) if op == "Conv" else (c_in, c_out // group, 3, 3)
    ins = [x, g.add_constant("w", rng.normal(0, 1, shape).astype(np.float32))]
    if bias:
        ins.append(g.add_constant("b", rng.normal(0, 1, c_out).astype(np.float32)))
    attrs = {"group": group, "pads": [1, 1, 1, 1], "kernel_shape": [3, 3]}
    conv = g.make_node(op, ins, attrs, types=[_t((2, c_out, 5, 5))], output_names=["c"],
                       provenance=Provenance("torch:conv"))
    bn_attrs = {} if epsilon is None else {"epsilon": epsilon}
    bn = g.make_node("BatchNormalization", [conv.outputs[0], *_bn_params(g, c_out, rng, as_inputs=bn_inputs)],
                     bn_attrs, types=[_t((2, c_out, 5, 5))], output_names=["y"], provenance=Provenance("torch:bn"))
    g.outputs = [bn.outputs[0]]
    if extra_user:
        relu = g.make_node("Relu", [conv.outputs[0]], types=[_t((2, c_out, 5, 5))], output_names=["r"])
        g.outputs.append(relu.outputs[0])
    return g


def _folded_into(op: str) -> Any:
    def check(g: Graph) -> bool:
        node = g.nodes[-1]
        return ([n.op for n in g.nodes] == [op] and node.provenance.source == "torch:conv"
                and node.provenance.merged == ("torch:bn",)
                and node.provenance.rewrites == ("fold-batchnorm:bn-into-producer",))
    check.__name__ = f"one {op} with the BN merged into its provenance"
    return check


@pytest.mark.parametrize(("op", "kwargs"), [
    ("Conv", {}),
    ("Conv", {"epsilon": 0.1}),  # onnxoptimizer #133: ignored a non-default epsilon
    ("Conv", {"bias": False}),  # #178: conv without bias
    ("Conv", {"group": 2}),  # #255: grouped
    ("Conv", {"c_in": 6, "group": 6}),  # depthwise
    ("ConvTranspose", {}),
    ("ConvTranspose", {"group": 2, "bias": False, "epsilon": 0.01}),  # weight is [c_in, c_out/g, k, k]
], ids=["conv", "epsilon", "no-bias", "grouped", "depthwise", "conv-transpose", "grouped-conv-transpose"])
def test_batchnorm_folds_into_the_conv(op: str, kwargs: dict) -> None:
    check_pass(FoldBatchNorm(), conv_bn(op, **kwargs), expect=_folded_into(op))


def _gemm_bn(op: str, *, trans_b: int = 0, with_c: bool = True) -> Graph:
    rng = np.random.default_rng(3)
    g = Graph()
    x = g.add_input("x", _t((3, 4)))
    w = rng.normal(0, 1, (5, 4) if trans_b else (4, 5)).astype(np.float32)
    ins = [x, g.add_constant("w", w)]
    attrs: dict[str, Any] = {}
    if op == "Gemm":
        attrs = {"transB": trans_b, "alpha": 0.5, "beta": 2.0}
        if with_c:
            ins.append(g.add_constant("c", rng.normal(0, 1, 5).astype(np.float32)))
    mm = g.make_node(op, ins, attrs, types=[_t((3, 5))], output_names=["m"], provenance=Provenance("torch:conv"))
    bn = g.make_node("BatchNormalization", [mm.outputs[0], *_bn_params(g, 5, rng)], {"epsilon": 1e-3},
                     types=[_t((3, 5))], output_names=["y"], provenance=Provenance("torch:bn"))
    g.outputs = [bn.outputs[0]]
    return g


@pytest.mark.parametrize(("op", "kwargs"), [
    ("Gemm", {}), ("Gemm", {"trans_b": 1}), ("Gemm", {"with_c": False}), ("MatMul", {})])
def test_batchnorm_folds_into_gemm_and_matmul(op: str, kwargs: dict) -> None:
    check_pass(FoldBatchNorm(), _gemm_bn(op, **kwargs), expect=_folded_into("Gemm"))


def test_conv_output_with_another_user_is_not_folded() -> None:
    check_not_fired(FoldBatchNorm(), conv_bn(extra_user=True), "Conv output %c has 2 users")


def test_non_constant_bn_parameters_are_not_folded() -> None:
    check_not_fired(FoldBatchNorm(), conv_bn(bn_inputs=True), "parameters are not all constant")


def test_batchnorm_before_the_conv_is_not_folded() -> None:
    rng = np.random.default_rng(0)
    g = Graph()
    x = g.add_input("x", _t((2, 4, 5, 5)))
    bn = g.make_node("BatchNormalization", [x, *_bn_params(g, 4, rng)], types=[_t((2, 4, 5, 5))])
    w = g.add_constant("w", rng.normal(0, 1, (6, 4, 1, 1)).astype(np.float32))
    conv = g.make_node("Conv", [bn.outputs[0], w], types=[_t((2, 6, 5, 5))], output_names=["y"])
    g.outputs = [conv.outputs[0]]
    check_not_fired(FoldBatchNorm(), g, "its input comes from no node")


def test_non_constant_weight_is_not_folded() -> None:
    g = conv_bn()
    w = g.constants.pop("w")
    w_in = g.add_input("w_in", w.type)  # type: ignore[arg-type]  # conv_bn gives w a type
    g.nodes[0].set_input(1, w_in)
    check_not_fired(FoldBatchNorm(), g, "Conv weight is not constant")


def test_batched_matmul_is_not_folded() -> None:
    rng = np.random.default_rng(0)
    g = Graph()
    x = g.add_input("x", _t((2, 3, 4)))
    w = g.add_constant("w", rng.normal(0, 1, (4, 3)).astype(np.float32))
    mm = g.make_node("MatMul", [x, w], types=[_t((2, 3, 3))])
    bn = g.make_node("BatchNormalization", [mm.outputs[0], *_bn_params(g, 3, rng)], types=[_t((2, 3, 3))])
    g.outputs = [bn.outputs[0]]
    check_not_fired(FoldBatchNorm(), g, "not a rank-2 product")


def _randomized(bn: torch.nn.BatchNorm2d, seed: int) -> torch.nn.BatchNorm2d:
    gen = torch.Generator().manual_seed(seed)
    c = bn.num_features
    state = {"weight": torch.randn(c, generator=gen), "bias": torch.randn(c, generator=gen),
             "running_mean": torch.randn(c, generator=gen), "running_var": torch.rand(c, generator=gen) + 0.1}
    bn.load_state_dict(state, strict=False)
    return bn


@pytest.mark.parametrize("conv", [
    torch.nn.Conv2d(4, 8, 3, groups=2, bias=False),
    torch.nn.Conv2d(8, 8, 3, groups=8, padding=1),
    torch.nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2),
], ids=["grouped-no-bias", "depthwise", "grouped-conv-transpose"])
def test_pytorch_conv_and_batchnorm_modules_fold(conv: torch.nn.Conv2d | torch.nn.ConvTranspose2d) -> None:
    model = torch.nn.Sequential(conv, _randomized(torch.nn.BatchNorm2d(conv.out_channels, eps=0.05), 1)).eval()
    g = import_torch(model, (torch.randn(1, conv.in_channels, 6, 6),))
    # The exporter builds a missing conv bias as Expand(CastLike(0, x), Shape(W)[0:1]): fold it first.
    cleanup = "fold-constants,canonicalize-patterns{rules=castlike},fold-constants,eliminate-dead-code"
    g = PassManager(parse_pipeline(cleanup), PassContext()).run(g).graph
    check_pass(FoldBatchNorm(), g, expect=lambda h: "BatchNormalization" not in [n.op for n in h.nodes])
