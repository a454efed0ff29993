"""The result of diffing two graphs: plain dataclasses, independent of how they are rendered.

Nodes are referred to by ``NodeRef`` (their index in ``graph.nodes`` plus what a person needs to
recognise them), so a renderer never needs the graphs themselves; the HTML renderer, which draws
them, gets the graphs separately.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from compiler.ir import Node


@dataclass(frozen=True)
class NodeRef:
    """One node of one side: ``index`` into that graph's ``nodes``."""

    index: int
    op: str
    label: str  # the provenance source, else the node name, else its first output's name
    outputs: tuple[str, ...]
    provenance: str

    @classmethod
    def of(cls, node: Node, index: int) -> NodeRef:
        outs = tuple(v.name for v in node.outputs)
        label = node.provenance.source or node.name or (outs[0] if outs else node.op)
        return cls(index, node.qualified_op, label, outs, str(node.provenance))

    def __str__(self) -> str:
        return f"{self.op} '{self.label}'"


@dataclass(frozen=True)
class Change:
    """One difference between two matched nodes.

    ``what`` is ``"op"``, ``"attr"`` (key: the attribute), ``"input"`` (key: the input slot),
    ``"type"`` (key: the output slot) or ``"rewrites"`` (the passes and rules that touched it).
    """

    what: str
    key: str
    before: str
    after: str


@dataclass(frozen=True)
class Rewritten:
    a: NodeRef
    b: NodeRef
    matched_by: str  # "provenance" or "structure"
    changes: tuple[Change, ...]


@dataclass(frozen=True)
class Fused:
    """Nodes of A that became one node of B, by the rules named in the B node's provenance."""

    sources: tuple[NodeRef, ...]
    into: NodeRef
    rules: tuple[str, ...]
    # Attribute changes of the source node the fused one descends from (op and inputs change by
    # the nature of a fusion and are not repeated here).
    changes: tuple[Change, ...] = ()


@dataclass(frozen=True)
class ConstantChange:
    name_a: str
    name_b: str
    matched_by: str  # "name" or "consumer"
    type_a: str
    type_b: str
    max_abs_change: float | None  # None when shapes differ or a payload is unknown (IR text digests)


@dataclass(frozen=True)
class LayerCompression:
    """What quantization and pruning made of one Conv/MatMul/Gemm of A (see ``diff.compression``)."""

    a: NodeRef
    b: NodeRef | None  # the B node doing its product now (a fusion group holding it); None: gone
    scheme: str  # "int8", "int8-dynamic", "int8-weights", "int4-weights", "float" or "removed"
    product: str  # the op doing the product in B ("ConvInteger", "Conv" reading dequantized weights, ...)
    weight: str  # the stored weight's dtype in B ("i8", "i4 in groups of 32", "f32")
    activation: str  # "u8 calibrated", "u8 at run time" or "f32"
    channels: str  # "out 32 -> 24, in 16 -> 12" when pruning changed them, else ""
    notes: tuple[str, ...]  # what the compression passes said about it, when B records their notes

    @property
    def compressed(self) -> bool:
        return self.scheme not in ("float", "removed") or bool(self.channels)


@dataclass
class GraphDiff:
    label_a: str
    label_b: str
    nodes_a: int
    nodes_b: int
    # index in A -> index in B, for every matched node (rewritten and unchanged alike)
    matches: dict[int, int] = field(default_factory=dict)
    matched_by: dict[int, str] = field(default_factory=dict)  # index in A -> "provenance" | "structure"
    added: list[NodeRef] = field(default_factory=list)
    removed: list[NodeRef] = field(default_factory=list)
    rewritten: list[Rewritten] = field(default_factory=list)
    fused: list[Fused] = field(default_factory=list)
    constants: list[ConstantChange] = field(default_factory=list)
    constants_added: list[str] = field(default_factory=list)
    constants_removed: list[str] = field(default_factory=list)
    # per weighted layer of A; empty when B compressed none (see compiler.debugging.diff.compression)
    compression: list[LayerCompression] = field(default_factory=list)

    @property
    def unchanged(self) -> int:
        # A fusion's head is matched too, so count statuses rather than subtract.
        return sum(1 for s in self.status_a().values() if s == "unchanged")

    @property
    def is_empty(self) -> bool:
        return not (self.added or self.removed or self.rewritten or self.fused or self.constants
                    or self.constants_added or self.constants_removed)

    def summary(self) -> dict[str, int]:
        return {
            "nodes_a": self.nodes_a, "nodes_b": self.nodes_b, "matched": len(self.matches),
            "unchanged": self.unchanged, "added": len(self.added), "removed": len(self.removed),
            "rewritten": len(self.rewritten), "fused": len(self.fused),
            "fused_sources": sum(len(f.sources) for f in self.fused),
            "constants_changed": len(self.constants), "constants_added": len(self.constants_added),
            "constants_removed": len(self.constants_removed),
        }

    def status_a(self) -> dict[int, str]:
        """Per node of A: "removed", "fused", "rewritten" or "unchanged"."""
        status = {i: "unchanged" for i in self.matches}
        status.update((r.a.index, "rewritten") for r in self.rewritten)
        status.update((s.index, "fused") for f in self.fused for s in f.sources)
        status.update((r.index, "removed") for r in self.removed)
        return status

    def status_b(self) -> dict[int, str]:
        """Per node of B: "added", "fused", "rewritten" or "unchanged"."""
        status = {j: "unchanged" for j in self.matches.values()}
        status.update((r.b.index, "rewritten") for r in self.rewritten)
        status.update((f.into.index, "fused") for f in self.fused)
        status.update((r.index, "added") for r in self.added)
        return status

