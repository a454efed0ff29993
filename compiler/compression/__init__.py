"""What compression passes (quantization, pruning) need besides the graph: the user's data.

The passes themselves (``passes/quantize*.py``, ``passes/prune*.py``) are graph rewrites; they read
activations and scores through the ``CompressionData`` in their ``PassContext.data``, so tests can
hand them small datasets and the IR stays free of file formats and runtimes.
"""

from compiler.compression.data import CompressionData

__all__ = ["CompressionData"]
