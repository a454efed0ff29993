"""A diff as JSON for scripts. The schema is stable; a breaking change bumps ``schema``.

```
{
  "schema": "effarch.diff/1",
  "a": "before.onnx", "b": "after.onnx",
  "summary": {"nodes_a": int, "nodes_b": int, "matched": int, "unchanged": int, "added": int,
              "removed": int, "rewritten": int, "fused": int, "fused_sources": int,
              "constants_changed": int, "constants_added": int, "constants_removed": int},
  "added":     [NODE, ...],                      # nodes of b with no counterpart in a
  "removed":   [NODE, ...],                      # nodes of a with no counterpart in b
  "rewritten": [{"a": NODE, "b": NODE, "matched_by": "provenance" | "structure",
                 "changes": [CHANGE, ...]}, ...],
  "fused":     [{"sources": [NODE, ...], "into": NODE, "rules": ["pass:rule", ...],
                 "changes": [CHANGE, ...]}, ...],  # attribute changes of the fused node's origin
  "constants": [{"a": str, "b": str, "matched_by": "name" | "consumer", "type_a": str,
                 "type_b": str, "max_abs_change": float | null}, ...],
  "constants_added": [str, ...], "constants_removed": [str, ...],
  "matches": [[index_a, index_b], ...],          # every matched node pair, fusion heads included
  "compression": [{"a": NODE, "b": NODE | null, "scheme": str, "product": str, "weight": str,
                   "activation": str, "channels": str, "notes": [str, ...]}, ...]
}
NODE = {"index": int, "op": str, "label": str, "outputs": [str, ...], "provenance": str}
CHANGE = {"what": "op" | "attr" | "input" | "type" | "rewrites", "key": str, "before": str, "after": str}
```
``index`` is the node's position in its graph; ``label`` its provenance source, else its name,
else its first output. ``key`` is the attribute name, the input slot, or the output slot.
``max_abs_change`` is null when the shapes differ or a payload is only known by digest.
``compression`` has one entry per Conv/MatMul/Gemm of a when b quantized or pruned any of them,
else it is empty: ``scheme`` is int8, int8-dynamic, int8-weights, int4-weights, float or removed;
``b`` the node doing the product in b (a fusion group holding it); ``product`` that op ("ConvInteger
in effarch::FusedConv"); ``weight`` and ``activation`` their dtypes in b ("i4 in groups of 32",
"u8 calibrated", "u8 at run time", "f32"); ``channels`` what pruning changed ("out 32 -> 24") or
"", and ``notes`` what the compression passes said about the layer when b records it
(``compiler.debugging.diff.compression``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from compiler.debugging.diff.model import GraphDiff, LayerCompression, NodeRef

SCHEMA = "effarch.diff/1"


def diff_to_dict(d: GraphDiff) -> dict[str, Any]:
    return {
        "schema": SCHEMA, "a": d.label_a, "b": d.label_b, "summary": d.summary(),
        "added": [_node(r) for r in d.added],
        "removed": [_node(r) for r in d.removed],
        "rewritten": [{"a": _node(r.a), "b": _node(r.b), "matched_by": r.matched_by,
                       "changes": [dataclasses.asdict(c) for c in r.changes]} for r in d.rewritten],
        "fused": [{"sources": [_node(s) for s in f.sources], "into": _node(f.into), "rules": list(f.rules),
                   "changes": [dataclasses.asdict(c) for c in f.changes]} for f in d.fused],
        "constants": [{"a": c.name_a, "b": c.name_b, "matched_by": c.matched_by, "type_a": c.type_a,
                       "type_b": c.type_b, "max_abs_change": _finite(c.max_abs_change)} for c in d.constants],
        "constants_added": list(d.constants_added), "constants_removed": list(d.constants_removed),
        "matches": [[i, j] for i, j in sorted(d.matches.items())],
        "compression": [_layer(c) for c in d.compression],
    }


def render_json(d: GraphDiff) -> str:
    return json.dumps(diff_to_dict(d), indent=1) + "\n"


def _node(r: NodeRef) -> dict[str, Any]:
    return {"index": r.index, "op": r.op, "label": r.label, "outputs": list(r.outputs), "provenance": r.provenance}


def _layer(c: LayerCompression) -> dict[str, Any]:
    return {"a": _node(c.a), "b": _node(c.b) if c.b is not None else None, "scheme": c.scheme, "product": c.product,
            "weight": c.weight, "activation": c.activation, "channels": c.channels, "notes": list(c.notes)}


def _finite(x: float | None) -> float | None:
    # JSON has no NaN or infinity; a change that large is reported as unknown.
    return x if x is not None and math.isfinite(x) else None
