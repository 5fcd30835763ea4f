"""Type conversions and quantization: Cast, CastLike, BitCast, Q/DQ and the integer / QLinear ops.

Floats stay float32 carriers (see :mod:`.common`): a cast to a narrower float rounds the value to
that type (round to nearest even, saturating or not as the op says) and gives float32 back, with the
gradient of identity (straight-through), so calibration sees through casts.
"""

from __future__ import annotations

import torch

from .common import (
    DT, FLOAT_TYPES, INT_RANGE, arg, attr, axis, carrier_dtype, onnx_type, op, straight_through, torch_dtype,
    unsupported,
)

# largest finite value; the magnitude where round-to-nearest-even overflows; whether that tie overflows
_F8 = {
    DT.FLOAT8E4M3FN: (448.0, 464.0, False), DT.FLOAT8E4M3FNUZ: (240.0, 248.0, True),
    DT.FLOAT8E5M2: (57344.0, 61440.0, True), DT.FLOAT8E5M2FNUZ: (57344.0, 61440.0, True),
}
_F4_BOUNDS = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
_F4_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
_F4_TIES_UP = torch.tensor([0.75, 1.75, 3.5])  # ties that round to the even neighbour above


def _float4(x: torch.Tensor) -> torch.Tensor:
    a = x.abs()
    idx = torch.bucketize(a, _F4_BOUNDS) + torch.isin(a, _F4_TIES_UP).long()
    out = _F4_VALUES[idx.clamp(max=7)] * torch.sign(x)
    return torch.where(torch.isnan(x), torch.zeros_like(x), out)


def _e8m0(x: torch.Tensor, saturate: bool, mode: str) -> torch.Tensor:
    bits = x.contiguous().view(torch.int32).long() & 0xFFFFFFFF
    e = (bits >> 23) & 0xFF
    special = e == 0xFF
    frac = bits & 0x7FFFFF
    if mode == "nearest":
        g, r, s = (bits & 0x400000) > 0, (bits & 0x200000) > 0, (bits & 0x1FFFFF) > 0
        up = g & (r | s | (e > 0))
    elif mode == "up":
        up = frac > 0
    else:
        up = torch.zeros_like(special)
    if saturate:
        up = up & (e != 0xFE)
    e = torch.clamp(e + up.long(), max=0xFF)
    val = torch.exp2((e - 127).float())
    return torch.where(special | (e == 0xFF), torch.full_like(val, float("nan")), val)


def round_float(x: torch.Tensor, dt: DT, saturate: bool = True, round_mode: str = "up") -> torch.Tensor:
    """``x`` rounded to the float type ``dt``, as float32 (``dt`` float32 or double: unchanged)."""
    x = x.float()
    if dt in (DT.FLOAT, DT.DOUBLE):
        return x
    if dt in (DT.FLOAT16, DT.BFLOAT16):
        return x.to(torch_dtype(dt)).float()
    with torch.no_grad():
        if dt in _F8:
            top, overflow, tie_overflows = _F8[dt]
            y = x.clamp(-top, top).to(torch_dtype(dt)).float()
            if not saturate:
                big = x.abs() >= overflow if tie_overflows else x.abs() > overflow
                y = torch.where(big, torch.sign(x) * float("inf") if dt == DT.FLOAT8E5M2 else
                                torch.full_like(x, float("nan")), y)
            elif dt in (DT.FLOAT8E4M3FNUZ, DT.FLOAT8E5M2FNUZ):
                y = torch.where(torch.isnan(x), x, y)
        elif dt == DT.FLOAT4E2M1:
            y = _float4(x)
        elif dt == DT.FLOAT8E8M0:
            y = _e8m0(x, saturate, round_mode)
        else:
            raise ValueError(dt)
    return straight_through(x, y)


def cast_int(x: torch.Tensor, dt: DT) -> torch.Tensor:
    """``x`` cast to the integer (or bool) type ``dt``, in its carrier dtype."""
    if dt == DT.BOOL:
        return x != 0
    carrier = carrier_dtype(dt)
    lo, hi = INT_RANGE[dt]
    if x.is_floating_point():
        x = torch.trunc(x.detach().double())
        if dt in (DT.INT4, DT.UINT4, DT.INT2, DT.UINT2):  # out of range: 0 (undefined in ONNX; as ml_dtypes)
            x = torch.where((x < lo) | (x > hi) | torch.isnan(x), torch.zeros_like(x), x)
        x = torch.nan_to_num(x, nan=0.0).clamp(-2.0**63, 2.0**63 - 1024).long()
    x = x.long() if x.dtype == torch.bool else x
    if dt in (DT.INT64, DT.UINT64):
        return x.to(torch.int64)
    span = hi - lo + 1
    if x.dtype != torch.int64:
        x = x.long()
    return ((x - lo) % span + lo).to(carrier)  # two's complement wrap-around


