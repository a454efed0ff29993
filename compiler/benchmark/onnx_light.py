"""The ONNX package's own model-zoo architectures ("light" backend test models) with real-looking weights.

The ``onnx`` package ships AlexNet, DenseNet-121, Inception v1/v2, ResNet-50, ShuffleNet, SqueezeNet,
VGG-19 and ZFNet-512 at opset 9 with every weight a ConstantOfShape node (a constant tensor), which
makes their outputs uniform and useless for comparing numbers. ``light_model`` swaps each for a
seeded random initializer (scaled by fan-in; BatchNorm scales and variances kept positive), at the
file's own opset unless ``opset`` asks for a conversion.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper, version_converter

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
NAMES = ("bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet", "squeezenet",
         "vgg19", "zfnet512")


def light_model(name: str, out: Path, *, opset: int | None = None, seed: int = 0) -> Path:
    """light_<name>.onnx with random weights as initializers, saved at ``out``."""
    model = onnx.load(str(LIGHT / f"light_{name}.onnx"))
    _random_weights(model.graph, np.random.default_rng(seed))
    names = {i.name for i in model.graph.initializer}
    real_inputs = [i for i in model.graph.input if i.name not in names]  # weights are not inputs
    del model.graph.input[:]
    model.graph.input.extend(real_inputs)
    model.ir_version = max(model.ir_version, 4)  # IR 3 wanted every initializer listed as an input
    if opset is not None:
        model = version_converter.convert_version(model, opset)
    onnx.save(model, str(out))
    return out


def _random_weights(graph: onnx.GraphProto, rng: np.random.Generator) -> None:
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    positive = {n.input[i] for n in graph.node if n.op_type == "BatchNormalization" for i in (1, 4)}
    kept = []
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in inits:
            shape = [int(d) for d in inits[node.input[0]]]
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            w = (rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))).astype(np.float32)
            if node.output[0] in positive:  # BatchNorm scale and variance: no NaN from sqrt(var)
                w = np.abs(w) + np.float32(0.5)
            graph.initializer.append(numpy_helper.from_array(w, node.output[0]))
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    used = {i for n in kept for i in n.input} | {o.name for o in graph.output}
    for init in [i for i in graph.initializer if i.name not in used]:  # the removed nodes' shape inputs
        graph.initializer.remove(init)
    for inp in [i for i in graph.input if i.name not in used]:
        graph.input.remove(inp)
