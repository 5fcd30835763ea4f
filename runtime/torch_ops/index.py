"""Indexing ops: Gather*, Scatter*, TensorScatter, NonZero, Unique."""

from __future__ import annotations

import numpy as np
import torch

from .common import arg, attr, axis, op, unsupported

_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


def _wrap(idx: torch.Tensor, size: int) -> torch.Tensor:
    idx = idx.long()
    return torch.where(idx < 0, idx + size, idx)


@op("Gather")
def _gather(node, x):
    data, idx = x
    a = axis(attr(node, "axis", 0), data.dim())
    idx = _wrap(idx, data.shape[a])
    out = data.index_select(a, idx.reshape(-1))
    return out.reshape(tuple(data.shape[:a]) + tuple(idx.shape) + tuple(data.shape[a + 1:]))


@op("GatherElements")
def _gather_el(node, x):
    data, idx = x
    a = axis(attr(node, "axis", 0), data.dim())
    return torch.gather(data, a, _wrap(idx, data.shape[a]))


def _linear_index(idx: torch.Tensor, shape) -> torch.Tensor:
    """[..., k] indices into the leading k dims of ``shape`` -> flat indices [...]."""
    k = idx.shape[-1]
    dims = torch.tensor(list(shape[:k]), dtype=torch.int64)
    idx = torch.where(idx < 0, idx + dims, idx.long())
    strides = torch.tensor([int(np.prod(shape[i + 1:k], dtype=np.int64)) for i in range(k)], dtype=torch.int64)
    return (idx * strides).sum(-1)


@op("GatherND")
def _gather_nd(node, x):
    data, idx = x
    b = attr(node, "batch_dims", 0)
    idx = idx.long()
    k = idx.shape[-1]
    batch = tuple(data.shape[:b])
    nb = int(np.prod(batch, dtype=np.int64))
    rest = tuple(data.shape[b + k:])
    d2 = data.reshape((nb, int(np.prod(data.shape[b:b + k], dtype=np.int64))) + rest)
    i2 = _linear_index(idx.reshape((nb, -1, k)), data.shape[b:])  # [nb, n]
    flat_idx = i2.reshape(nb, -1, *([1] * len(rest))).expand((nb, i2.shape[1]) + rest)
    out = torch.gather(d2, 1, flat_idx)
    return out.reshape(batch + tuple(idx.shape[b:-1]) + rest)


@op("ScatterElements", "Scatter")
def _scatter_el(node, x):
    data, idx, upd = x
    a = axis(attr(node, "axis", 0), data.dim())
    idx = _wrap(idx, data.shape[a])
    red = attr(node, "reduction", "none")
    if red == "none":
        return torch.scatter(data, a, idx, upd)
    return torch.scatter_reduce(data, a, idx, upd, reduce=_REDUCE[red], include_self=True)


@op("ScatterND")
def _scatter_nd(node, x):
    data, idx, upd = x
    k = idx.shape[-1]
    rest = tuple(data.shape[k:])
    flat = _linear_index(idx.long().reshape(-1, k), data.shape)
    d2 = data.reshape((-1,) + rest)
    u2 = upd.reshape((flat.shape[0],) + rest)
    red = attr(node, "reduction", "none")
    if red == "none":
        out = d2.index_copy(0, flat, u2)
    elif red in _REDUCE:
        index = flat.reshape((-1,) + (1,) * len(rest)).expand(u2.shape)
        out = torch.scatter_reduce(d2, 0, index, u2, reduce=_REDUCE[red], include_self=True)
    else:
        raise unsupported(node, f"reduction {red!r}")
    return out.reshape(data.shape)


@op("TensorScatter")
def _tensor_scatter(node, x):
    cache, upd = x[0], x[1]
    wi = arg(x, 2)
    a = axis(attr(node, "axis", -2), cache.dim())
    if a == 0:
        raise unsupported(node, "with axis 0 (the batch axis)")
    circular = attr(node, "mode", "linear") == "circular"
    n_max, n = cache.shape[a], upd.shape[a]
    b = cache.shape[0]
    wi = torch.zeros(b, dtype=torch.int64) if wi is None else wi.long().reshape(b)
    pos = wi.unsqueeze(1) + torch.arange(n).unsqueeze(0)  # [B, n]
    if circular:
        pos = pos % n_max
    shape = [b] + [1] * (cache.dim() - 1)
    shape[a] = n
    index = pos.reshape(shape).expand(upd.shape)
    return torch.scatter(cache, a, index, upd)


@op("NonZero")
def _nonzero(node, x):
    t = x[0]
    if t.dim() == 0:
        return torch.zeros((0, 1 if bool(t) else 0), dtype=torch.int64).reshape(0, int(bool(t)))
    return torch.nonzero(t).t().contiguous()


@op("Unique")
def _unique(node, x):
    t = x[0]
    a = attr(node, "axis")
    if a is None:
        t = t.reshape(-1)
        a = 0
    a = axis(a, t.dim())
    y, inv, counts = torch.unique(t.detach(), sorted=True, return_inverse=True, return_counts=True, dim=a)
    n = y.shape[a]
    first = torch.full((n,), t.shape[a], dtype=torch.int64).scatter_reduce(
        0, inv, torch.arange(t.shape[a]), reduce="amin", include_self=True)
    if not attr(node, "sorted", 1):
        order = torch.argsort(first)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(n)
        first, inv, counts = first[order], rank[inv], counts[order]
    y = t.index_select(a, first)  # the values as a gather: differentiable
    return [y, first, inv, counts][: len(node.outputs)]