def cast_to(x: torch.Tensor, dt: DT, saturate: bool = True, round_mode: str = "up") -> torch.Tensor:
    if dt in FLOAT_TYPES:
        return round_float(x if x.is_floating_point() else x.double().float(), dt, saturate, round_mode)
    return cast_int(x, dt)


def _cast_attrs(node):
    return bool(attr(node, "saturate", 1)), attr(node, "round_mode", "up")


@op("Cast")
def _cast(node, x):
    to = DT(attr(node, "to"))
    if to == DT.STRING or onnx_type(node.inputs[0], x[0]) == DT.STRING:
        raise unsupported(node, "to or from string")
    carrier_dtype(to)  # unsupported types raise here
    return cast_to(x[0], to, *_cast_attrs(node))


@op("CastLike")
def _castlike(node, x):
    to = onnx_type(node.inputs[1], x[1])
    if to == DT.STRING:
        raise unsupported(node, "to or from string")
    return cast_to(x[0], to, *_cast_attrs(node))


_BITS = {DT.FLOAT: torch.float32, DT.DOUBLE: torch.float64, DT.FLOAT16: torch.float16, DT.BFLOAT16: torch.bfloat16,
         DT.INT64: torch.int64, DT.INT32: torch.int32, DT.INT16: torch.int16, DT.INT8: torch.int8,
         DT.UINT8: torch.uint8, DT.UINT16: torch.int16, DT.UINT32: torch.int32, DT.UINT64: torch.int64,
         DT.BOOL: torch.bool, DT.FLOAT8E4M3FN: torch.float8_e4m3fn, DT.FLOAT8E5M2: torch.float8_e5m2,
         DT.FLOAT8E4M3FNUZ: torch.float8_e4m3fnuz, DT.FLOAT8E5M2FNUZ: torch.float8_e5m2fnuz}


@op("BitCast")
def _bitcast(node, x):
    src, to = onnx_type(node.inputs[0], x[0]), DT(attr(node, "to"))
    if src not in _BITS or to not in _BITS or _BITS[src].itemsize != _BITS[to].itemsize:
        raise unsupported(node, f"from {src.name} to {DT(to).name}")
    t = x[0]
    if src in (DT.UINT16, DT.UINT32):  # int64 carrier: wrap into the signed type of that width
        t = cast_int(t, {DT.UINT16: DT.INT16, DT.UINT32: DT.INT32}[src])
    y = t.to(_BITS[src]).view(_BITS[to])
    if to in FLOAT_TYPES:
        return y.float()
    if to in (DT.UINT16, DT.UINT32):
        return y.long() % (2 ** (8 * _BITS[to].itemsize))
    return y.to(carrier_dtype(to))


# ----------------------------------------------------------------------------- Q / DQ

def _qshape(node, p: torch.Tensor, shape, ax: int, block: int) -> torch.Tensor:
    """A scale / zero point broadcast against the tensor (per tensor, per axis or blocked)."""
    rank = len(shape)
    if p.dim() == 0 or p.numel() == 1 and block == 0:
        return p.reshape(())
    ax = axis(ax, rank)
    if block > 0:
        if p.dim() != rank:
            raise unsupported(node, "blocked quantization with a scale of another rank")
        return p.repeat_interleave(block, dim=ax).narrow(ax, 0, shape[ax])
    view = [1] * rank
    view[ax] = -1
    return p.reshape(view)


def _qtype(node, zp_index: int, x) -> DT:
    zp = arg(x, zp_index)
    if zp is not None:
        return onnx_type(node.inputs[zp_index], zp)
    out = attr(node, "output_dtype", 0)
    return DT(out) if out else DT.UINT8


