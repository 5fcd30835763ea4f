"""Recurrent layers: LSTM, GRU, RNN (all directions, layouts, activations, clip, peepholes,
sequence_lens), unrolled step by step in torch so gradients flow through time."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import arg, attr, op, unsupported

_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_DEFAULT_ACTS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
_NEEDS = {"Affine": 2, "LeakyRelu": 1, "ThresholdedRelu": 1, "ScaledTanh": 2, "HardSigmoid": 2, "Elu": 1}
_DEFAULT_AB = {"LeakyRelu": (0.01,), "ThresholdedRelu": (1.0,), "HardSigmoid": (0.2, 0.5), "Elu": (1.0,),
               "Affine": (1.0, 0.0), "ScaledTanh": (1.0, 1.0)}


def _activation(node, name: str, ab: tuple):
    name = {n.lower(): n for n in list(_NEEDS) + ["Relu", "Tanh", "Sigmoid", "Softsign", "Softplus"]}.get(
        name.lower(), name)
    a, b = (list(ab) + [None, None])[:2]
    table = {
        "Relu": torch.relu, "Tanh": torch.tanh, "Sigmoid": torch.sigmoid, "Softsign": F.softsign,
        "Softplus": F.softplus, "Affine": lambda t: a * t + b, "LeakyRelu": lambda t: F.leaky_relu(t, a),
        "ThresholdedRelu": lambda t: torch.where(t > a, t, torch.zeros_like(t)),
        "ScaledTanh": lambda t: a * torch.tanh(b * t), "HardSigmoid": lambda t: torch.clamp(a * t + b, 0, 1),
        "Elu": lambda t: F.elu(t, a),
    }
    if name not in table:
        raise unsupported(node, f"activation {name!r}")
    return table[name]


def _activations(node, n_dirs: int) -> list[list]:
    names = attr(node, "activations") or _DEFAULT_ACTS[node.op_type] * n_dirs
    alphas = list(attr(node, "activation_alpha", []) or [])
    betas = list(attr(node, "activation_beta", []) or [])
    fns = []
    for name in names:
        canon = next((k for k in _NEEDS if k.lower() == name.lower()), name)
        need = _NEEDS.get(canon, 0)
        ab = list(_DEFAULT_AB.get(canon, ()))
        if need >= 1 and alphas:
            ab[0] = alphas.pop(0)
        if need >= 2 and betas:
            ab[1] = betas.pop(0)
        fns.append(_activation(node, name, tuple(ab)))
    per = len(_DEFAULT_ACTS[node.op_type])
    return [fns[d * per:(d + 1) * per] for d in range(n_dirs)]


def _reverse_within(x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """x [T, B, ...] with each batch column reversed within its length (the rest kept)."""
    t = torch.arange(x.shape[0]).unsqueeze(1)
    idx = torch.where(t < lens.unsqueeze(0), lens.unsqueeze(0) - 1 - t, t)  # [T, B]
    idx = idx.reshape(idx.shape + (1,) * (x.dim() - 2)).expand(x.shape)
    return torch.gather(x, 0, idx)


def _cell(kind, node, acts, gates, h, c, p, r, rb):
    """One step: ``gates`` = x_t W^T + Wb (all gates); returns (h, c)."""
    clip = attr(node, "clip")
    cl = (lambda t: torch.clamp(t, -clip, clip)) if clip is not None else (lambda t: t)
    hs = h.shape[-1]
    if kind == "RNN":
        return acts[0](cl(gates + h @ r.t() + rb)), None
    if kind == "GRU":
        rz = gates[:, :2 * hs] + h @ r[:2 * hs].t() + rb[:2 * hs]
        z, rr = acts[0](cl(rz[:, :hs])), acts[0](cl(rz[:, hs:]))
        if attr(node, "linear_before_reset", 0):
            hh = acts[1](cl(gates[:, 2 * hs:] + rr * (h @ r[2 * hs:].t() + rb[2 * hs:])))
        else:
            hh = acts[1](cl(gates[:, 2 * hs:] + (rr * h) @ r[2 * hs:].t() + rb[2 * hs:]))
        return (1 - z) * hh + z * h, None
    g = gates + h @ r.t() + rb
    gi, go, gf, gc = g[:, :hs], g[:, hs:2 * hs], g[:, 2 * hs:3 * hs], g[:, 3 * hs:]
    i = acts[0](cl(gi + p[0] * c))
    f = 1 - i if attr(node, "input_forget", 0) else acts[0](cl(gf + p[2] * c))
    c_new = f * c + i * acts[1](cl(gc))
    o = acts[0](cl(go + p[1] * c_new))
    return o * acts[2](c_new), c_new


def _direction(kind, node, acts, x, w, r, b, h, c, p, lens, reverse):
    steps, batch = x.shape[:2]
    hs = r.shape[-1]
    g = _GATES[kind]
    wb, rb = (b[:g * hs], b[g * hs:]) if b is not None else (0.0, torch.zeros(g * hs))
    if reverse:
        x = _reverse_within(x, lens)
    xw = x @ w.t() + wb  # [T, B, G*H]
    ys = []
    for t in range(steps):
        h_new, c_new = _cell(kind, node, acts, xw[t], h, c, p, r, rb)
        live = (t < lens).unsqueeze(1)
        h = torch.where(live, h_new, h)
        if c_new is not None:
            c = torch.where(live, c_new, c)
        ys.append(torch.where(live, h_new, torch.zeros_like(h_new)))
    y = torch.stack(ys) if ys else torch.zeros(0, batch, hs)
    if reverse:
        y = _reverse_within(y, lens)
    return y, h, c


@op("LSTM", "GRU", "RNN")
def _recurrent(node, x):
    kind = node.op_type
    xs, w, r = x[0], x[1], x[2]
    b, lens, h0 = arg(x, 3), arg(x, 4), arg(x, 5)
    c0, p = (arg(x, 6), arg(x, 7)) if kind == "LSTM" else (None, None)
    layout = attr(node, "layout", 0)
    if layout:
        xs = xs.transpose(0, 1)
        h0 = h0.transpose(0, 1) if h0 is not None else None
        c0 = c0.transpose(0, 1) if c0 is not None else None
    direction = attr(node, "direction", "forward")
    dirs = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[direction]
    steps, batch = xs.shape[:2]
    hs = r.shape[-1]
    lens = lens.long() if lens is not None else torch.full((batch,), steps, dtype=torch.long)
    acts = _activations(node, len(dirs))
    ys, hs_, cs = [], [], []
    for d, rev in enumerate(dirs):
        h = h0[d] if h0 is not None else torch.zeros(batch, hs)
        c = c0[d] if c0 is not None else torch.zeros(batch, hs)
        pd = p[d].reshape(3, hs) if p is not None else torch.zeros(3, hs)
        y, h, c = _direction(kind, node, acts[d], xs, w[d], r[d], b[d] if b is not None else None,
                             h, c, pd, lens, rev)
        ys.append(y)
        hs_.append(h)
        cs.append(c)
    y = torch.stack(ys, dim=1)  # [T, D, B, H]
    yh, yc = torch.stack(hs_), torch.stack(cs)
    if layout:
        y, yh, yc = y.permute(2, 0, 1, 3), yh.transpose(0, 1), yc.transpose(0, 1)
    return [y, yh, yc][: len(node.outputs)]
