"""Models in and out: ONNX models and PyTorch programs into effarch IR graphs, and IR back to ONNX.

``compiler.frontends.onnx.import_onnx`` is the one door into the IR; the PyTorch frontend exports to
ONNX in memory and goes through it, so both paths share normalisation, typing and provenance.
``compiler.frontends.onnx_export.to_onnx`` is the way out (the numeric reference runs on it).
"""
