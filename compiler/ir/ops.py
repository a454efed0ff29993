"""The operator set effarch's IR claims: ONNX (default domain) operators with opset-21 semantics.

Every op listed here is imported from ONNX and PyTorch, exported back to ONNX, lowered by every
target and tested against the ONNX backend conformance cases. The importer reports any op not
listed here, all at once. Ops are grouped by kind because statistics (FLOPs), folding and fusion
rules care about the kind.
"""

from __future__ import annotations

ELEMENTWISE_UNARY = frozenset({
    "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Erf", "Sin", "Cos",
    "Relu", "LeakyRelu", "Elu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Gelu", "Softplus",
    "Not", "Sign", "Round", "IsNaN",
})
ELEMENTWISE_BINARY = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mod", "Sum", "Mean",
    "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Xor",
})
ELEMENTWISE_OTHER = frozenset({"Where", "Clip", "Cast", "CastLike", "PRelu", "Identity", "Dropout"})
CONTRACTIONS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
NORMALIZATION = frozenset({
    "BatchNormalization", "LayerNormalization", "Softmax", "LogSoftmax", "LRN", "LpNormalization",
    "GroupNormalization", "InstanceNormalization", "MeanVarianceNormalization",
})
REDUCTIONS = frozenset({
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ArgMax", "ArgMin",
    "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp",
})
# Losses (lowering.losses) and recurrent layers unrolled over their static sequence (lowering.recurrent).
LOSSES_AND_RECURRENT = frozenset({
    "NegativeLogLikelihoodLoss", "SoftmaxCrossEntropyLoss", "RNN", "GRU", "LSTM",
})
POOLING = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool"})
# Quantization in ONNX's own vocabulary, so every quantized stage exports as a QDQ or integer-op
# model that onnxruntime runs as the reference. ``MatMulInteger``/``ConvInteger`` accumulate in i32.
QUANTIZATION = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
})
SHAPE_AND_DATA = frozenset({
    "Reshape", "Transpose", "Flatten", "Concat", "Split", "Slice", "Gather", "Squeeze", "Unsqueeze",
    "Expand", "Shape", "Size", "ConstantOfShape", "Range", "Tile", "Pad", "Trilu",
    "Constant",
})
# Resampling, index-driven data movement (lowering.resize, lowering.spatial_more, lowering.indexing)
# and the requantizing integer products QLinearMatMul/QLinearConv (lowering.qlinear).
RESAMPLING_AND_INDEXING = frozenset({
    "Resize", "GridSample", "GatherElements", "GatherND", "ScatterElements", "ScatterND", "OneHot", "EyeLike",
    "ReverseSequence", "BlackmanWindow", "HammingWindow", "HannWindow", "QLinearMatMul", "QLinearConv",
    "DepthToSpace", "SpaceToDepth", "CenterCropPad", "AffineGrid", "Col2Im", "DeformConv",
    "MaxUnpool",
})

# Ops that ONNX added after opset 21, with the opset of the form the IR follows (the newest form
# the importer reads; their earlier forms only lack optional inputs and attributes). A graph holding
# one exports at the highest such opset instead of 21 (``compiler.frontends.onnx_export``).
NEWER_OPS: dict[str, int] = {"RMSNormalization": 23, "RotaryEmbedding": 23, "Swish": 24, "TensorScatter": 24,
                             "BitCast": 26, "CumProd": 26,
                             "LinearAttention": 27, "CausalConvWithState": 27, "Attention": 25}

# Rarer elementwise ops (lowering.elementwise_more): bitwise, trigonometry, formula activations.
ELEMENTWISE_MORE = frozenset({
    "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot", "Tan", "Asin", "Acos", "Atan",
    "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Selu", "Celu", "ThresholdedRelu", "Shrink", "Softsign",
    "Mish", "IsInf",
})
# Ops along an axis or over named axes (lowering.elementwise_more).
SCANS_AND_SELECTION = frozenset({"Hardmax", "CumSum", "TopK", "Einsum"})

SUPPORTED_OPS: frozenset[str] = (
    ELEMENTWISE_UNARY | ELEMENTWISE_BINARY | ELEMENTWISE_OTHER | CONTRACTIONS | NORMALIZATION
    | ELEMENTWISE_MORE | SCANS_AND_SELECTION
    | REDUCTIONS | LOSSES_AND_RECURRENT | POOLING | QUANTIZATION | SHAPE_AND_DATA | frozenset(NEWER_OPS)
    | RESAMPLING_AND_INDEXING
)

# Ops with no effect at inference time; the importer keeps them (so diffs show their removal),
# simplification passes remove them.
NO_OP_AT_INFERENCE = frozenset({"Identity", "Dropout"})

IR_OPSET = 21
"""The ONNX opset whose semantics domain "" nodes follow (``NEWER_OPS`` aside), and the opset ONNX
export writes for a graph without newer ops."""


def op_opset(op: str) -> int:
    """The opset of the form of ``op`` that the IR follows."""
    return NEWER_OPS.get(op, IR_OPSET)
