"""Pooling: AveragePool, MaxPool (with indices), LpPool, the global pools, MaxUnpool, MaxRoiPool."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .common import arg, attr, ints, op
from .conv import torch_pad


def _geometry(node, sizes):
    """(kernel, strides, dilations, pads [b.., e..], output sizes) of a pooling node, ONNX rules."""
    k = list(attr(node, "kernel_shape"))
    nd = len(k)
    s = list(attr(node, "strides", [1] * nd))
    d = list(attr(node, "dilations", [1] * nd))
    eff = [(k[i] - 1) * d[i] + 1 for i in range(nd)]
    auto_pad = attr(node, "auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = [math.ceil(sizes[i] / s[i]) for i in range(nd)]
        pads = [0] * (2 * nd)
        for i in range(nd):
            total = max(0, (out[i] - 1) * s[i] + eff[i] - sizes[i])
            lo = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            pads[i], pads[nd + i] = lo, total - lo
        return k, s, d, pads, out
    pads = [0] * (2 * nd) if auto_pad == "VALID" else list(attr(node, "pads", [0] * (2 * nd)))
    ceil = bool(attr(node, "ceil_mode", 0))
    out = []
    for i in range(nd):
        span = sizes[i] + pads[i] + pads[nd + i] - eff[i]
        o = (-(-span // s[i]) if ceil else span // s[i]) + 1
        if ceil and (o - 1) * s[i] >= sizes[i] + pads[i]:  # the last window must start inside
            o -= 1
        out.append(o)
    return k, s, d, pads, out


def _windows(t: torch.Tensor, pads, k, s, d, out, value: float) -> torch.Tensor:
    """[N, C, *out, *k] windows of ``t`` padded with ``value`` (and past the end for ceil_mode)."""
    nd = len(k)
    ends = []
    for i in range(nd):
        need = (out[i] - 1) * s[i] + (k[i] - 1) * d[i] + 1
        ends.append(need - t.shape[2 + i] - pads[i])
    t = F.pad(t, torch_pad(list(pads[:nd]) + ends), value=value)
    for i in range(nd):
        t = t.unfold(2 + i, (k[i] - 1) * d[i] + 1, s[i])[..., :: d[i]]
    return t


def _count(node, sizes, pads, k, s, d, out, include_pad: bool) -> torch.Tensor:
    """Elements each window averages over: real ones, plus explicit pads with count_include_pad."""
    nd = len(k)
    ones = torch.ones([1, 1] + list(sizes))
    if include_pad:
        ones = F.pad(ones, torch_pad(pads), value=1.0)
        pads = [0] * (2 * nd)
    w = _windows(ones, pads, k, s, d, out, 0.0)
    return w.sum(dim=tuple(range(-nd, 0)))


def _native_ok(node, pads, k, d) -> bool:
    nd = len(k)
    return (not attr(node, "ceil_mode", 0) and pads[:nd] == pads[nd:]
            and all(2 * pads[i] <= (k[i] - 1) * d[i] + 1 for i in range(nd)) and nd <= 3)


@op("AveragePool")
def _avgpool(node, x):
    t = x[0]
    sizes = list(t.shape[2:])
    k, s, d, pads, out = _geometry(node, sizes)
    nd = len(k)
    include = bool(attr(node, "count_include_pad", 0))
    if _native_ok(node, pads, k, d) and d == [1] * nd and attr(node, "auto_pad", "NOTSET") in ("NOTSET", "VALID"):
        fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
        return fn(t, k, s, pads[:nd], count_include_pad=include)
    w = _windows(t, pads, k, s, d, out, 0.0)
    total = w.sum(dim=tuple(range(-nd, 0)))
    return total / _count(node, sizes, pads, k, s, d, out, include)


def _max_indices(t, pads, k, s, d, out, storage_order: int) -> torch.Tensor:
    nd = len(k)
    sizes = list(t.shape[2:])
    n, c = t.shape[:2]
    pos = torch.arange(int(np.prod(sizes)), dtype=torch.float64).reshape(sizes)
    if storage_order:  # column-major spatial index
        strides = [int(np.prod(sizes[:i])) for i in range(nd)]
        grids = torch.meshgrid(*[torch.arange(z) for z in sizes], indexing="ij")
        pos = sum(g * st for g, st in zip(grids, strides, strict=False)).double()
    wv = _windows(t.double(), pads, k, s, d, out, -math.inf).reshape(n, c, *out, -1)
    wp = _windows(pos.expand(n, c, *sizes), pads, k, s, d, out, -1.0).reshape(n, c, *out, -1)
    arg_in = torch.argmax(wv, dim=-1, keepdim=True)
    idx = torch.gather(wp, -1, arg_in).squeeze(-1).long()
    base = (torch.arange(n * c) * int(np.prod(sizes))).reshape([n, c] + [1] * nd)
    return idx + base


@op("MaxPool")
def _maxpool(node, x):
    t = x[0]
    sizes = list(t.shape[2:])
    k, s, d, pads, out = _geometry(node, sizes)
    want_idx = len(node.outputs) > 1 and node.outputs[1] is not None and node.outputs[1].name
    if t.dtype in (torch.int8, torch.uint8):
        low = float(torch.iinfo(t.dtype).min)
        y = _maxpool_float(node, t.float(), k, s, d, pads, out, low).to(t.dtype)
    else:
        y = _maxpool_float(node, t, k, s, d, pads, out, -math.inf)
    if want_idx:
        return [y, _max_indices(t, pads, k, s, d, out, attr(node, "storage_order", 0))]
    return y


def _maxpool_float(node, t, k, s, d, pads, out, low):
    nd = len(k)
    if _native_ok(node, pads, k, d) and attr(node, "auto_pad", "NOTSET") in ("NOTSET", "VALID"):
        fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
        return fn(t, k, s, pads[:nd], d)
    w = _windows(t, pads, k, s, d, out, low)
    return w.amax(dim=tuple(range(-nd, 0)))


@op("LpPool")
def _lppool(node, x):
    t = x[0]
    p = attr(node, "p", 2)
    k, s, d, pads, out = _geometry(node, list(t.shape[2:]))
    w = _windows(t.abs() ** p, pads, k, s, d, out, 0.0)
    return w.sum(dim=tuple(range(-len(k), 0))) ** (1.0 / p)


@op("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def _gpool(node, x):
    dims = list(range(2, x[0].dim()))
    if node.op_type == "GlobalAveragePool":
        return x[0].mean(dim=dims, keepdim=True)
    if node.op_type == "GlobalLpPool":
        p = attr(node, "p", 2)
        return (x[0].abs() ** p).sum(dim=dims, keepdim=True) ** (1.0 / p)
    return x[0].amax(dim=dims, keepdim=True)


@op("MaxUnpool")
def _maxunpool(node, x):
    t, idx = x[0], x[1]
    k = attr(node, "kernel_shape")
    nd = len(k)
    s = attr(node, "strides", [1] * nd)
    pads = attr(node, "pads", [0] * (2 * nd))
    shape = list(t.shape[:2]) + [
        (t.shape[2 + i] - 1) * s[i] + k[i] - pads[i] - pads[nd + i] for i in range(nd)]
    flat = torch.zeros(int(np.prod(shape)), dtype=t.dtype)
    y = flat.scatter(0, idx.reshape(-1).long(), t.reshape(-1)).reshape(shape)
    out_shape = ints(arg(x, 2))
    if out_shape is not None:  # indices address the default shape; pad (or crop) at the end
        y = F.pad(y, [p for i in reversed(range(nd)) for p in (0, out_shape[2 + i] - shape[2 + i])])
    return y


@op("MaxRoiPool")
def _max_roi_pool(node, x):
    t, rois = x
    ph, pw = attr(node, "pooled_shape")
    scale = attr(node, "spatial_scale", 1.0)
    outs = []
    for r in rois:
        b = int(r[0])
        x1, y1, x2, y2 = (int(round(float(v) * scale)) for v in r[1:])
        h, w = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)
        cells = []
        for i in range(ph):
            for j in range(pw):
                hs = min(max(y1 + math.floor(i * h / ph), 0), t.shape[2])
                he = min(max(y1 + math.ceil((i + 1) * h / ph), 0), t.shape[2])
                ws = min(max(x1 + math.floor(j * w / pw), 0), t.shape[3])
                we = min(max(x1 + math.ceil((j + 1) * w / pw), 0), t.shape[3])
                patch = t[b, :, hs:he, ws:we]
                cells.append(patch.amax(dim=(1, 2)) if patch.numel() else torch.zeros(t.shape[1]))
        outs.append(torch.stack(cells, dim=1).reshape(t.shape[1], ph, pw))
    return torch.stack(outs)
