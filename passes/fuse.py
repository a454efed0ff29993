"""fuse-operators: effarch decides which ops run as one kernel, and says so in the IR.

A fusion replaces a set of nodes by one group node in domain "effarch" (``FusedConv``,
``FusedMatMul``, ``FusedElementwise``, ``LayerNorm``, ``Attention``) whose ``body`` holds the
original nodes. Groups export to ONNX as local functions and lower to one TVM kernel each
(targets/lowering/fused.py). The rules use the shared rule framework (compiler/pass_manager/rules.py); each is
anchored on the *first* node of its group and its Match names the last one as the anchor, so the
group node goes where the last member was. Tried in this order (``patterns=`` picks a subset):

- ``attention``: MatMul, optional scale Mul/Div, optional mask Add, Softmax, MatMul -> Attention
- ``layernorm``: ReduceMean, Sub, square, ReduceMean, Add eps, Sqrt, Div [, Mul, Add] -> LayerNorm
- ``conv-bn-act``: Conv + BatchNormalization + activation + elementwise epilogue -> FusedConv
- ``matmul-bias-act``: MatMul/Gemm + bias Add + activation + elementwise epilogue -> FusedMatMul
- ``elementwise-chain``: two or more elementwise ops in a row -> FusedElementwise

An epilogue grows from its producer, one consumer at a time in graph order, while the consumer is
elementwise; it stops at the first consumer that is not, and keeps the largest prefix with a single
live output (so SiLU's ``x * Sigmoid(x)`` diamond and a residual Add fuse, a value also read by
an unfusable op ends the group).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from compiler.errors import EffarchError
from compiler.ir import Graph, Node, Value
from compiler.pass_manager import register_pass
from compiler.pass_manager.rules import Match, MatchResult, Rewriter, Rule, RuleSet

PASS_NAME = "fuse-operators"
GROUP_DOMAIN = "effarch"
# Constants up to this many elements are copied into a group's body (scales, eps, clip bounds,
# axes); bigger ones (weights) stay graph constants and enter the group as inputs. Outer copies
# left unused are eliminate-dead-code's business.
BODY_CONSTANT_MAX = 64
# A group holds at most this many nodes: long chains gain nothing more and hurt compile time.
MAX_GROUP = 16

ELEMENTWISE = frozenset({
    "Abs", "Add", "Cast", "CastLike", "Ceil", "Clip", "Cos", "Div", "Elu", "Erf", "Exp", "Floor", "Gelu",
    "HardSigmoid", "HardSwish", "LeakyRelu", "Log", "Max", "Min", "Mish", "Mul", "Neg", "Pow",
    "PRelu", "Reciprocal", "Relu", "Round", "Selu", "Sigmoid", "Sign", "Sin", "Softplus", "Sqrt",
    "Sub", "Tanh", "Where",
})
# Inference BatchNormalization is a per-channel affine map: elementwise for an epilogue; so is
# QuantizeLinear with per-tensor parameters, which ends a quantized layer's epilogue in u8.
EPILOGUE = ELEMENTWISE | {"BatchNormalization", "QuantizeLinear"}
CONV_ANCHORS = frozenset({"Conv", "ConvTranspose", "ConvInteger"})
MATMUL_ANCHORS = frozenset({"MatMul", "Gemm", "MatMulInteger"})


# ---- epilogue growth ------------------------------------------------------------------------------
def _live(members: list[Node], graph: Graph) -> list[Value]:
    """Member outputs read outside the members (or graph outputs): the group's outputs."""
    inside = {id(m) for m in members}
    outs = {id(v) for v in graph.outputs}
    return [v for m in members for v in m.outputs
            if id(v) in outs or any(id(u) not in inside for u, _ in v.uses)]


