"""What the compression passes said about each layer, kept in the compressed model itself.

``effarch quantize`` stores the notes of quantize-*, integer-ops and prune-channels in the graph's
metadata under ``NOTES_KEY`` (JSON), which ONNX export writes as a model property and import,
the IR printer and the parser keep. ``effarch diff`` reads them back to say why a layer stayed
float. A note names its layer by provenance source, because node names do not survive ONNX
export (the exporter renames nodes after their source) while provenance does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from compiler.ir import Graph, Node

NOTES_KEY = "effarch.compression_notes"
NOTED_PASSES = ("prune-channels", "quantize-static", "quantize-dynamic", "quantize-weights", "integer-ops")


@dataclass(frozen=True)
class LayerNote:
    pass_name: str
    source: str  # provenance source of the layer the note is about; "" for whole-model notes
    fired: bool
    reason: str


def layer_notes(records: Iterable[Any], graph: Graph) -> list[LayerNote]:
    """The notes of the compression passes among ``records`` (PassRecords), each tied to the
    source of the node of ``graph`` it names (by node name or as the passes label a layer,
    ``"Conv %out"``), else to the source its provenance text starts with."""
    sources = _sources_by_name(graph)
    out = []
    for record in records:
        name = record.name.split("{")[0]
        if name in NOTED_PASSES:
            out += [LayerNote(name, sources.get(n.node) or _leading_source(n.provenance), n.fired, n.reason)
                    for n in record.notes]
    return out


def to_metadata(notes: list[LayerNote]) -> str:
    return json.dumps([asdict(n) for n in notes], separators=(",", ":"))


def from_graph(graph: Graph) -> list[LayerNote]:
    """The notes stored in ``graph``'s metadata; none when it has none or they do not parse."""
    try:
        return [LayerNote(**d) for d in json.loads(graph.metadata.get(NOTES_KEY, "[]"))]
    except (ValueError, TypeError):
        return []  # written by another version: the diff still shows the graphs, without reasons


def _sources_by_name(graph: Graph) -> dict[str, str]:
    out: dict[str, str] = {}
    for n in graph.nodes:
        if n.provenance.source:
            if n.name:
                out.setdefault(n.name, n.provenance.source)
            if n.outputs:
                out.setdefault(layer_label(n), n.provenance.source)
    return out


def layer_label(n: Node) -> str:
    """How the quantization passes name a layer in their notes (passes.quantize.label)."""
    return f"{n.op} %{n.outputs[0].name}"


def _leading_source(provenance: str) -> str:
    # Provenance prints as "source <pass:rule> ... {merged}"; a text starting with < or { has no source.
    return "" if not provenance or provenance[0] in "<{" else provenance.split(" <")[0].split(" {")[0]
