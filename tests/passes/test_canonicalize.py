"""canonicalize-patterns through the shared harness, on PyTorch modules written in primitives (imported
with torch.export) and on hand-written IR for the near-misses."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from compiler.frontends.torch import import_torch
from compiler.ir import Graph
from compiler.ir.parser import parse_graph
from compiler.pass_manager import PassContext, PassManager, parse_pipeline
from passes.canonicalize import CanonicalizePatterns
from tests.passes.harness import check_not_fired, check_pass


class ErfGelu(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


class ErfGeluReordered(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * ((torch.erf(x * (1 / math.sqrt(2.0))) + 1.0) * 0.5)


class TanhGelu(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class TanhGeluCubed(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


class PrimitiveLayerNorm(torch.nn.Module):
    def __init__(self, affine: bool = True) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.affine = affine
        self.g = torch.nn.Parameter(torch.randn(8, generator=gen))
        self.b = torch.nn.Parameter(torch.randn(8, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x - x.mean(-1, keepdim=True)
        y = d / torch.sqrt((d ** 2).mean(-1, keepdim=True) + 1e-3)
        return y * self.g + self.b if self.affine else y


class Relu6HardSwish(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.nn.functional.relu6(x + 3) / 6


class HardSigmoidSwish(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.nn.functional.hardsigmoid(x)


class SigmoidFirstSilu(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x) * x


def imported(module: torch.nn.Module, shape: tuple[int, ...] = (2, 3, 8)) -> Graph:
    """The module through torch.export, with its scalar arithmetic folded as the pipeline would."""
    g = import_torch(module.eval(), (torch.randn(*shape),))
    pipeline = "fold-constants,canonicalize-patterns{rules=castlike},fold-constants,eliminate-dead-code"
    return PassManager(parse_pipeline(pipeline), PassContext()).run(g).graph


def _ops(want: list[str]) -> Callable[[Graph], bool]:
    def check(g: Graph) -> bool:
        return [n.op for n in g.nodes] == want
    check.__name__ = f"ops are {want}"
    return check


@pytest.mark.parametrize(("module", "op", "approximate"), [
    (ErfGelu(), "Gelu", "none"), (ErfGeluReordered(), "Gelu", "none"),
    (TanhGelu(), "Gelu", "tanh"), (TanhGeluCubed(), "Gelu", "tanh"),
    (Relu6HardSwish(), "HardSwish", None), (HardSigmoidSwish(), "HardSwish", None),
], ids=["erf-gelu", "erf-gelu-reordered", "tanh-gelu", "tanh-gelu-cubed", "relu6-hardswish", "hardsigmoid"])
def test_primitive_activation_becomes_one_op(module: torch.nn.Module, op: str, approximate: str | None) -> None:
    result = check_pass(CanonicalizePatterns(), imported(module), expect=_ops([op]))
    node = result.graph.nodes[0]
    assert node.attr("approximate") == approximate
    assert node.provenance.merged  # the absorbed primitives are named in the provenance


def test_primitive_layernorm_with_affine_becomes_one_layernormalization() -> None:
    result = check_pass(CanonicalizePatterns(), imported(PrimitiveLayerNorm()), expect=_ops(["LayerNormalization"]))
    ln = result.graph.nodes[0]
    assert ln.attr("axis") == 2 and ln.attr("epsilon") == pytest.approx(1e-3)
    fired = [n.rule for n in result.notes if n.fired]
    assert fired == ["layernorm", "layernorm-affine", "layernorm-affine"]


def test_primitive_layernorm_without_affine() -> None:
    check_pass(CanonicalizePatterns(), imported(PrimitiveLayerNorm(affine=False)),
               expect=_ops(["LayerNormalization"]))


def test_sigmoid_first_silu_is_reordered_to_the_canonical_form() -> None:
    result = check_pass(CanonicalizePatterns(), imported(SigmoidFirstSilu()), expect=_ops(["Sigmoid", "Mul"]))
    mul = result.graph.nodes[1]
    assert mul.inputs[0] is result.graph.inputs[0]


GELU_TEXT = """
graph main(%x: f32[2,8]) -> (%y) {{
  %half = const f32[] [{half}]
  %root2 = const f32[] [{root2}]
  %one = const f32[] [1.0]
  %m = Mul(%x, %half) : f32[2,8]
  %d = Div(%x, %root2) : f32[2,8]
  %e = Erf(%d) : f32[2,8]
  %a = Add(%e, %one) : f32[2,8]
  %y = Mul(%m, %a) : f32[2,8]
}}
"""


@pytest.mark.parametrize(("half", "root2", "reason"), [
    ("0.4", "1.4142135", "the scale is 0.4, not 0.5"),
    ("0.5", "2.0", "the Erf argument is not x / sqrt(2)"),
])
def test_gelu_near_misses_say_why(half: str, root2: str, reason: str) -> None:
    check_not_fired(CanonicalizePatterns(), parse_graph(GELU_TEXT.format(half=half, root2=root2)), reason)


def test_gelu_whose_erf_branch_is_shared_is_not_rewritten() -> None:
    text = GELU_TEXT.format(half="0.5", root2="1.4142135").replace("-> (%y)", "-> (%y, %a)")
    check_not_fired(CanonicalizePatterns(), parse_graph(text), "(1 + Erf(...)) branch has users outside the pattern")


def test_hardswish_with_a_wrong_clip_says_why() -> None:
    g = parse_graph("""
        graph main(%x: f32[2,8]) -> (%y) {
          %three = const f32[] [3.0]
          %lo = const f32[] [0.0]
          %hi = const f32[] [5.0]
          %six = const f32[] [6.0]
          %a = Add(%x, %three) : f32[2,8]
          %c = Clip(%a, %lo, %hi) : f32[2,8]
          %m = Mul(%x, %c) : f32[2,8]
          %y = Div(%m, %six) : f32[2,8]
        }
    """)
    check_not_fired(CanonicalizePatterns(), g, "the Clip is not Relu6(x + 3)")


def test_layernorm_over_a_middle_axis_is_not_rewritten() -> None:
    g = parse_graph("""
        graph main(%x: f32[2,3,8]) -> (%y) {
          %axes = const i64[1] [1]
          %two = const f32[] [2.0]
          %eps = const f32[] [1e-05]
          %mean = ReduceMean(%x, %axes) {keepdims=1} : f32[2,1,8]
          %d = Sub(%x, %mean) : f32[2,3,8]
          %sq = Pow(%d, %two) : f32[2,3,8]
          %var = ReduceMean(%sq, %axes) {keepdims=1} : f32[2,1,8]
          %ve = Add(%var, %eps) : f32[2,1,8]
          %std = Sqrt(%ve) : f32[2,1,8]
          %y = Div(%d, %std) : f32[2,3,8]
        }
    """)
    check_not_fired(CanonicalizePatterns(), g, "not over the same trailing axes")


def test_castlike_becomes_a_cast_to_the_dtype_of_its_second_input() -> None:
    g = parse_graph("""
        graph main(%x: f32[2]) -> (%y) {
          %six = const i64[] [6]
          %c = CastLike(%six, %x) : f32[]
          %y = Min(%x, %c) : f32[2]
        }
    """)
    check_pass(CanonicalizePatterns(), g, expect="""
        graph main(%x: f32[2]) -> (%y) {
          %six = const i64[] [6]
          %c = Cast(%six) {to=1} : f32[]  #= ["", ["canonicalize-patterns:castlike"], []]
          %y = Min(%x, %c) : f32[2]
        }
    """)


def test_layernorm_with_a_self_product_and_eps_first() -> None:
    g = parse_graph("""
        graph main(%x: f32[2,3,8]) -> (%y) {
          %axes = const i64[1] [-1]
          %eps = const f32[] [1e-05]
          %mean = ReduceMean(%x, %axes) {keepdims=1} : f32[2,3,1]
          %d = Sub(%x, %mean) : f32[2,3,8]
          %sq = Mul(%d, %d) : f32[2,3,8]
          %var = ReduceMean(%sq, %axes) {keepdims=1} : f32[2,3,1]
          %ve = Add(%eps, %var) : f32[2,3,1]
          %std = Sqrt(%ve) : f32[2,3,1]
          %y = Div(%d, %std) : f32[2,3,8]
        }
    """)
    result = check_pass(CanonicalizePatterns(), g, expect=_ops(["LayerNormalization"]))
    assert result.graph.nodes[0].attr("axis") == 2


class HeadSplit(torch.nn.Module):
    """q, k, v out of one fused projection as GPT writes it: reshape, permute, select by index."""

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        b, t, _ = qkv.shape
        heads = qkv.reshape(b, t, 3, 2, 4).permute(2, 0, 3, 1, 4)
        q, k, v = heads[0], heads[1], heads[2]
        return (q @ k.transpose(-2, -1)) @ v


def test_selections_out_of_a_transpose_are_made_first() -> None:
    """Every Gather of the shared Transpose selects from its source instead, and the Transpose goes: each
    of q, k, v is then a Gather and a Transpose of its own (one fused kernel each on the GPU)."""
    before = imported(HeadSplit(), shape=(2, 5, 24))
    assert [n.op for n in before.nodes].count("Transpose") == 2  # the head split and k's transpose

    def selects_first(g: Graph) -> bool:
        gathers = [n for n in g.nodes if n.op == "Gather"]
        return len(gathers) == 3 and all(n.inputs[0].producer.op == "Reshape" and n.attr("axis") == 2
                                         for n in gathers)
    selects_first.__name__ = "three Gathers on the reshaped projection's axis 2"
    result = check_pass(CanonicalizePatterns(), before, expect=selects_first)
    assert [n.rule for n in result.notes if n.fired].count("gather-before-transpose") == 3


def test_gather_of_a_transpose_with_other_users_is_left() -> None:
    g = parse_graph("""
        graph main(%x: f32[2,3,4]) -> (%y, %t) {
          %i = const i64[] [1]
          %t = Transpose(%x) {perm=[2,0,1]} : f32[4,2,3]
          %y = Gather(%t, %i) {axis=0} : f32[2,3]
        }
    """)
    check_not_fired(CanonicalizePatterns(), g, "the Transpose has users other than scalar Gathers")
