"""Timing effarch against onnxruntime and PyTorch eager, each runtime in a worker process of its own."""
