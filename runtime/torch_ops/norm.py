"""Normalizations: Batch-, Layer-, RMS-, Instance-, Group-, Lp-, MeanVariance-Normalization, LRN."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import arg, attr, axis, op, opset


def _n_outputs(node) -> int:
    n = len(node.outputs)
    while n > 1 and (node.outputs[n - 1] is None or not node.outputs[n - 1].name):
        n -= 1
    return n


@op("BatchNormalization")
def _bn(node, x):
    t, scale, bias, mean, var = x[:5]
    eps = attr(node, "epsilon", 1e-5)
    shape = [1, -1] + [1] * (t.dim() - 2)
    n_out = _n_outputs(node)
    training = attr(node, "training_mode", 0) if opset(node) >= 14 else int(n_out > 1)
    if not training:
        inv = torch.rsqrt(var + eps) * scale
        return t * inv.reshape(shape) + (bias - mean * inv).reshape(shape)
    dims = [0] + list(range(2, t.dim()))
    bm = t.mean(dim=dims)
    bv = ((t - bm.reshape(shape)) ** 2).mean(dim=dims)
    y = (t - bm.reshape(shape)) * torch.rsqrt(bv + eps).reshape(shape) * scale.reshape(shape) + bias.reshape(shape)
    mom = attr(node, "momentum", 0.9)
    run_mean, run_var = mean * mom + bm * (1 - mom), var * mom + bv * (1 - mom)
    outs = [y, run_mean, run_var] if opset(node) >= 14 else [y, run_mean, run_var, bm, bv]
    return outs[:n_out]


def _stash(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.is_floating_point() else t


@op("LayerNormalization")
def _ln(node, x):
    t, scale, bias = x[0], x[1], arg(x, 2)
    a = axis(attr(node, "axis", -1), t.dim())
    eps = attr(node, "epsilon", 1e-5)
    dims = list(range(a, t.dim()))
    n_out = _n_outputs(node)
    norm_shape = tuple(t.shape[a:])
    if n_out == 1 and t.dtype == torch.float32 and tuple(scale.shape) == norm_shape and (
            bias is None or tuple(bias.shape) == norm_shape):
        return F.layer_norm(t, norm_shape, scale, bias, eps)
    mean = t.mean(dim=dims, keepdim=True)
    var = ((t - mean) ** 2).mean(dim=dims, keepdim=True)
    inv = torch.rsqrt(var + eps)
    out = (t - mean) * inv * scale
    if bias is not None:
        out = out + bias
    return [out, mean, inv][:n_out] if n_out > 1 else out


@op("RMSNormalization")
def _rms(node, x):
    t, scale = x[0], x[1]
    a = axis(attr(node, "axis", -1), t.dim())
    eps = attr(node, "epsilon", 1e-5)
    dims = list(range(a, t.dim()))
    return t * torch.rsqrt((t * t).mean(dim=dims, keepdim=True) + eps) * scale


@op("InstanceNormalization")
def _instance_norm(node, x):
    t, scale, bias = x
    dims = list(range(2, t.dim()))
    mean = t.mean(dim=dims, keepdim=True)
    var = ((t - mean) ** 2).mean(dim=dims, keepdim=True)
    shape = [1, -1] + [1] * (t.dim() - 2)
    return (t - mean) * torch.rsqrt(var + attr(node, "epsilon", 1e-5)) * scale.reshape(shape) + bias.reshape(shape)


@op("GroupNormalization")
def _group_norm(node, x):
    t, scale, bias = x
    g = attr(node, "num_groups")
    n, c = t.shape[:2]
    tg = t.reshape(n, g, -1)
    mean = tg.mean(dim=2, keepdim=True)
    var = ((tg - mean) ** 2).mean(dim=2, keepdim=True)
    y = ((tg - mean) * torch.rsqrt(var + attr(node, "epsilon", 1e-5))).reshape(t.shape)
    shape = [1, -1] + [1] * (t.dim() - 2)
    if opset(node) < 21:  # scale and bias per group
        scale, bias = scale.repeat_interleave(c // g), bias.repeat_interleave(c // g)
    return y * scale.reshape(shape) + bias.reshape(shape)


@op("LpNormalization")
def _lp_norm(node, x):
    t = x[0]
    a, p = attr(node, "axis", -1), attr(node, "p", 2)
    norm = (t.abs() ** p).sum(dim=a, keepdim=True) ** (1.0 / p)
    return torch.where(norm == 0, torch.zeros_like(t), t / torch.where(norm == 0, torch.ones_like(norm), norm))


@op("MeanVarianceNormalization")
def _mvn(node, x):
    t = x[0]
    dims = [axis(a, t.dim()) for a in attr(node, "axes", [0, 2, 3])]
    mean = t.mean(dim=dims, keepdim=True)
    var = (t * t).mean(dim=dims, keepdim=True) - mean * mean
    return (t - mean) / (torch.sqrt(var) + 1e-9)


@op("LRN")
def _lrn(node, x):
    t = x[0]
    size = attr(node, "size")
    alpha, beta, bias = attr(node, "alpha", 1e-4), attr(node, "beta", 0.75), attr(node, "bias", 1.0)
    sq = (t * t).unsqueeze(1)  # [N, 1, C, ...]
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    pads = [0, 0] * (t.dim() - 2) + [lo, hi]
    summed = F.pad(sq, pads).unfold(2, size, 1).sum(-1).squeeze(1)
    return t / (bias + alpha / size * summed) ** beta
