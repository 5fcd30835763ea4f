"""Attention-family ops of opsets 23+: Attention, RotaryEmbedding, LinearAttention, CausalConvWithState."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .common import arg, attr, op


def _heads(t: torch.Tensor, n: int) -> torch.Tensor:
    """[B, S, N*D] -> [B, N, S, D]."""
    b, s, hd = t.shape
    return t.reshape(b, s, n, hd // n).transpose(1, 2)


def _window_bias(q_len: int, kv_len: int, offset, causal: bool, left: int, right: int) -> torch.Tensor:
    """Additive 0 / -inf bias [q, kv] (or [B, 1, q, kv] for a per-batch offset)."""
    i = torch.arange(q_len).reshape(-1, 1)
    j = torch.arange(kv_len).reshape(1, -1)
    if isinstance(offset, torch.Tensor):
        i = i + offset.reshape(-1, 1, 1, 1)
    else:
        i = i + offset
    diff = i - j
    allowed = torch.ones_like(diff, dtype=torch.bool)
    if causal:
        allowed &= diff >= 0
    if left >= 0:
        allowed &= diff <= left
    if right >= 0:
        allowed &= -diff <= right
    return torch.where(allowed, 0.0, -math.inf)


def _mask_bias(mask: torch.Tensor | None, kv_len: int) -> torch.Tensor | None:
    if mask is None:
        return None
    pad = kv_len - mask.shape[-1]
    if mask.dtype == torch.bool:
        if pad > 0:
            mask = F.pad(mask, [0, pad], value=False)
        return torch.where(mask, 0.0, -math.inf)
    return F.pad(mask, [0, pad], value=-math.inf) if pad > 0 else mask


def _attention_bias(node, x, q, k, past_len):
    q_len, kv_len, batch = q.shape[2], k.shape[2], q.shape[0]
    nonpad = arg(x, 6)
    causal = bool(attr(node, "is_causal", 0))
    left, right = attr(node, "left_window_size", -1), attr(node, "right_window_size", -1)
    offset = past_len if past_len is not None else (
        nonpad.long().reshape(-1) - q_len if nonpad is not None else 0)
    bias = torch.zeros(q_len, kv_len)
    mask = _mask_bias(arg(x, 3), kv_len)
    if mask is not None:
        bias = bias + mask
    if causal or left >= 0 or right >= 0:
        bias = bias + _window_bias(q_len, kv_len, offset, causal, left, right)
    if nonpad is not None:
        keep = torch.arange(kv_len).reshape(1, -1) < nonpad.long().reshape(-1, 1)
        bias = bias + torch.where(keep, 0.0, -math.inf).reshape(batch, 1, 1, kv_len)
    return bias


@op("Attention")
def _attention(node, x):
    q, k, v = x[0], x[1], x[2]
    past_k, past_v = arg(x, 4), arg(x, 5)
    rank3 = q.dim() == 3
    if rank3:
        q, k, v = _heads(q, attr(node, "q_num_heads")), _heads(k, attr(node, "kv_num_heads")), _heads(
            v, attr(node, "kv_num_heads"))
    scale = attr(node, "scale")
    scale = math.sqrt(scale if scale is not None else 1.0 / math.sqrt(q.shape[3]))
    past_len = past_k.shape[2] if past_k is not None else None
    if past_k is not None:
        k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
    present_k, present_v = k, v
    bias = _attention_bias(node, x, q, k, past_len)
    if q.shape[1] != k.shape[1]:  # grouped-query attention: repeat each kv head
        reps = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(reps, dim=1), v.repeat_interleave(reps, dim=1)
    qk = torch.matmul(q * scale, (k * scale).transpose(-1, -2))
    softcap = attr(node, "softcap", 0.0)
    if softcap and softcap > 0:
        qk = torch.tanh(qk / softcap) * softcap
    with_bias = qk + bias
    dead = torch.isneginf(bias.amax(dim=-1, keepdim=True))  # rows with no key to attend
    probs = torch.softmax(torch.where(dead, torch.zeros_like(with_bias), with_bias), dim=-1)
    probs = torch.where(dead, torch.zeros_like(probs), probs)
    mode = attr(node, "qk_matmul_output_mode", 0)
    qk_out = {2: with_bias, 3: probs}.get(mode, qk)
    y = torch.matmul(probs, v)
    if rank3:
        y = y.transpose(1, 2).reshape(y.shape[0], y.shape[2], -1)
    return [y, present_k, present_v, qk_out][: len(node.outputs)]


@op("RotaryEmbedding")
def _rotary(node, x):
    t, cos, sin, pos = x[0], x[1], x[2], arg(x, 3)
    shape = t.shape
    if t.dim() == 4:
        t = t.transpose(1, 2)  # [B, S, N, D]
    else:
        t = t.reshape(shape[0], shape[1], attr(node, "num_heads"), -1)
    dim = attr(node, "rotary_embedding_dim", 0) or t.shape[-1]
    rot, rest = t[..., :dim], t[..., dim:]
    if pos is not None:
        cos, sin = cos[pos.long()], sin[pos.long()]
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    if attr(node, "interleaved", 0):
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
    else:
        x1, x2 = rot[..., : dim // 2], rot[..., dim // 2:]
    real, imag = cos * x1 - sin * x2, sin * x1 + cos * x2
    if attr(node, "interleaved", 0):
        rot = torch.stack([real, imag], dim=-1).reshape(rot.shape)
    else:
        rot = torch.cat([real, imag], dim=-1)
    out = torch.cat([rot, rest], dim=-1)
    return out.reshape(shape) if len(shape) == 3 else out.transpose(1, 2)


@op("LinearAttention")
def _linear_attention(node, x):
    q, k, v, state, decay, beta = x[0], x[1], x[2], arg(x, 3), arg(x, 4), arg(x, 5)
    hq, hk = attr(node, "q_num_heads"), attr(node, "kv_num_heads")
    rule = attr(node, "update_rule", "gated_delta")
    b, steps, _ = q.shape
    q4, k4, v4 = _heads(q, hq), _heads(k, hk), _heads(v, hk)
    dk, dv = q4.shape[-1], v4.shape[-1]
    if decay is not None:
        decay = (decay.reshape(b, steps, hk, 1).transpose(1, 2) if decay.shape[-1] == hk else _heads(decay, hk))
    if beta is not None:
        beta = beta.reshape(b, steps, beta.shape[-1], 1).transpose(1, 2)
    s = state if state is not None else torch.zeros(b, hk, dk, dv)
    scale = attr(node, "scale", 0.0) or 1.0 / math.sqrt(dk)
    outs = []
    for i in range(steps):
        kt, vt = k4[:, :, i], v4[:, :, i]
        if rule in ("gated", "gated_delta"):
            s = s * torch.exp(decay[:, :, i]).unsqueeze(-1)
        if rule in ("delta", "gated_delta"):
            vt = beta[:, :, i] * (vt - torch.einsum("bhdm,bhd->bhm", s, kt))
        s = s + kt.unsqueeze(-1) * vt.unsqueeze(-2)
        read = s.repeat_interleave(hq // hk, dim=1) if hq != hk else s
        outs.append(scale * torch.einsum("bhd,bhdm->bhm", q4[:, :, i], read))
    y = torch.stack(outs, dim=2) if outs else torch.zeros(b, hq, 0, dv)
    return [y.transpose(1, 2).reshape(b, steps, hq * dv), s][: len(node.outputs)]


@op("CausalConvWithState")
def _causal_conv(node, x):
    t, w, b, past = x[0], x[1], arg(x, 2), arg(x, 3)
    k = w.shape[2]
    if past is None:
        past = torch.zeros(t.shape[0], t.shape[1], k - 1, dtype=t.dtype)
    padded = torch.cat([past, t], dim=2)
    y = F.conv1d(padded, w, b, groups=t.shape[1])
    if attr(node, "activation", "none") in ("silu", "swish"):
        y = y * torch.sigmoid(y)
    return [y, padded[:, :, padded.shape[2] - (k - 1):]][: len(node.outputs)]
