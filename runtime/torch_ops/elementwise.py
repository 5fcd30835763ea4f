"""Element-wise ops: math, comparisons, logic and bit ops, activations."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import DT, OPS, arg, attr, onnx_type, op, opset


def _unary(fn):
    return lambda node, x: fn(x[0])


def _softplus(t):
    return torch.where(t > 20, t, torch.log1p(torch.exp(torch.clamp(t, max=20.0))))


for _name, _fn in {
    "Identity": lambda x: x, "Neg": torch.neg, "Abs": torch.abs, "Exp": torch.exp, "Log": torch.log,
    "Sqrt": torch.sqrt, "Reciprocal": torch.reciprocal, "Erf": torch.erf, "Tanh": torch.tanh,
    "Sigmoid": torch.sigmoid, "Relu": torch.relu, "Sin": torch.sin, "Cos": torch.cos, "Tan": torch.tan,
    "Asin": torch.asin, "Acos": torch.acos, "Atan": torch.atan, "Sinh": torch.sinh, "Cosh": torch.cosh,
    "Asinh": torch.asinh, "Acosh": torch.acosh, "Atanh": torch.atanh, "Floor": torch.floor, "Ceil": torch.ceil,
    "Sign": torch.sign, "Not": torch.logical_not, "IsNaN": torch.isnan, "Round": torch.round,
    "Softsign": F.softsign, "Softplus": _softplus,
    "Mish": lambda t: t * torch.tanh(_softplus(t)),
}.items():
    OPS[_name] = _unary(_fn)


@op("Add")
def _add(node, x):
    return x[0] + x[1]


@op("Sub")
def _sub(node, x):
    return x[0] - x[1]


@op("Mul")
def _mul(node, x):
    return x[0] * x[1]


@op("Div")
def _div(node, x):
    a, b = x
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc").to(a.dtype)
    return a / b


@op("Pow")
def _pow(node, x):
    a, b = x
    if b.is_floating_point() and a.is_floating_point() and b.numel() == 1 and float(b) == 2.0:
        return a * a
    if a.is_floating_point():
        return torch.pow(a, b.to(a.dtype))
    return torch.pow(a.double(), b.double()).to(a.dtype)  # truncated, as numpy's astype


@op("Mod")
def _mod(node, x):
    a, b = x
    if attr(node, "fmod", 0):
        return torch.fmod(a, b)
    return torch.remainder(a, b)


def _cmp(fn):
    return lambda node, x: fn(x[0], x[1])


for _name, _fn in {
    "Equal": torch.eq, "Less": torch.lt, "LessOrEqual": torch.le, "Greater": torch.gt, "GreaterOrEqual": torch.ge,
    "And": torch.logical_and, "Or": torch.logical_or, "Xor": torch.logical_xor,
    "BitwiseAnd": torch.bitwise_and, "BitwiseOr": torch.bitwise_or, "BitwiseXor": torch.bitwise_xor,
}.items():
    OPS[_name] = _cmp(_fn)


@op("BitShift")
def _bitshift(node, x):
    a, b = x
    dt = onnx_type(node.inputs[0], a)
    if attr(node, "direction") == "LEFT":
        out = torch.bitwise_left_shift(a.long(), b.long())
        bits = {DT.UINT8: 8, DT.UINT16: 16, DT.UINT32: 32}.get(dt)
        if bits is not None:
            out = out % (1 << bits)
        return out.to(a.dtype)
    return torch.bitwise_right_shift(a.long(), b.long()).to(a.dtype)


@op("BitwiseNot")
def _bitwise_not(node, x):
    out = torch.bitwise_not(x[0])
    bits = {DT.UINT16: 16, DT.UINT32: 32}.get(onnx_type(node.inputs[0], x[0]))
    return out % (1 << bits) if bits else out


@op("IsInf")
def _isinf(node, x):
    pos, neg = attr(node, "detect_positive", 1), attr(node, "detect_negative", 1)
    t = x[0]
    return (torch.isposinf(t) & bool(pos)) | (torch.isneginf(t) & bool(neg))


@op("Where")
def _where(node, x):
    c, a, b = x
    if a.dtype != b.dtype:
        b = b.to(a.dtype)
    return torch.where(c.bool(), a, b)


@op("Max", "Min", "Sum", "Mean")
def _variadic(node, x):
    ts = [t for t in x if t is not None]
    out = ts[0]
    for t in ts[1:]:
        if node.op_type == "Max":
            out = torch.maximum(out, t)
        elif node.op_type == "Min":
            out = torch.minimum(out, t)
        else:
            out = out + t
    return out / len(ts) if node.op_type == "Mean" else out


@op("Clip")
def _clip(node, x):
    t = x[0]
    if opset(node) < 11:
        lo, hi = attr(node, "min"), attr(node, "max")
    else:
        lo, hi = arg(x, 1), arg(x, 2)
    if lo is None and hi is None:
        return t
    if isinstance(lo, torch.Tensor):
        lo = lo.reshape(()).to(t.dtype)
    if isinstance(hi, torch.Tensor):
        hi = hi.reshape(()).to(t.dtype)
    if lo is not None and hi is not None:  # ONNX: min > max gives max everywhere
        return torch.minimum(torch.clamp(t, min=lo), torch.as_tensor(hi, dtype=t.dtype))
    return torch.clamp(t, min=lo, max=hi)


@op("LeakyRelu")
def _leaky(node, x):
    return F.leaky_relu(x[0], attr(node, "alpha", 0.01))


@op("PRelu")
def _prelu(node, x):
    t, slope = x
    return torch.where(t >= 0, t, t * slope)


@op("Elu")
def _elu(node, x):
    return F.elu(x[0], attr(node, "alpha", 1.0))


@op("Selu")
def _selu(node, x):
    a, g = attr(node, "alpha", 1.67326319217681884765625), attr(node, "gamma", 1.05070102214813232421875)
    t = x[0]
    return g * torch.where(t > 0, t, a * (torch.exp(torch.clamp(t, max=0.0)) - 1))


@op("Celu")
def _celu(node, x):
    return F.celu(x[0], attr(node, "alpha", 1.0))


@op("ThresholdedRelu")
def _trelu(node, x):
    t = x[0]
    return torch.where(t > attr(node, "alpha", 1.0), t, torch.zeros_like(t))


@op("Shrink")
def _shrink(node, x):
    t, lambd, bias = x[0], attr(node, "lambd", 0.5), attr(node, "bias", 0.0)
    out = torch.where(t < -lambd, t + bias, torch.where(t > lambd, t - bias, torch.zeros_like(t)))
    return out.to(t.dtype)


@op("HardSigmoid")
def _hsig(node, x):
    a, b = attr(node, "alpha", 0.2), attr(node, "beta", 0.5)
    return torch.clamp(a * x[0] + b, 0.0, 1.0)


@op("HardSwish")
def _hswish(node, x):
    return x[0] * torch.clamp(x[0] / 6.0 + 0.5, 0.0, 1.0)


@op("Swish")
def _swish(node, x):
    return x[0] * torch.sigmoid(attr(node, "alpha", 1.0) * x[0])


@op("Gelu")
def _gelu(node, x):
    return F.gelu(x[0], approximate=attr(node, "approximate", "none"))


@op("SwiGLU")
def _swiglu(node, x):
    a, b = x
    return a * torch.sigmoid(attr(node, "alpha", 1.0) * a) * b
