"""An ONNX -> torch interpreter: run an ``ir.Model`` with torch ops, so autograd works on it.

Every ONNX node maps one-to-one to torch operations and keeps its name, so calibration can attach
to any layer operand by node name (attention's activation-activation MatMuls included), for models
exported from torch and for ONNX-only models alike.

    tg = TorchGraph(model)
    out = tg({"input_ids": ids})                       # {output name: tensor}
    out = tg(feeds, operand_hook=fn)                   # fn(node, input_index, tensor) -> tensor

``operand_hook`` is called for every floating input of every layer node (MatMul, Gemm, Conv,
ConvTranspose; ``hook_ops`` changes the set) before the node runs; what it returns is used instead
(observe it, register a gradient hook, or replace it by a fake-quantized copy). ``output_hook(node,
index, tensor) -> tensor`` does the same for those nodes' outputs. ``capture`` names extra values
to return.

Initializers (lazy external data included) and Constant nodes become float32 tensors (integer
ones keep their type). Values are freed after their last use, so memory stays near ORT's.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import numpy as np
import onnx_ir as ir
import torch
import torch.nn.functional as F

from onnx_amp.runtime.onnx_io import OnnxAmpError

LAYER_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose"})

_DT = {
    ir.DataType.FLOAT: torch.float32,
    ir.DataType.DOUBLE: torch.float64,
    ir.DataType.FLOAT16: torch.float16,
    ir.DataType.BFLOAT16: torch.bfloat16,
    ir.DataType.INT64: torch.int64,
    ir.DataType.INT32: torch.int32,
    ir.DataType.INT16: torch.int16,
    ir.DataType.INT8: torch.int8,
    ir.DataType.UINT8: torch.uint8,
    ir.DataType.BOOL: torch.bool,
    ir.DataType.FLOAT8E4M3FN: torch.float8_e4m3fn,
    ir.DataType.FLOAT8E5M2: torch.float8_e5m2,
}
_FLOAT_ONNX = {ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16}


def torch_dtype(dt: int | ir.DataType) -> torch.dtype:
    dt = ir.DataType(dt)
    try:
        return _DT[dt]
    except KeyError:
        raise OnnxAmpError(f"ONNX data type {dt.name} is not supported by the ONNX->torch interpreter") from None


def tensor_to_torch(t: ir.TensorProtocol, float32: bool = True) -> torch.Tensor:
    """An onnx_ir tensor (external data read lazily here) as a torch tensor; floats as float32."""
    dt = ir.DataType(t.dtype)
    arr = t.numpy()
    if dt in (ir.DataType.BFLOAT16, ir.DataType.FLOAT8E4M3FN, ir.DataType.FLOAT8E5M2) or arr.dtype.kind == "V":
        arr = np.asarray(arr).astype(np.float32)
        out = torch.from_numpy(np.array(arr, copy=True))
        return out if float32 else out.to(torch_dtype(dt))
    out = torch.from_numpy(np.array(arr, copy=True))
    if float32 and out.is_floating_point():
        out = out.float()
    return out


# ----------------------------------------------------------------------------- attribute helpers

def _attr(node: ir.Node, name: str, default: Any = None) -> Any:
    a = node.attributes.get(name)
    if a is None:
        return default
    v = a.value
    if isinstance(v, ir.TensorProtocol):
        return tensor_to_torch(v, float32=False)
    if isinstance(v, (list, tuple)):
        return list(v)
    return v


def _ints(t: torch.Tensor | None) -> list[int] | None:
    if t is None:
        return None
    return [int(x) for x in t.reshape(-1).tolist()]


def _axis(a: int, rank: int) -> int:
    return a + rank if a < 0 else a


# ----------------------------------------------------------------------------- op implementations
# each: (node, inputs: list[Tensor | None]) -> Tensor | list[Tensor]

OPS: dict[str, Callable] = {}


def _op(*names):
    def deco(fn):
        for n in names:
            OPS[n] = fn
        return fn
    return deco


def _unary(fn):
    return lambda node, x: fn(x[0])


for _name, _fn in {
    "Identity": lambda x: x, "Neg": torch.neg, "Abs": torch.abs, "Exp": torch.exp, "Log": torch.log,
    "Sqrt": torch.sqrt, "Reciprocal": torch.reciprocal, "Erf": torch.erf, "Tanh": torch.tanh,
    "Sigmoid": torch.sigmoid, "Relu": torch.relu, "Sin": torch.sin, "Cos": torch.cos,
    "Floor": torch.floor, "Ceil": torch.ceil, "Sign": torch.sign, "Not": torch.logical_not,
    "IsNaN": torch.isnan, "Round": torch.round, "Softsign": F.softsign, "Softplus": F.softplus,
    "Tan": torch.tan, "Atan": torch.atan, "Asin": torch.asin, "Acos": torch.acos,
}.items():
    OPS[_name] = _unary(_fn)


@_op("Add")
def _add(node, x):
    return x[0] + x[1]


@_op("Sub")
def _sub(node, x):
    return x[0] - x[1]


@_op("Mul")
def _mul(node, x):
    return x[0] * x[1]


@_op("Div")
def _div(node, x):
    a, b = x
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


@_op("Pow")
def _pow(node, x):
    a, b = x
    if b.is_floating_point() and a.is_floating_point() and b.numel() == 1 and float(b) == 2.0:
        return a * a
    out = torch.pow(a, b.to(a.dtype) if a.is_floating_point() else b)
    return out.to(a.dtype)


@_op("Mod")
def _mod(node, x):
    return torch.fmod(x[0], x[1]) if _attr(node, "fmod", 0) else torch.remainder(x[0], x[1])


@_op("Equal")
def _eq(node, x):
    return x[0] == x[1]


@_op("Less")
def _lt(node, x):
    return x[0] < x[1]


@_op("LessOrEqual")
def _le(node, x):
    return x[0] <= x[1]


@_op("Greater")
def _gt(node, x):
    return x[0] > x[1]


@_op("GreaterOrEqual")
def _ge(node, x):
    return x[0] >= x[1]


@_op("And")
def _and(node, x):
    return torch.logical_and(x[0], x[1])


@_op("Or")
def _or(node, x):
    return torch.logical_or(x[0], x[1])


@_op("Xor")
def _xor(node, x):
    return torch.logical_xor(x[0], x[1])


@_op("IsInf")
def _isinf(node, x):
    pos, neg = _attr(node, "detect_positive", 1), _attr(node, "detect_negative", 1)
    t = x[0]
    return (torch.isposinf(t) & bool(pos)) | (torch.isneginf(t) & bool(neg))


@_op("Where")
def _where(node, x):
    c, a, b = x
    if a.dtype != b.dtype:
        b = b.to(a.dtype)
    return torch.where(c.bool(), a, b)


@_op("Max", "Min", "Sum", "Mean")
def _variadic(node, x):
    out = x[0]
    for t in x[1:]:
        if node.op_type == "Max":
            out = torch.maximum(out, t)
        elif node.op_type == "Min":
            out = torch.minimum(out, t)
        else:
            out = out + t
    return out / len(x) if node.op_type == "Mean" else out


@_op("Clip")
def _clip(node, x):
    t = x[0]
    lo = x[1] if len(x) > 1 and x[1] is not None else _attr(node, "min")
    hi = x[2] if len(x) > 2 and x[2] is not None else _attr(node, "max")
    if isinstance(lo, torch.Tensor):
        lo = lo.item()
    if isinstance(hi, torch.Tensor):
        hi = hi.item()
    return torch.clamp(t, min=lo, max=hi)


@_op("LeakyRelu")
def _leaky(node, x):
    return F.leaky_relu(x[0], _attr(node, "alpha", 0.01))


@_op("Elu")
def _elu(node, x):
    return F.elu(x[0], _attr(node, "alpha", 1.0))


@_op("HardSigmoid")
def _hsig(node, x):
    a, b = _attr(node, "alpha", 0.2), _attr(node, "beta", 0.5)
    return torch.clamp(a * x[0] + b, 0.0, 1.0)


@_op("HardSwish")
def _hswish(node, x):
    return x[0] * torch.clamp(x[0] / 6.0 + 0.5, 0.0, 1.0)


@_op("Gelu")
def _gelu(node, x):
    return F.gelu(x[0], approximate=_attr(node, "approximate", "none"))


@_op("Softmax", "LogSoftmax")
def _softmax(node, x):
    axis = _attr(node, "axis", -1)
    t = x[0]
    if node.version is not None and node.version < 13:  # old semantics: coerce to 2D
        shape = t.shape
        a = _axis(axis if axis is not None else 1, t.dim())
        t2 = t.reshape(int(np.prod(shape[:a], dtype=np.int64)), -1)
        f = torch.softmax if node.op_type == "Softmax" else torch.log_softmax
        return f(t2, dim=1).reshape(shape)
    return torch.softmax(t, axis) if node.op_type == "Softmax" else torch.log_softmax(t, axis)


@_op("MatMul")
def _matmul(node, x):
    return torch.matmul(x[0], x[1])


@_op("Gemm")
def _gemm(node, x):
    a, b = x[0], x[1]
    if _attr(node, "transA", 0):
        a = a.t()
    if _attr(node, "transB", 0):
        b = b.t()
    out = _attr(node, "alpha", 1.0) * (a @ b)
    if len(x) > 2 and x[2] is not None:
        out = out + _attr(node, "beta", 1.0) * x[2]
    return out


def _conv_pads(node, x_shape, w_spatial, strides, dilations, transposed=False):
    nd = len(w_spatial)
    auto_pad = _attr(node, "auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    pads = _attr(node, "pads", [0] * (2 * nd))
    if auto_pad in ("SAME_UPPER", "SAME_LOWER") and not transposed:
        pads = [0] * (2 * nd)
        for i in range(nd):
            size = x_shape[2 + i]
            out = math.ceil(size / strides[i])
            k = (w_spatial[i] - 1) * dilations[i] + 1
            total = max(0, (out - 1) * strides[i] + k - size)
            lo = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            pads[i], pads[nd + i] = lo, total - lo
    elif auto_pad == "VALID":
        pads = [0] * (2 * nd)
    return pads


@_op("Conv")
def _conv(node, x):
    t, w = x[0], x[1]
    b = x[2] if len(x) > 2 else None
    nd = w.dim() - 2
    strides = _attr(node, "strides", [1] * nd)
    dilations = _attr(node, "dilations", [1] * nd)
    group = _attr(node, "group", 1)
    pads = _conv_pads(node, t.shape, list(w.shape[2:]), strides, dilations)
    begin, end = pads[:nd], pads[nd:]
    if begin == end:
        padding = begin
    else:
        fp = []
        for i in reversed(range(nd)):
            fp += [begin[i], end[i]]
        t = F.pad(t, fp)
        padding = [0] * nd
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    return fn(t, w, b, stride=strides, padding=padding, dilation=dilations, groups=group)


@_op("ConvTranspose")
def _convt(node, x):
    t, w = x[0], x[1]
    b = x[2] if len(x) > 2 else None
    nd = w.dim() - 2
    strides = _attr(node, "strides", [1] * nd)
    dilations = _attr(node, "dilations", [1] * nd)
    group = _attr(node, "group", 1)
    pads = _attr(node, "pads", [0] * (2 * nd))
    if pads[:nd] != pads[nd:] or _attr(node, "output_shape") is not None or _attr(node, "auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        raise OnnxAmpError(f"node {node.name!r}: ConvTranspose with asymmetric pads/auto_pad/output_shape is not supported by the interpreter")
    opad = _attr(node, "output_padding", [0] * nd)
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[nd]
    return fn(t, w, b, stride=strides, padding=pads[:nd], output_padding=opad, groups=group, dilation=dilations)


@_op("BatchNormalization")
def _bn(node, x):
    t, scale, bias, mean, var = x[:5]
    eps = _attr(node, "epsilon", 1e-5)
    shape = [1, -1] + [1] * (t.dim() - 2)
    inv = torch.rsqrt(var + eps) * scale
    return t * inv.reshape(shape) + (bias - mean * inv).reshape(shape)


@_op("LayerNormalization")
def _ln(node, x):
    t, scale = x[0], x[1]
    bias = x[2] if len(x) > 2 else None
    axis = _axis(_attr(node, "axis", -1), t.dim())
    eps = _attr(node, "epsilon", 1e-5)
    dims = list(range(axis, t.dim()))
    n_out = len([o for o in node.outputs if o is not None and o.name])
    norm_shape = tuple(t.shape[axis:])
    if n_out == 1 and t.dtype == torch.float32 and tuple(scale.shape) == norm_shape and (
            bias is None or tuple(bias.shape) == norm_shape):
        return F.layer_norm(t, norm_shape, scale, bias, eps)
    mean = t.mean(dim=dims, keepdim=True)
    var = ((t - mean) ** 2).mean(dim=dims, keepdim=True)
    inv = torch.rsqrt(var + eps)
    out = (t - mean) * inv * scale
    if bias is not None:
        out = out + bias
    return [out, mean, inv][: len(node.outputs)] if len(node.outputs) > 1 else out


@_op("RMSNormalization")
def _rms(node, x):
    t, scale = x[0], x[1]
    axis = _axis(_attr(node, "axis", -1), t.dim())
    eps = _attr(node, "epsilon", 1e-5)
    dims = list(range(axis, t.dim()))
    return t * torch.rsqrt((t * t).mean(dim=dims, keepdim=True) + eps) * scale


@_op("GlobalAveragePool", "GlobalMaxPool")
def _gpool(node, x):
    dims = list(range(2, x[0].dim()))
    if node.op_type == "GlobalAveragePool":
        return x[0].mean(dim=dims, keepdim=True)
    return x[0].amax(dim=dims, keepdim=True)


@_op("AveragePool", "MaxPool")
def _pool(node, x):
    t = x[0]
    k = _attr(node, "kernel_shape")
    nd = len(k)
    strides = _attr(node, "strides", [1] * nd)
    dil = _attr(node, "dilations", [1] * nd)
    pads = _conv_pads(node, t.shape, k, strides, dil)
    ceil = bool(_attr(node, "ceil_mode", 0))
    if pads[:nd] != pads[nd:]:
        fp = []
        for i in reversed(range(nd)):
            fp += [pads[i], pads[nd + i]]
        t = F.pad(t, fp, value=(-math.inf if node.op_type == "MaxPool" else 0.0))
        pad = [0] * nd
    else:
        pad = pads[:nd]
    if node.op_type == "MaxPool":
        fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
        return fn(t, k, strides, pad, dil, ceil_mode=ceil)
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
    return fn(t, k, strides, pad, ceil_mode=ceil, count_include_pad=bool(_attr(node, "count_include_pad", 0)))


def _reduce_axes(node, x):
    axes = _attr(node, "axes")
    if axes is None and len(x) > 1 and x[1] is not None:
        axes = _ints(x[1])
    return axes


@_op("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSumSquare", "ReduceL2")
def _reduce(node, x):
    t = x[0]
    axes = _reduce_axes(node, x)
    keep = bool(_attr(node, "keepdims", 1))
    if not axes:
        if _attr(node, "noop_with_empty_axes", 0):
            return t
        axes = list(range(t.dim()))
    axes = [_axis(a, t.dim()) for a in axes]
    op = node.op_type
    if op == "ReduceMean":
        return t.mean(dim=axes, keepdim=keep)
    if op == "ReduceSum":
        return t.sum(dim=axes, keepdim=keep)
    if op == "ReduceSumSquare":
        return (t * t).sum(dim=axes, keepdim=keep)
    if op == "ReduceL2":
        return torch.sqrt((t * t).sum(dim=axes, keepdim=keep))
    if op == "ReduceMax":
        return t.amax(dim=axes, keepdim=keep)
    if op == "ReduceMin":
        return t.amin(dim=axes, keepdim=keep)
    out = t
    for a in sorted(axes, reverse=True):
        out = out.prod(dim=a, keepdim=keep)
    return out


@_op("ArgMax", "ArgMin")
def _argmax(node, x):
    axis = _attr(node, "axis", 0)
    keep = bool(_attr(node, "keepdims", 1))
    t = x[0]
    if _attr(node, "select_last_index", 0):
        t = t.flip(axis)
        idx = (torch.argmax if node.op_type == "ArgMax" else torch.argmin)(t, dim=axis, keepdim=keep)
        return t.shape[axis] - 1 - idx
    return (torch.argmax if node.op_type == "ArgMax" else torch.argmin)(t, dim=axis, keepdim=keep)


@_op("CumSum")
def _cumsum(node, x):
    t, axis = x[0], int(x[1].reshape(-1)[0])
    if _attr(node, "reverse", 0):
        t = t.flip(axis)
    if _attr(node, "exclusive", 0):
        out = torch.cumsum(t, axis) - t
    else:
        out = torch.cumsum(t, axis)
    return out.flip(axis) if _attr(node, "reverse", 0) else out


# ---- shape ops

@_op("Shape")
def _shape(node, x):
    s = list(x[0].shape)
    start = _attr(node, "start", 0)
    end = _attr(node, "end", None)
    return torch.tensor(s[start:end] if end is not None else s[start:], dtype=torch.int64)


@_op("Size")
def _size(node, x):
    return torch.tensor(x[0].numel(), dtype=torch.int64)


@_op("Reshape")
def _reshape(node, x):
    t, shape = x[0], _ints(x[1])
    allowzero = _attr(node, "allowzero", 0)
    if not allowzero:
        shape = [t.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return t.reshape(shape)


@_op("Flatten")
def _flatten(node, x):
    t = x[0]
    a = _axis(_attr(node, "axis", 1), t.dim())
    lead = int(np.prod(t.shape[:a], dtype=np.int64)) if a > 0 else 1
    return t.reshape(lead, -1)


@_op("Transpose")
def _transpose(node, x):
    perm = _attr(node, "perm")
    if perm is None:
        perm = list(reversed(range(x[0].dim())))
    return x[0].permute(perm)


@_op("Unsqueeze")
def _unsqueeze(node, x):
    axes = _attr(node, "axes")
    if axes is None:
        axes = _ints(x[1])
    t = x[0]
    rank = t.dim() + len(axes)
    for a in sorted(_axis(a, rank) for a in axes):
        t = t.unsqueeze(a)
    return t


@_op("Squeeze")
def _squeeze(node, x):
    axes = _attr(node, "axes")
    if axes is None and len(x) > 1 and x[1] is not None:
        axes = _ints(x[1])
    t = x[0]
    if axes is None:
        return t.squeeze()
    for a in sorted((_axis(a, t.dim()) for a in axes), reverse=True):
        t = t.squeeze(a)
    return t


@_op("Concat")
def _concat(node, x):
    ts = [t for t in x if t is not None]
    dt = ts[0].dtype
    return torch.cat([t.to(dt) for t in ts], dim=_attr(node, "axis"))


@_op("Split")
def _split(node, x):
    t = x[0]
    axis = _axis(_attr(node, "axis", 0), t.dim())
    split = _attr(node, "split")
    if split is None and len(x) > 1 and x[1] is not None:
        split = _ints(x[1])
    n = len(node.outputs)
    if split is None:
        size = t.shape[axis]
        chunk = -(-size // n)
        split = [min(chunk, size - i * chunk) for i in range(n)]
    return list(torch.split(t, split, dim=axis))


@_op("Slice")
def _slice(node, x):
    t = x[0]
    if len(x) > 1:
        starts, ends = _ints(x[1]), _ints(x[2])
        axes = _ints(x[3]) if len(x) > 3 and x[3] is not None else list(range(len(starts)))
        steps = _ints(x[4]) if len(x) > 4 and x[4] is not None else [1] * len(starts)
    else:
        starts, ends = _attr(node, "starts"), _attr(node, "ends")
        axes = _attr(node, "axes", list(range(len(starts))))
        steps = [1] * len(starts)
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = _axis(a, t.dim())
        d = t.shape[a]
        if s < 0:
            s += d
        if e < 0:
            e += d
        if st > 0:
            s, e = min(max(s, 0), d), min(max(e, 0), d)
            idx = [slice(None)] * a + [slice(s, e, st)]
            t = t[tuple(idx)] if st == 1 else t.index_select(a, torch.arange(s, e, st))
        else:
            s, e = min(max(s, 0), d - 1), min(max(e, -1), d - 1)
            t = t.index_select(a, torch.arange(s, e, st, dtype=torch.int64)) if s > e else t.narrow(a, 0, 0)
    return t


@_op("Gather")
def _gather(node, x):
    data, idx = x
    axis = _axis(_attr(node, "axis", 0), data.dim())
    idx = idx.long()
    idx = torch.where(idx < 0, idx + data.shape[axis], idx)
    out = data.index_select(axis, idx.reshape(-1))
    return out.reshape(tuple(data.shape[:axis]) + tuple(idx.shape) + tuple(data.shape[axis + 1:]))


@_op("GatherElements")
def _gather_el(node, x):
    data, idx = x
    axis = _axis(_attr(node, "axis", 0), data.dim())
    idx = idx.long()
    idx = torch.where(idx < 0, idx + data.shape[axis], idx)
    return torch.gather(data, axis, idx)


@_op("GatherND")
def _gather_nd(node, x):
    data, idx = x
    b = _attr(node, "batch_dims", 0)
    idx = idx.long()
    k = idx.shape[-1]
    if b == 0:
        dims = torch.tensor(data.shape[:k], dtype=torch.int64)
        idx = torch.where(idx < 0, idx + dims, idx)
        flat = idx.reshape(-1, k)
        out = data[tuple(flat[:, i] for i in range(k))]
        return out.reshape(tuple(idx.shape[:-1]) + tuple(data.shape[k:]))
    batch = tuple(data.shape[:b])
    nb = int(np.prod(batch, dtype=np.int64))
    d2 = data.reshape((nb,) + tuple(data.shape[b:]))
    i2 = idx.reshape((nb,) + tuple(idx.shape[b:]))
    outs = []
    for j in range(nb):
        flat = i2[j].reshape(-1, k)
        o = d2[j][tuple(flat[:, i] for i in range(k))]
        outs.append(o.reshape(tuple(i2.shape[1:-1]) + tuple(d2.shape[1 + k:])))
    return torch.stack(outs).reshape(batch + tuple(idx.shape[b:-1]) + tuple(data.shape[b + k:]))


@_op("ScatterND")
def _scatter_nd(node, x):
    data, idx, upd = x
    red = _attr(node, "reduction", "none")
    out = data.clone()
    k = idx.shape[-1]
    flat = idx.long().reshape(-1, k)
    u = upd.reshape((flat.shape[0],) + tuple(data.shape[k:]))
    index = tuple(flat[:, i] for i in range(k))
    if red in ("none", b"none", None):
        out[index] = u
    elif red in ("add", b"add"):
        out.index_put_(index, u, accumulate=True)
    else:
        raise OnnxAmpError(f"node {node.name!r}: ScatterND reduction {red!r} is not supported by the interpreter")
    return out


@_op("Expand")
def _expand(node, x):
    t, shape = x[0], _ints(x[1])
    target = torch.broadcast_shapes(tuple(t.shape), tuple(shape))
    return t.expand(target)


@_op("Tile")
def _tile(node, x):
    return x[0].repeat(*_ints(x[1]))


@_op("ConstantOfShape")
def _cos(node, x):
    v = _attr(node, "value")
    shape = _ints(x[0])
    if v is None:
        return torch.zeros(shape, dtype=torch.float32)
    return torch.full(shape, v.reshape(-1)[0].item(), dtype=v.dtype)


@_op("Range")
def _range(node, x):
    s, l, d = x
    return torch.arange(s.item(), l.item(), d.item(), dtype=s.dtype)


@_op("Cast")
def _cast(node, x):
    return x[0].to(torch_dtype(_attr(node, "to")))


@_op("CastLike")
def _castlike(node, x):
    return x[0].to(x[1].dtype)


@_op("Trilu")
def _trilu(node, x):
    k = int(x[1].item()) if len(x) > 1 and x[1] is not None else 0
    return torch.triu(x[0], k) if _attr(node, "upper", 1) else torch.tril(x[0], k)


@_op("Pad")
def _pad(node, x):
    t = x[0]
    mode = _attr(node, "mode", "constant")
    if isinstance(mode, bytes):
        mode = mode.decode()
    pads = _ints(x[1]) if len(x) > 1 and x[1] is not None else _attr(node, "pads")
    value = x[2].item() if len(x) > 2 and x[2] is not None else _attr(node, "value", 0.0)
    axes = _ints(x[3]) if len(x) > 3 and x[3] is not None else list(range(t.dim()))
    n = len(axes)
    full = [0] * (2 * t.dim())
    for i, a in enumerate(axes):
        a = _axis(a, t.dim())
        full[a], full[t.dim() + a] = pads[i], pads[n + i]
    fp = []
    for a in reversed(range(t.dim())):
        fp += [full[a], full[t.dim() + a]]
    tmode = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}[mode]
    if tmode == "constant":
        return F.pad(t, fp, value=value)
    # torch's non-constant modes pad trailing spatial dims only: trim leading zeros
    while len(fp) >= 2 and fp[-1] == 0 and fp[-2] == 0:
        fp = fp[:-2]
    return F.pad(t, fp, mode=tmode)


@_op("Dropout")
def _dropout(node, x):
    return [x[0], torch.ones_like(x[0], dtype=torch.bool)][: len(node.outputs)] if len(node.outputs) > 1 else x[0]


@_op("Einsum")
def _einsum(node, x):
    eq = _attr(node, "equation")
    return torch.einsum(eq.decode() if isinstance(eq, bytes) else eq, *x)


@_op("NonZero")
def _nonzero(node, x):
    return torch.nonzero(x[0]).t().contiguous()


@_op("OneHot")
def _onehot(node, x):
    idx, depth, values = x
    d = int(depth.item())
    axis = _attr(node, "axis", -1)
    idx = torch.where(idx < 0, idx + d, idx).long()
    oh = F.one_hot(idx, d)
    out = torch.where(oh.bool(), values[1], values[0])
    if axis != -1:
        out = out.movedim(-1, _axis(axis, out.dim()))
    return out


def _qparams(node, x, t):
    scale = x[1].float()
    zp = x[2] if len(x) > 2 and x[2] is not None else None
    axis = _attr(node, "axis", 1)
    if scale.dim() == 1 and scale.numel() > 1:
        shape = [1] * t.dim()
        shape[_axis(axis, t.dim())] = -1
        scale = scale.reshape(shape)
        if zp is not None:
            zp = zp.reshape(shape)
    return scale, zp


@_op("QuantizeLinear")
def _quant(node, x):
    t = x[0].float()
    scale, zp = _qparams(node, x, t)
    out_dt = _attr(node, "output_dtype", 0)
    dt = zp.dtype if zp is not None else (torch_dtype(out_dt) if out_dt else torch.uint8)
    y = t / scale
    if dt in (torch.float8_e4m3fn, torch.float8_e5m2):
        return y.to(dt)  # ORT saturates by default; torch saturates e4m3fn to NaN only beyond range
    info = torch.iinfo(dt)
    zpf = zp.float() if zp is not None else 0.0
    return torch.clamp(torch.round(y) + zpf, info.min, info.max).to(dt)


@_op("DequantizeLinear")
def _dequant(node, x):
    t = x[0]
    scale, zp = _qparams(node, x, t)
    if zp is not None and not t.dtype.is_floating_point:
        return (t.float() - zp.float()) * scale
    return t.float() * scale


# ----------------------------------------------------------------------------- the module

class TorchGraph(torch.nn.Module):
    """Executes an ONNX graph with torch ops (autograd-capable)."""

    def __init__(self, model: ir.Model, hook_ops: Iterable[str] = LAYER_OPS):
        super().__init__()
        graph = model.graph
        self.model_functions = {(f.domain, f.name): f for f in model.functions.values()} if model.functions else {}
        self.input_names = [v.name for v in graph.inputs]
        self.input_types = {v.name: v.dtype for v in graph.inputs}
        self.output_names = [v.name for v in graph.outputs]
        self.hook_ops = frozenset(hook_ops)
        self.consts: dict[str, torch.Tensor] = {}
        init_names = {v.name for v in graph.inputs}
        for name, v in graph.initializers.items():
            if name in init_names:
                continue  # an input with a default: the feed wins, else the initializer
            if v.const_value is not None:
                self.consts[name] = tensor_to_torch(v.const_value)
        for name, v in graph.initializers.items():
            if name in init_names and v.const_value is not None:
                self.consts.setdefault("__default__" + name, tensor_to_torch(v.const_value))
        self.nodes: list[ir.Node] = []
        for node in graph:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                self.consts[node.outputs[0].name] = self._constant_value(node)
                continue
            if node.domain not in ("", "ai.onnx") or node.op_type not in OPS:
                raise OnnxAmpError(
                    f"node {node.name!r}: op {(node.domain + '::') if node.domain else ''}{node.op_type} is not "
                    "supported by the ONNX->torch interpreter (onnx_amp/runtime/torch_graph.py); add it to OPS "
                    "or simplify the model (e.g. onnxscript optimizer) before calibration"
                )
            if any(a.type == ir.AttributeType.GRAPH or a.type == ir.AttributeType.GRAPHS for a in node.attributes.values()):
                raise OnnxAmpError(f"node {node.name!r}: op {node.op_type} with a subgraph is not supported by the interpreter")
            self.nodes.append(node)
        # value -> index of the last node that reads it (graph outputs are kept)
        keep = set(self.output_names)
        self.last_use: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            for v in node.inputs:
                if v is not None:
                    self.last_use[v.name] = i
        self._free_after: list[list[str]] = [[] for _ in self.nodes]
        for name, i in self.last_use.items():
            if name not in keep and name not in self.consts:
                self._free_after[i].append(name)

    @staticmethod
    def _constant_value(node: ir.Node) -> torch.Tensor:
        for key, a in node.attributes.items():
            v = a.value
            if key == "value":
                return tensor_to_torch(v)
            if key == "value_float":
                return torch.tensor(float(v), dtype=torch.float32)
            if key == "value_floats":
                return torch.tensor(list(v), dtype=torch.float32)
            if key == "value_int":
                return torch.tensor(int(v), dtype=torch.int64)
            if key == "value_ints":
                return torch.tensor(list(v), dtype=torch.int64)
        raise OnnxAmpError(f"node {node.name!r}: Constant with attribute {list(node.attributes)} is not supported by the interpreter")

    def layer_nodes(self) -> list[ir.Node]:
        return [n for n in self.nodes if n.op_type in self.hook_ops]

    def _feed(self, name: str, value: Any) -> torch.Tensor:
        t = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))
        dt = self.input_types.get(name)
        if dt is not None and ir.DataType(dt) in _FLOAT_ONNX:
            t = t.float()
        return t

    def forward(
        self,
        feeds: dict[str, Any],
        operand_hook: Callable[[ir.Node, int, torch.Tensor], torch.Tensor] | None = None,
        capture: Iterable[str] | None = None,
        output_hook: Callable[[ir.Node, int, torch.Tensor], torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        env: dict[str, torch.Tensor] = dict(self.consts)
        for name in self.input_names:
            if name in feeds:
                env[name] = self._feed(name, feeds[name])
            elif "__default__" + name in self.consts:
                env[name] = self.consts["__default__" + name]
            else:
                raise OnnxAmpError(f"graph input {name!r} was not fed; feeds have {sorted(feeds)}")
        captured = set(capture or ())
        keep_vals: dict[str, torch.Tensor] = {}
        for i, node in enumerate(self.nodes):
            try:
                args = [None if v is None else env[v.name] for v in node.inputs]
            except KeyError as e:
                raise OnnxAmpError(f"node {node.name!r}: input {e.args[0]!r} is not computed before it (graph not topologically sorted?)") from None
            is_layer = node.op_type in self.hook_ops
            if operand_hook is not None and is_layer:
                args = [a if a is None or not a.is_floating_point() else operand_hook(node, j, a) for j, a in enumerate(args)]
            try:
                out = OPS[node.op_type](node, args)
            except OnnxAmpError:
                raise
            except Exception as e:
                shapes = [None if a is None else tuple(a.shape) for a in args]
                raise OnnxAmpError(
                    f"node {node.name!r} ({node.op_type}) failed in the ONNX->torch interpreter with input shapes {shapes}: "
                    f"{type(e).__name__}: {e}"
                ) from e
            outs = out if isinstance(out, (list, tuple)) else [out]
            for j, (v, t) in enumerate(zip(node.outputs, outs)):
                if v is None or v.name == "":
                    continue
                if output_hook is not None and is_layer and t.is_floating_point():
                    t = output_hook(node, j, t)
                env[v.name] = t
                if v.name in captured:
                    keep_vals[v.name] = t
            for name in self._free_after[i]:
                env.pop(name, None)
        result = {name: env[name] for name in self.output_names}
        result.update(keep_vals)
        return result
