"""What every op implementation shares: the op table, data types, attributes, errors.

Value representation (the interpreter's dtype rules): every floating tensor is carried as float32,
whatever its ONNX type (float16, bfloat16, double, the 8- and 4-bit floats: their values are exact
in float32); an op whose semantics round to a narrower type (Cast, QuantizeLinear) rounds and returns
float32 again. Integers keep their torch type where torch computes with it (int8..int64, uint8,
bool); 4- and 2-bit integers are carried as int8 / uint8, uint16/32/64 as int64 (torch has almost no
arithmetic for those).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import onnx_ir as ir
import torch

from onnx_amp.core.errors import OnnxAmpError

DT = ir.DataType

OPS: dict[str, Callable] = {}
# ops given a third argument, the interpreter context (subgraphs, outer scope): If, Loop, Scan
CTX_OPS: set[str] = set()


def op(*names: str, ctx: bool = False):
    """Register ``fn(node, inputs) -> Tensor | list[Tensor]`` (``fn(node, inputs, ctx)`` with ``ctx``)."""
    def deco(fn):
        for n in names:
            OPS[n] = fn
            if ctx:
                CTX_OPS.add(n)
        return fn
    return deco


_TORCH = {
    DT.FLOAT: torch.float32, DT.DOUBLE: torch.float64, DT.FLOAT16: torch.float16, DT.BFLOAT16: torch.bfloat16,
    DT.INT64: torch.int64, DT.INT32: torch.int32, DT.INT16: torch.int16, DT.INT8: torch.int8,
    DT.UINT8: torch.uint8, DT.UINT16: torch.uint16, DT.UINT32: torch.uint32, DT.UINT64: torch.uint64,
    DT.BOOL: torch.bool, DT.FLOAT8E4M3FN: torch.float8_e4m3fn, DT.FLOAT8E5M2: torch.float8_e5m2,
    DT.FLOAT8E4M3FNUZ: torch.float8_e4m3fnuz, DT.FLOAT8E5M2FNUZ: torch.float8_e5m2fnuz,
    DT.FLOAT8E8M0: torch.float8_e8m0fnu,
}
FLOAT_TYPES = frozenset({
    DT.FLOAT, DT.DOUBLE, DT.FLOAT16, DT.BFLOAT16, DT.FLOAT8E4M3FN, DT.FLOAT8E5M2, DT.FLOAT8E4M3FNUZ,
    DT.FLOAT8E5M2FNUZ, DT.FLOAT8E8M0, DT.FLOAT4E2M1,
})
# the torch type that carries each ONNX integer type (see the module docstring)
_INT_CARRIER = {
    DT.INT64: torch.int64, DT.INT32: torch.int32, DT.INT16: torch.int16, DT.INT8: torch.int8,
    DT.UINT8: torch.uint8, DT.BOOL: torch.bool, DT.INT4: torch.int8, DT.INT2: torch.int8,
    DT.UINT4: torch.uint8, DT.UINT2: torch.uint8, DT.UINT16: torch.int64, DT.UINT32: torch.int64,
    DT.UINT64: torch.int64,
}
# (min, max) of each integer type
INT_RANGE = {
    DT.INT64: (-2**63, 2**63 - 1), DT.INT32: (-2**31, 2**31 - 1), DT.INT16: (-2**15, 2**15 - 1),
    DT.INT8: (-128, 127), DT.UINT8: (0, 255), DT.INT4: (-8, 7), DT.UINT4: (0, 15), DT.INT2: (-2, 1),
    DT.UINT2: (0, 3), DT.UINT16: (0, 2**16 - 1), DT.UINT32: (0, 2**32 - 1), DT.UINT64: (0, 2**64 - 1),
    DT.BOOL: (0, 1),
}
_CARRIER_TO_ONNX = {
    torch.float32: DT.FLOAT, torch.float64: DT.DOUBLE, torch.float16: DT.FLOAT16, torch.bfloat16: DT.BFLOAT16,
    torch.int64: DT.INT64, torch.int32: DT.INT32, torch.int16: DT.INT16, torch.int8: DT.INT8,
    torch.uint8: DT.UINT8, torch.bool: DT.BOOL,
}


def torch_dtype(dt: int | ir.DataType) -> torch.dtype:
    """The torch dtype of an ONNX data type (``OnnxAmpError`` when torch has none)."""
    dt = ir.DataType(dt)
    try:
        return _TORCH[dt]
    except KeyError:
        raise OnnxAmpError(f"ONNX data type {dt.name} is not supported by the ONNX->torch interpreter") from None


def carrier_dtype(dt: int | ir.DataType) -> torch.dtype:
    """The torch dtype the interpreter carries an ONNX type in (floats: float32)."""
    dt = ir.DataType(dt)
    if dt in FLOAT_TYPES:
        return torch.float32
    if dt in _INT_CARRIER:
        return _INT_CARRIER[dt]
    raise OnnxAmpError(f"ONNX data type {dt.name} is not supported by the ONNX->torch interpreter")


def numpy_to_torch(arr: Any) -> torch.Tensor:
    """Any numpy array (ml_dtypes' bfloat16 / float8 / int4 included) as its carrier tensor."""
    arr = np.asarray(arr)
    name = arr.dtype.name
    if arr.dtype.kind in "OSU":
        raise OnnxAmpError("string tensors are not supported by the ONNX->torch interpreter")
    if arr.dtype.kind == "f" or name.startswith(("bfloat16", "float8", "float4", "float6")):
        return torch.from_numpy(np.array(arr, dtype=np.float32, copy=True))
    if name in ("int4", "int2"):
        return torch.from_numpy(arr.astype(np.int8))
    if name in ("uint4", "uint2"):
        return torch.from_numpy(arr.astype(np.uint8))
    if name in ("uint16", "uint32", "uint64"):
        return torch.from_numpy(arr.astype(np.int64))
    if arr.dtype.kind == "c":
        raise OnnxAmpError("complex tensors are not supported by the ONNX->torch interpreter")
    return torch.from_numpy(np.array(arr, copy=True))


def tensor_to_torch(t: ir.TensorProtocol, float32: bool = True) -> torch.Tensor:
    """An onnx_ir tensor (external data read lazily here) as a torch tensor; floats as float32.

    ``float32=False`` keeps a float type torch has (float16, bfloat16, float8) instead."""
    dt = ir.DataType(t.dtype)
    out = numpy_to_torch(t.numpy())
    if not float32 and dt in FLOAT_TYPES and dt in _TORCH:
        return out.to(_TORCH[dt])
    return out


def onnx_type(value: ir.Value | None, t: torch.Tensor | None = None) -> ir.DataType:
    """A value's ONNX element type: declared in the model, else read from its carrier tensor."""
    if value is not None and value.dtype is not None and value.dtype != DT.UNDEFINED:
        return ir.DataType(value.dtype)
    if t is not None and t.dtype in _CARRIER_TO_ONNX:
        return _CARRIER_TO_ONNX[t.dtype]
    return DT.FLOAT


# ----------------------------------------------------------------------------- attributes, errors

def attr(node: ir.Node, name: str, default: Any = None) -> Any:
    """An attribute's value: tensors as carrier tensors, lists as lists, strings as str."""
    a = node.attributes.get(name)
    if a is None:
        return default
    v = a.value
    if isinstance(v, ir.TensorProtocol):
        return tensor_to_torch(v)
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, (list, tuple)):
        return [x.decode() if isinstance(x, bytes) else x for x in v]
    return v