def grow(anchor: Node, allowed: frozenset[str]) -> tuple[list[Node], str]:
    """The largest closed group starting at ``anchor``, and why it stopped growing ("" when the
    anchor's output feeds nothing that could join)."""
    graph, members, best = anchor.graph, [anchor], [anchor]
    position = {id(n): i for i, n in enumerate(graph.nodes)}
    reason = f"its output is only a graph output, or it reached the {MAX_GROUP}-node limit"
    while len(members) < MAX_GROUP:
        inside = {id(m) for m in members}
        users = [u for v in _live(members, graph) for u, _ in v.uses if id(u) not in inside]
        if not users:
            break
        nxt = min(users, key=lambda u: position[id(u)])
        if nxt.op not in allowed or nxt.domain:
            reason = f"its output feeds {nxt.qualified_op}, which cannot join an epilogue"
            break
        members.append(nxt)
        if len(_live(members, graph)) == 1:
            best = list(members)
    if len(members) == 1 and anchor.op in ELEMENTWISE:
        reason = ""  # a lone elementwise op is no candidate for a chain: nothing to explain
    return best, reason


Members = list[Node] | str | None  # a group (in graph order), a near-miss reason, or no candidate


def _epilogue(node: Node) -> Members:
    members, reason = grow(node, EPILOGUE)
    return members if len(members) > 1 else reason


# ---- elementwise chains ---------------------------------------------------------------------------
def match_elementwise_chain(node: Node) -> Members:
    producers = [v.producer for v in node.inputs if v is not None and v.producer is not None]
    if any(p.op in ELEMENTWISE and not p.domain and len(p.outputs[0].uses) == 1 for p in producers):
        return None  # inside a chain whose head did not fuse: the head gave the reason
    members, reason = grow(node, ELEMENTWISE)
    return members if len(members) > 1 else (reason or None)


# ---- LayerNorm from primitives --------------------------------------------------------------------
LAYERNORM_OPS = ELEMENTWISE | {"ReduceMean"}


def match_layernorm(node: Node) -> Members:
    x = node.inputs[0]
    centred = [u for u, _ in node.outputs[0].uses if u.op == "Sub"]
    if not centred:
        return None
    if all(u.inputs[0] is not x for u in centred):
        return "the mean is not subtracted from its own input (x - mean(x))"
    members, _ = grow(node, LAYERNORM_OPS)
    ops = [m.op for m in members]
    if ops.count("ReduceMean") < 2 or "Sqrt" not in ops or "Div" not in ops:
        return f"no variance and normalisation after x - mean(x) (found {', '.join(ops)})"
    return members


# ---- attention ------------------------------------------------------------------------------------
def _sole_user(node: Node, *ops: str) -> Node | None:
    uses = node.outputs[0].uses
    if len(uses) != 1 or uses[0][0].op not in ops or uses[0][0].domain:
        return None
    return uses[0][0]


def match_attention(node: Node) -> Members:
    """Anchored on the scores MatMul; walks forward through scale and mask to the Softmax."""
    chain, current = [node], node
    for ops in (("Mul", "Div"), ("Add",)):
        nxt = _sole_user(current, *ops)
        if nxt is not None and nxt.inputs[0] is current.outputs[0]:
            chain.append(current := nxt)
    softmax = _sole_user(current, "Softmax")
    if softmax is None:
        return None  # not the scores of an attention
    users = softmax.outputs[0].uses
    if len(users) != 1 or users[0][0].op != "MatMul" or users[0][1] != 0:
        feeds = ", ".join(u.qualified_op for u, _ in users) or "nothing"
        return f"the probabilities feed {feeds}, not exactly one MatMul as its left operand"
    if any(m.outputs[0] in node.graph.outputs for m in (*chain, softmax)):
        return "an intermediate of the attention is a graph output"
    return [*chain, softmax, users[0][0]]


# ---- building a group -----------------------------------------------------------------------------
def _external_inputs(members: list[Node]) -> list[Value]:
    inside = {id(v) for m in members for v in m.outputs}
    seen: dict[int, Value] = {}
    for m in members:
        for v in m.inputs:
            if v is not None and id(v) not in inside:
                seen.setdefault(id(v), v)
    return list(seen.values())


def _small_constant(v: Value) -> bool:
    return v.const is not None and v.producer is None and v.const.size <= BODY_CONSTANT_MAX