@op("QuantizeLinear")
def _quant(node, x):
    t = x[0].float()
    ax, block = attr(node, "axis", 1), attr(node, "block_size", 0)
    scale = _qshape(node, x[1].float(), t.shape, ax, block)
    dt = _qtype(node, 2, x)
    y = t / scale
    zp = arg(x, 2)
    if dt in FLOAT_TYPES:
        if zp is not None and dt == DT.FLOAT4E2M1:
            y = y + _qshape(node, zp.float(), t.shape, ax, block)
        return round_float(y, dt, bool(attr(node, "saturate", 1))).detach()
    if dt not in INT_RANGE or dt in (DT.UINT64, DT.INT64, DT.UINT32, DT.INT32, DT.BOOL):
        raise unsupported(node, f"to {dt.name}")
    y = torch.round(y.detach())
    if zp is not None:
        y = y + _qshape(node, zp.float(), t.shape, ax, block)
    lo, hi = INT_RANGE[dt]
    return y.clamp(lo, hi).to(carrier_dtype(dt))


@op("DequantizeLinear")
def _dequant(node, x):
    t = x[0]
    ax, block = attr(node, "axis", 1), attr(node, "block_size", 0)
    scale = _qshape(node, x[1].float(), t.shape, ax, block)
    zp = arg(x, 2)
    v = t.float()
    if zp is not None and onnx_type(node.inputs[0], t) not in FLOAT_TYPES:
        v = v - _qshape(node, zp.float(), t.shape, ax, block)
    out_dt = attr(node, "output_dtype", 0)
    out_dt = DT(out_dt) if out_dt else onnx_type(node.inputs[1], x[1])
    return round_float(v * scale, out_dt)


@op("DynamicQuantizeLinear")
def _dyn_quant(node, x):
    t = x[0].float()
    lo, hi = torch.clamp(t.min(), max=0.0), torch.clamp(t.max(), min=0.0)
    scale = (hi - lo) / 255.0  # differentiable in the input's extremes
    safe = torch.where(scale == 0, torch.ones_like(scale), scale).detach()
    zp = torch.round(torch.clamp(-lo.detach() / safe, 0, 255))
    y = torch.clamp(torch.round(t.detach() / safe) + zp, 0, 255)
    return [y.to(torch.uint8), scale, zp.to(torch.uint8)]


def _minus_zp(v: torch.Tensor, zp: torch.Tensor | None, row_axis: int | None = None) -> torch.Tensor:
    v = v.double()
    if zp is None:
        return v
    zp = zp.double()
    if zp.dim() == 1 and zp.numel() > 1 and row_axis is not None:
        shape = [1] * v.dim()
        shape[row_axis] = -1
        zp = zp.reshape(shape)
    return v - zp


@op("MatMulInteger")
def _matmul_int(node, x):
    a = _minus_zp(x[0], arg(x, 2), row_axis=x[0].dim() - 2)
    b = _minus_zp(x[1], arg(x, 3), row_axis=x[1].dim() - 1)
    return torch.matmul(a, b).round().to(torch.int32)


@op("ConvInteger")
def _conv_int(node, x):
    from .conv import conv_nd

    a = _minus_zp(x[0], arg(x, 2))
    w = _minus_zp(x[1], arg(x, 3), row_axis=0)
    return conv_nd(node, a, w, None).round().to(torch.int32)


def _requant(node, y: torch.Tensor, zp: torch.Tensor | None, zp_index: int, like: torch.Tensor) -> torch.Tensor:
    dt = onnx_type(node.inputs[zp_index], zp) if zp is not None else onnx_type(node.inputs[0], like)
    if zp is not None:
        y = y + zp.double()
    lo, hi = INT_RANGE[dt]
    return torch.round(y).clamp(lo, hi).to(carrier_dtype(dt))


@op("QLinearMatMul")
def _qlinear_matmul(node, x):
    a = x[0].long() - (x[2].long() if x[2] is not None else 0)
    b = x[3].long() - (x[5].long() if x[5] is not None else 0)
    c = torch.matmul(a.double(), b.double())
    return _requant(node, c * (x[1].double() * x[4].double() / x[6].double()), arg(x, 7), 7, x[0])


@op("QLinearConv")
def _qlinear_conv(node, x):
    from .conv import conv_nd

    a = _minus_zp(x[0], x[2])
    w = _minus_zp(x[3], x[5], row_axis=0)
    b = x[8].double() if len(x) > 8 and x[8] is not None else None
    c = conv_nd(node, a, w, b)
    ws = x[4].double()
    if ws.numel() > 1:
        ws = ws.reshape([1, -1] + [1] * (c.dim() - 2))
    return _requant(node, c * (x[1].double() * ws / x[6].double()), arg(x, 7), 7, x[0])