def ints(t: torch.Tensor | None) -> list[int] | None:
    if t is None:
        return None
    return [int(x) for x in t.reshape(-1).tolist()]


def axis(a: int, rank: int) -> int:
    return a + rank if a < 0 else a


def opset(node: ir.Node) -> int:
    """The opset version a node runs under: its own, else its model's import (set by TorchGraph; a node
    met outside a TorchGraph counts as the newest opset)."""
    if node.version is not None:
        return node.version
    return int(node.meta.get("onnx_amp.opset", 10**4))


def arg(x: list, i: int) -> torch.Tensor | None:
    """Optional input ``i`` (None when absent or empty)."""
    return x[i] if len(x) > i else None


def unsupported(node: ir.Node, what: str) -> OnnxAmpError:
    """The error for an op / attribute / dtype combination the interpreter does not run."""
    return OnnxAmpError(
        f"node {node.name!r}: {node.op_type} {what} is not supported by the ONNX->torch interpreter; "
        "simplify the model, or run TorchGraph(model, fallback=True) to execute it as an opaque step")


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y):  # noqa: D102
        return y.clone()

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        return g, None


def straight_through(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``y`` in the forward pass, the gradient of identity to ``x`` (rounding, casts)."""
    if not (x.requires_grad and torch.is_grad_enabled()):
        return y.detach()
    return _StraightThrough.apply(x, y.detach())