def build_body(name: str, members: list[Node], outputs: list[Value]) -> tuple[Graph, list[Value]]:
    """The body graph of ``members`` and the outer values that become the group's inputs."""
    body, vmap = Graph(name), {}
    inputs = [v for v in _external_inputs(members) if not _small_constant(v)]
    for v in _external_inputs(members):
        if v in inputs:
            vmap[id(v)] = body.add_input(v.name, v.type)  # type: ignore[arg-type]  # verified graphs are typed
        else:
            vmap[id(v)] = body.add_constant(v.name, v.const)  # type: ignore[arg-type]  # _small_constant
    for m in members:
        ins = [None if v is None else vmap[id(v)] for v in m.inputs]
        node = body.make_node(m.op, ins, dict(m.attrs), num_outputs=len(m.outputs),
                              types=[v.type for v in m.outputs], output_names=[v.name for v in m.outputs],
                              domain=m.domain, name=m.name, provenance=m.provenance)
        vmap.update((id(old), new) for old, new in zip(m.outputs, node.outputs, strict=True))
    body.outputs = [vmap[id(v)] for v in outputs]
    return body, inputs


def _group_rule(name: str, law: str, op: str, anchors: Iterable[str], find: Callable[[Node], Members]) -> Rule:
    """A fusion rule: ``find`` gives the members from their first node; the group replaces them."""
    def match(node: Node) -> MatchResult:
        members = find(node)
        if members is None or isinstance(members, str):
            return members
        # The last member is the Match's anchor: the group node goes there, after every input.
        return Match(members[-1], tuple(members[:-1]), origin=members[0], bind={"members": members})

    def rewrite(rw: Rewriter, m: Match) -> None:
        members = m.bind["members"]
        outputs = _live(members, rw.graph)
        body, inputs = build_body(name, members, outputs)
        group = Node(op, list(inputs), {}, [Value(v.name, v.type) for v in outputs], domain=GROUP_DOMAIN,
                     name=members[0].name, body=body)
        rw.insert(group)
        for old, new in zip(outputs, group.outputs, strict=True):
            rw.replace(old, new)

    return Rule(name, law, tuple(anchors), match, rewrite)


RULES: tuple[Rule, ...] = (
    _group_rule("attention", "MatMul(Softmax([Add]([Mul|Div](MatMul(q, k), s), mask)), v) -> Attention",
                "Attention", ["MatMul"], match_attention),
    _group_rule("layernorm", "(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) [* g + b] -> LayerNorm",
                "LayerNorm", ["ReduceMean"], match_layernorm),
    _group_rule("conv-bn-act", "act(BN(Conv(x, w)) [op y ...]) -> FusedConv", "FusedConv",
                sorted(CONV_ANCHORS), _epilogue),
    _group_rule("matmul-bias-act", "act(MatMul(x, w) + b [op y ...]) -> FusedMatMul", "FusedMatMul",
                sorted(MATMUL_ANCHORS), _epilogue),
    _group_rule("elementwise-chain", "f(g(...(x))) of elementwise ops -> FusedElementwise",
                "FusedElementwise", sorted(ELEMENTWISE), match_elementwise_chain),
)
RULE_NAMES = tuple(r.name for r in RULES)


@register_pass
class FuseOperators(RuleSet):
    """The rules above; ``patterns=a+b`` keeps only the named rules (all by default)."""

    name = PASS_NAME
    description = "group ops into one-kernel group nodes: attention, layernorm, conv/matmul epilogues"
    rules = RULES
    option_defaults: ClassVar[Mapping[str, Any]] = MappingProxyType({"patterns": RULE_NAMES, "max_sweeps": 4})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        unknown = sorted(set(self.options["patterns"]) - set(RULE_NAMES))
        if unknown:
            raise EffarchError(f"fuse-operators has no pattern {', '.join(unknown)}; "
                               f"choose from {'+'.join(RULE_NAMES)}")

    def active_rules(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.name in self.options["patterns"])
