"""fuse-operators: effarch decides which ops run as one kernel, and says so in the IR.

A fusion replaces a set of nodes by one group node in domain "effarch" (``FusedConv``,
``FusedMatMul``, ``FusedElementwise``, ``LayerNorm``, ``Attention``) whose ``body`` holds the
original nodes. Groups export to ONNX as local functions and lower to one TVM kernel each
(targets/lowering/fused.py). The rules, tried in this order (``patterns=`` picks a subset):

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

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from compiler.errors import EffarchError
from compiler.ir import Graph, Node, Value
from compiler.pass_manager import Note, Pass, PassContext, PassResult, register_pass

PASS_NAME = "fuse-operators"
GROUP_DOMAIN = "effarch"
# Constants up to this many elements are copied into a group's body (scales, eps, clip bounds,
# axes); bigger ones (weights) stay graph constants and enter the group as inputs.
BODY_CONSTANT_MAX = 64
# A group holds at most this many nodes: long chains gain nothing more and hurt compile time.
MAX_GROUP = 16

ELEMENTWISE = frozenset({
    "Abs", "Add", "Cast", "CastLike", "Ceil", "Clip", "Cos", "Div", "Elu", "Erf", "Exp", "Floor", "Gelu",
    "HardSigmoid", "HardSwish", "LeakyRelu", "Log", "Max", "Min", "Mish", "Mul", "Neg", "Pow",
    "PRelu", "Reciprocal", "Relu", "Round", "Selu", "Sigmoid", "Sign", "Sin", "Softplus", "Sqrt",
    "Sub", "Tanh", "Where",
})
# Inference BatchNormalization is a per-channel affine map: elementwise for an epilogue.
EPILOGUE = ELEMENTWISE | {"BatchNormalization"}
CONV_ANCHORS = frozenset({"Conv", "ConvTranspose"})
MATMUL_ANCHORS = frozenset({"MatMul", "Gemm"})


@dataclass(frozen=True)
class Rule:
    name: str
    law: str  # the rewrite in one line, for `effarch explain` and the docs
    op: str  # the group node's op
    match: Callable[[Node], list[Node] | str]  # the members, or why this node does not start a group


# ---- epilogue growth ------------------------------------------------------------------------------
def _live(members: list[Node], graph: Graph) -> list[Value]:
    """Member outputs read outside the members (or graph outputs): the group's outputs."""
    inside = {id(m) for m in members}
    outs = {id(v) for v in graph.outputs}
    return [v for m in members for v in m.outputs
            if id(v) in outs or any(id(u) not in inside for u, _ in v.uses)]


def grow(anchor: Node, allowed: frozenset[str]) -> tuple[list[Node], str]:
    """The largest closed group starting at ``anchor``, and why it stopped growing."""
    graph, members, best = anchor.graph, [anchor], [anchor]
    position = {id(n): i for i, n in enumerate(graph.nodes)}
    reason = "output is a graph output"
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
    return best, reason


def _epilogue(anchors: frozenset[str], what: str) -> Callable[[Node], list[Node] | str]:
    def match(node: Node) -> list[Node] | str:
        if node.op not in anchors:
            return f"not a {what}"
        members, reason = grow(node, EPILOGUE)
        return members if len(members) > 1 else reason
    return match


# ---- elementwise chains ---------------------------------------------------------------------------
def match_elementwise_chain(node: Node) -> list[Node] | str:
    if node.op not in ELEMENTWISE:
        return "not an elementwise op"
    producers = [v.producer for v in node.inputs if v is not None and v.producer is not None]
    if any(p.op in ELEMENTWISE and not p.domain and len(p.outputs[0].uses) == 1 for p in producers):
        return "not the head of its chain (a chain starts at its first elementwise op)"
    members, reason = grow(node, ELEMENTWISE)
    return members if len(members) > 1 else reason


# ---- LayerNorm from primitives --------------------------------------------------------------------
LAYERNORM_OPS = ELEMENTWISE | {"ReduceMean"}


def match_layernorm(node: Node) -> list[Node] | str:
    if node.op != "ReduceMean":
        return "not a ReduceMean"
    x = node.inputs[0]
    centred = [u for u, _ in node.outputs[0].uses if u.op == "Sub" and u.inputs[0] is x]
    if not centred:
        return "the mean is not subtracted from its own input (x - mean(x))"
    members, _ = grow(node, LAYERNORM_OPS)
    ops = [m.op for m in members]
    if ops.count("ReduceMean") < 2 or "Sqrt" not in ops or "Div" not in ops:
        return f"no variance and normalisation after x - mean(x) (found {', '.join(ops)})"
    return members


# ---- attention ------------------------------------------------------------------------------------
def _single_use(v: Value | None) -> Node | None:
    if v is None or v.producer is None or len(v.uses) != 1:
        return None
    return v.producer


