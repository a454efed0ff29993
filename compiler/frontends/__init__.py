"""Frontends: turn ONNX models and PyTorch programs into effarch IR graphs.

``compiler.frontends.onnx.import_onnx`` is the one door into the IR; the PyTorch frontend exports to
ONNX in memory and goes through it, so both paths share normalisation, typing and provenance.
"""
