"""Checking numbers: seeded random inputs, onnxruntime as the reference, per-dtype tolerances."""