def match_attention(node: Node) -> list[Node] | str:
    if node.op != "Softmax":
        return "not a Softmax"
    users = node.outputs[0].uses
    if len(users) != 1 or users[0][0].op != "MatMul" or users[0][1] != 0:
        feeds = ", ".join(u.qualified_op for u, _ in users) or "nothing"
        return f"the probabilities feed {feeds}, not exactly one MatMul as its left operand"
    chain, producer = [node], _single_use(node.inputs[0])
    for op in ("Add", "Mul|Div"):
        if producer is not None and producer.op in op.split("|"):
            chain.insert(0, producer)
            producer = _single_use(producer.inputs[0])
    if producer is None or producer.op != "MatMul":
        return "the scores are not a single-use MatMul (optionally scaled and masked)"
    if node.outputs[0] in node.graph.outputs:
        return "the probabilities are a graph output"
    return [producer, *chain, users[0][0]]


RULES: tuple[Rule, ...] = (
    Rule("attention", "MatMul(Softmax([Add]([Mul|Div](MatMul(q, k), s), mask)), v) -> Attention",
         "Attention", match_attention),
    Rule("layernorm", "(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) [* g + b] -> LayerNorm",
         "LayerNorm", match_layernorm),
    Rule("conv-bn-act", "act(BN(Conv(x, w)) [op y ...]) -> FusedConv", "FusedConv",
         _epilogue(CONV_ANCHORS, "Conv")),
    Rule("matmul-bias-act", "act(MatMul(x, w) + b [op y ...]) -> FusedMatMul", "FusedMatMul",
         _epilogue(MATMUL_ANCHORS, "MatMul or Gemm")),
    Rule("elementwise-chain", "f(g(...(x))) of elementwise ops -> FusedElementwise", "FusedElementwise",
         match_elementwise_chain),
)
RULE_NAMES = tuple(r.name for r in RULES)


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
        vmap[id(v)] = body.add_input(v.name, v.type) if v in inputs else body.add_constant(v.name, v.const)
    for m in members:
        ins = [None if v is None else vmap[id(v)] for v in m.inputs]
        node = body.make_node(m.op, ins, dict(m.attrs), num_outputs=len(m.outputs),
                              types=[v.type for v in m.outputs], output_names=[v.name for v in m.outputs],
                              domain=m.domain, name=m.name, provenance=m.provenance)
        vmap.update((id(old), new) for old, new in zip(m.outputs, node.outputs, strict=True))
    body.outputs = [vmap[id(v)] for v in outputs]
    return body, inputs


def make_group(graph: Graph, members: list[Node], rule: Rule) -> Node:
    """Replace ``members`` (in graph order) by one group node placed where the last member was."""
    outputs = _live(members, graph)
    body, inputs = build_body(rule.name, members, outputs)
    anchor = members[0]
    sources = (s for m in members for s in (m.provenance.source, *m.provenance.merged) if s)
    merged = tuple(dict.fromkeys(sources))  # each source once, in member order
    group = Node(rule.op, list(inputs), {}, [Value(v.name, v.type) for v in outputs], domain=GROUP_DOMAIN,
                 name=anchor.name, provenance=anchor.provenance.rewritten(PASS_NAME, rule.name, merged),
                 body=body)
    graph.insert(group, before=members[-1])
    for old, new in zip(outputs, group.outputs, strict=True):
        graph.replace_value(old, new)
    for m in reversed(members):
        graph.remove_node(m)
    # Constants copied into the body and read nowhere else moved; the rest stay.
    for v in _external_inputs(body.nodes):
        outer = graph.constants.get(v.name)
        if outer is not None and not outer.uses and outer not in graph.outputs:
            del graph.constants[v.name]
    return group


def _candidates(graph: Graph) -> Iterable[Node]:
    for node in graph.nodes_snapshot():
        if node.graph is graph and not node.domain:
            yield node


@register_pass
class FuseOperators(Pass):
    name = PASS_NAME
    description = "group ops into one-kernel group nodes: attention, layernorm, conv/matmul epilogues"
    option_defaults = {"patterns": RULE_NAMES}

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        unknown = sorted(set(self.options["patterns"]) - set(RULE_NAMES))
        if unknown:
            raise EffarchError(f"fuse-operators has no pattern {', '.join(unknown)}; "
                               f"choose from {'+'.join(RULE_NAMES)}")
        notes: list[Note] = []
        for rule in (r for r in RULES if r.name in self.options["patterns"]):
            notes += self._apply(graph, rule)
        return PassResult(graph, any(n.fired for n in notes), notes)

    @staticmethod
    def _apply(graph: Graph, rule: Rule) -> list[Note]:
        notes = []
        for node in _candidates(graph):
            if node.graph is not graph:  # absorbed by a group made earlier in this loop
                continue
            found = rule.match(node)
            if isinstance(found, str):
                if not found.startswith("not a"):  # the node is not this rule's kind: no note
                    notes.append(Note.at(node, rule.name, found))
                continue
            group = make_group(graph, found, rule)
            ops = "+".join(m.op for m in found)
            notes.append(Note.at(group, rule.name, f"{ops} -> {GROUP_DOMAIN}::{rule.op}", fired=True))
        return notes
