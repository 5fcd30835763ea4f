"""The op implementations of the ONNX->torch interpreter (:mod:`onnx_amp.runtime.torch_graph`).

Each module registers its ops into the one table :data:`OPS` (ONNX op_type of the default domain ->
``fn(node, inputs) -> Tensor | list[Tensor]``); control-flow ops (in :data:`CTX_OPS`) also get the
interpreter context to run their subgraphs. Value representation and dtype rules: :mod:`.common`.
"""

from __future__ import annotations

from . import (  # noqa: F401  (each module registers its ops)
    attention,
    control_flow,
    conv,
    detection,
    elementwise,
    index,
    losses,
    norm,
    pool,
    quant,
    recurrent,
    reduce,
    resize,
    shape,
    signal,
)
from .common import CTX_OPS, OPS, carrier_dtype, numpy_to_torch, onnx_type, tensor_to_torch, torch_dtype

__all__ = ["CTX_OPS", "OPS", "carrier_dtype", "numpy_to_torch", "onnx_type", "tensor_to_torch", "torch_dtype"]
