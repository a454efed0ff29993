"""effarch: a graph compiler from PyTorch and ONNX models to x86, CUDA and aarch64 binaries."""

__version__ = "0.1.0"
