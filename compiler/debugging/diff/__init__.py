"""Node-level diffs of two graphs that follow provenance: ``effarch diff A B``.

``load_graph`` reads any model file, IR text or saved stage; ``diff_graphs`` matches nodes (by
provenance, then by structure) and returns a ``GraphDiff`` (for a compressed B, also what each
weighted layer became: ``compression``); ``render_text``, ``render_json`` and ``write_html``
present it.
"""

from compiler.debugging.diff.changes import diff_graphs
from compiler.debugging.diff.model import Change, ConstantChange, Fused, GraphDiff, LayerCompression, NodeRef, Rewritten

__all__ = ["Change", "ConstantChange", "Fused", "GraphDiff", "LayerCompression", "NodeRef", "Rewritten",
           "diff_graphs"]
