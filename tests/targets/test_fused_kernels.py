"""Each group made by fuse-operators becomes exactly one TVM kernel, computing what onnxruntime
computes on the fused graph's ONNX export (groups as local functions)."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from compiler.ir import Graph, Node, parse_graph
from compiler.numerics.reference import random_inputs, run_onnxruntime
from compiler.pass_manager import PassContext
from passes.fuse import FuseOperators
from targets.lowering.fused import KERNEL_PREFIX, kernel_name, kernel_names
from targets.lowering.to_relax import lower
from tests.passes.test_fuse import ATTENTION, LAYERNORM
from tests.targets import run_lowered

F32_TOL = {"rtol": 1e-4, "atol": 1e-5}  # TVM and onnxruntime sum conv/matmul terms in different orders

RESIDUAL_BLOCK = """
    graph main(%x: f32[1,4,6,6], %w1: f32[4,4,3,3], %w2: f32[4,4,3,3], %b: f32[4]) -> (%y) {
      %c1 = Conv(%x, %w1, %b) {pads=[1,1,1,1]} : f32[1,4,6,6]
      %r1 = Relu(%c1) : f32[1,4,6,6]
      %c2 = Conv(%r1, %w2) {pads=[1,1,1,1]} : f32[1,4,6,6]
      %s = Sigmoid(%c2) : f32[1,4,6,6]
      %a = Mul(%c2, %s) : f32[1,4,6,6]
      %y = Add(%a, %x) : f32[1,4,6,6]
    }
"""

ENCODER = """
    graph main(%q: f32[1,2,4,8], %k: f32[1,2,8,4], %v: f32[1,2,4,8], %mask: f32[1,1,1,4], \
%w: f32[8,8], %bias: f32[8]) -> (%y) {
      %scale = const f32[] [0.35355339]
      %s = MatMul(%q, %k) : f32[1,2,4,4]
      %ss = Mul(%s, %scale) : f32[1,2,4,4]
      %sm = Add(%ss, %mask) : f32[1,2,4,4]
      %p = Softmax(%sm) {axis=-1} : f32[1,2,4,4]
      %o = MatMul(%p, %v) : f32[1,2,4,8]
      %t = Transpose(%o) {perm=[0,2,1,3]} : f32[1,4,2,8]
      %m = MatMul(%t, %w) : f32[1,4,2,8]
      %mb = Add(%m, %bias) : f32[1,4,2,8]
      %y = Gelu(%mb) : f32[1,4,2,8]
    }
"""


def fuse(g: Graph) -> Graph:
    return FuseOperators().run(g.clone(), PassContext()).graph


def groups(g: Graph) -> list[Node]:
    return [n for n in g.nodes if n.body is not None]


def kernels(g: Graph) -> list[str]:
    """The PrimFuncs of ``g``'s module after TVM's default CPU pipeline (FuseOps, FuseTIR)."""
    target = tvm.target.Target({"kind": "llvm"})
    with target:
        return kernel_names(lower(g).mod, relax.get_default_pipeline(target))


def check_one_kernel_per_group(g: Graph) -> list[str]:
    names = kernels(g)
    ours = [k for k in names if k.startswith(KERNEL_PREFIX)]
    assert sorted(ours) == sorted(kernel_name(n) for n in groups(g)), names
    return names


def check_numbers(fused: Graph, seed: int = 0) -> None:
    inputs = random_inputs(fused, seed)
    want = list(run_onnxruntime(fused, inputs).values())
    got = run_lowered(lower(fused), inputs)
    for w, x in zip(want, got, strict=True):
        np.testing.assert_allclose(x, w, **F32_TOL)


def test_conv_epilogues_are_one_kernel_each() -> None:
    fused = fuse(parse_graph(RESIDUAL_BLOCK))
    assert [n.op for n in groups(fused)] == ["FusedConv", "FusedConv"]
    assert len(check_one_kernel_per_group(fused)) == 2  # nothing left outside the groups
    check_numbers(fused)


def test_attention_and_matmul_groups_are_one_kernel_each() -> None:
    fused = fuse(parse_graph(ENCODER))
    assert [n.op for n in groups(fused)] == ["Attention", "FusedMatMul"]
    names = check_one_kernel_per_group(fused)
    assert len(names) == 3  # the two groups and the Transpose between them
    check_numbers(fused, seed=1)


def test_layernorm_group_is_one_kernel_where_tvm_alone_makes_several() -> None:
    plain = parse_graph(LAYERNORM)
    fused = fuse(plain)
    assert check_one_kernel_per_group(fused) == [kernel_name(groups(fused)[0])]
    # TVM's FuseOps does not fuse a reduction into a reduction: without our group, more kernels.
    assert len(kernels(plain)) > 1
    check_numbers(fused, seed=2)


def test_attention_alone_is_several_kernels_for_tvm() -> None:
    assert len(kernels(parse_graph(ATTENTION))) > len(kernels(fuse(parse_graph(ATTENTION)))) == 1


def test_constants_inside_a_group_become_parameters_of_its_kernel() -> None:
    # Clip's bounds reach call_tir as scalar constants, which FuseTIR refuses inside a primitive
    # function; the lowering lifts them into parameters (MiniLM's Clip(x, CastLike(eps)) needs this).
    fused = fuse(parse_graph("""
        graph main(%x: f32[1,3,5,5], %w: f32[6,3,1,1]) -> (%y) {
          %lo = const f32[] [0.0]
          %hi = const f32[] [6.0]
          %eps = const f32[] [1e-09]
          %c = Conv(%x, %w) : f32[1,6,5,5]
          %r = Clip(%c, %lo, %hi) : f32[1,6,5,5]
          %e = CastLike(%eps, %r) : f32[]
          %y = Clip(%r, %e) : f32[1,6,5,5]
        }
    """))
    assert [n.op for n in groups(fused)] == ["FusedConv"]
    check_one_kernel_per_group(fused)
    check_numbers(fused, seed=3)
