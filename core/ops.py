"""Op sets every stage agrees on (ONNX default domain op types)."""

from __future__ import annotations

#: nodes that get a precision of their own: a matrix product or convolution with a weight or two activations
LAYER_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose"})
#: standard ops whose attributes hold subgraphs
CONTROL_FLOW_OPS = frozenset({"If", "Loop", "Scan"})
GRAPH_ATTR_OPS = CONTROL_FLOW_OPS | {"SequenceMap"}
#: ops that read only a tensor's shape, not its values
SHAPE_OPS = frozenset({"Shape", "Size"})
NONDETERMINISTIC_OPS = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli", "Dropout"}
)
#: ops that cost (next to) nothing at run time: shape arithmetic and views
FREE_OPS = frozenset({
    "Shape", "Size", "Constant", "ConstantOfShape", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Flatten", "Range",
})
#: ops through which a constant weight stays a constant (folded when the rewrite quantizes it)
WEIGHT_VIEW_OPS = frozenset({"Transpose", "Identity", "Cast", "Reshape", "Squeeze", "Unsqueeze", "Constant"})
