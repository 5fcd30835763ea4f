"""Shape and layout ops: Shape, Reshape, Transpose, Concat, Split, Slice, Pad, DepthToSpace, ..."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .common import arg, attr, axis, carrier_dtype, ints, op, unsupported


@op("Shape")
def _shape(node, x):
    s = list(x[0].shape)
    start, end = attr(node, "start", 0), attr(node, "end", None)
    return torch.tensor(s[start:end], dtype=torch.int64)


@op("Size")
def _size(node, x):
    return torch.tensor(x[0].numel(), dtype=torch.int64)


@op("Reshape")
def _reshape(node, x):
    t, shape = x[0], ints(x[1]) if len(x) > 1 else attr(node, "shape")
    if not attr(node, "allowzero", 0):
        shape = [t.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return t.reshape(shape)


@op("Flatten")
def _flatten(node, x):
    t = x[0]
    a = axis(attr(node, "axis", 1), t.dim())
    lead = int(np.prod(t.shape[:a], dtype=np.int64)) if a > 0 else 1
    return t.reshape(lead, int(np.prod(t.shape[a:], dtype=np.int64)))


@op("Transpose")
def _transpose(node, x):
    perm = attr(node, "perm")
    if perm is None:
        perm = list(reversed(range(x[0].dim())))
    return x[0].permute(perm)


@op("Unsqueeze")
def _unsqueeze(node, x):
    axes = attr(node, "axes")
    if axes is None:
        axes = ints(x[1])
    t = x[0]
    rank = t.dim() + len(axes)
    for a in sorted(axis(a, rank) for a in axes):
        t = t.unsqueeze(a)
    return t


@op("Squeeze")
def _squeeze(node, x):
    axes = attr(node, "axes")
    if axes is None and arg(x, 1) is not None:
        axes = ints(x[1])
    t = x[0]
    if axes is None:
        return t.reshape([d for d in t.shape if d != 1])
    for a in sorted((axis(a, t.dim()) for a in axes), reverse=True):
        t = t.squeeze(a)
    return t


@op("Concat")
def _concat(node, x):
    ts = [t for t in x if t is not None]
    dt = ts[0].dtype
    a = axis(attr(node, "axis"), ts[0].dim())
    return torch.cat([t.to(dt) for t in ts], dim=a)


@op("Split")
def _split(node, x):
    t = x[0]
    a = axis(attr(node, "axis", 0), t.dim())
    split = attr(node, "split")
    if split is None and arg(x, 1) is not None:
        split = ints(x[1])
    n = len(node.outputs)
    if split is None:
        size = t.shape[a]
        chunk = -(-size // n)
        split = [max(0, min(chunk, size - i * chunk)) for i in range(n)]
    return list(torch.split(t, split, dim=a))


def _slice_axis(t: torch.Tensor, a: int, s: int, e: int, st: int) -> torch.Tensor:
    d = t.shape[a]
    if st == 0:
        raise ValueError("Slice step 0")
    s = s + d if s < 0 else s
    e = e + d if e < 0 else e
    if st > 0:
        s, e = min(max(s, 0), d), min(max(e, 0), d)
        if st == 1:
            return t.narrow(a, s, max(e - s, 0))
        return t.index_select(a, torch.arange(s, e, st, dtype=torch.int64))
    s, e = min(max(s, -1), d - 1), min(max(e, -1), d - 1)
    return t.index_select(a, torch.arange(s, e, st, dtype=torch.int64))


@op("Slice")
def _slice(node, x):
    t = x[0]
    if len(x) > 1:
        starts, ends = ints(x[1]), ints(x[2])
        axes = ints(x[3]) if arg(x, 3) is not None else list(range(len(starts)))
        steps = ints(x[4]) if arg(x, 4) is not None else [1] * len(starts)
    else:
        starts, ends = attr(node, "starts"), attr(node, "ends")
        axes = attr(node, "axes", list(range(len(starts))))
        steps = [1] * len(starts)
    for s, e, a, st in zip(starts, ends, axes, steps, strict=False):
        t = _slice_axis(t, axis(a, t.dim()), s, e, st)
    return t


@op("Expand")
def _expand(node, x):
    t, shape = x[0], ints(x[1])
    target = torch.broadcast_shapes(tuple(t.shape), tuple(shape))
    return t.expand(target)


@op("Tile")
def _tile(node, x):
    return x[0].repeat(*ints(x[1]))


@op("ConstantOfShape")
def _const_of_shape(node, x):
    v = attr(node, "value")
    shape = ints(x[0])
    if v is None:
        return torch.zeros(shape, dtype=torch.float32)
    return torch.full(shape, v.reshape(-1)[0].item(), dtype=v.dtype)


@op("Range")
def _range(node, x):
    s, lim, d = (t.reshape(()) for t in x)
    if s.is_floating_point() or lim.is_floating_point() or d.is_floating_point():
        n = max(math.ceil((float(lim) - float(s)) / float(d)), 0)
        return s + torch.arange(n, dtype=torch.float32) * d
    n = max(-(-(int(lim) - int(s)) // int(d)), 0)
    return (int(s) + torch.arange(n, dtype=torch.int64) * int(d)).to(s.dtype)


@op("EyeLike")
def _eyelike(node, x):
    t = x[0]
    dt = attr(node, "dtype")
    dtype = carrier_dtype(dt) if dt is not None else t.dtype
    rows, cols = t.shape[0], t.shape[1] if t.dim() > 1 else t.shape[0]
    k = attr(node, "k", 0)
    out = torch.zeros(rows, cols, dtype=torch.float32)
    idx = torch.arange(max(0, -k), min(rows, cols - k))
    out[idx, idx + k] = 1.0
    return out.to(dtype)


@op("Trilu")
def _trilu(node, x):
    k = int(x[1].item()) if arg(x, 1) is not None else 0
    return torch.triu(x[0], k) if attr(node, "upper", 1) else torch.tril(x[0], k)


def _pad_index(d: int, lo: int, hi: int, mode: str) -> torch.Tensor:
    i = torch.arange(-lo, d + hi)
    if mode == "edge":
        return i.clamp(0, d - 1)
    if mode == "wrap":
        return i % d
    if d == 1:
        return torch.zeros_like(i)
    j = i % (2 * d - 2)
    return torch.where(j < d, j, 2 * d - 2 - j)


@op("Pad")
def _pad(node, x):
    t = x[0]
    mode = attr(node, "mode", "constant")
    pads = ints(x[1]) if arg(x, 1) is not None else attr(node, "pads", attr(node, "paddings"))
    value = x[2].reshape(-1)[0].item() if arg(x, 2) is not None and x[2].numel() else attr(node, "value", 0.0)
    axes = [axis(a, t.dim()) for a in ints(x[3])] if arg(x, 3) is not None else list(range(t.dim()))
    n = len(axes)
    if mode == "constant":
        full = [0] * (2 * t.dim())
        for i, a in enumerate(axes):
            full[a], full[t.dim() + a] = pads[i], pads[n + i]
        fp = []
        for a in reversed(range(t.dim())):
            fp += [full[a], full[t.dim() + a]]
        return F.pad(t, fp, value=value)
    if mode not in ("edge", "wrap", "reflect"):
        raise unsupported(node, f"mode {mode!r}")
    for i, a in enumerate(axes):
        lo, hi = pads[i], pads[n + i]
        if lo or hi:
            t = t.index_select(a, _pad_index(t.shape[a], lo, hi, mode))
    return t


@op("CenterCropPad")
def _center_crop_pad(node, x):
    t, shape = x[0], ints(x[1])
    axes = [axis(a, t.dim()) for a in attr(node, "axes", list(range(t.dim())))]
    for a, target in zip(axes, shape, strict=False):
        d = t.shape[a]
        if target < d:
            t = t.narrow(a, (d - target) // 2, target)
        elif target > d:
            lo = (target - d) // 2
            fp = [0, 0] * (t.dim() - 1 - a) + [lo, target - d - lo]
            t = F.pad(t, fp)
    return t


@op("DepthToSpace")
def _depth_to_space(node, x):
    t, b = x[0], attr(node, "blocksize")
    n, c, h, w = t.shape
    if attr(node, "mode", "DCR") == "DCR":
        y = t.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = t.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (b * b), h * b, w * b)


@op("SpaceToDepth")
def _space_to_depth(node, x):
    t, b = x[0], attr(node, "blocksize")
    n, c, h, w = t.shape
    perm = (0, 1, 3, 5, 2, 4) if attr(node, "mode", "DCR") == "CRD" else (0, 3, 5, 1, 2, 4)
    y = t.reshape(n, c, h // b, b, w // b, b).permute(*perm)
    return y.reshape(n, c * b * b, h // b, w // b)


@op("Compress")
def _compress(node, x):
    t, cond = x[0], x[1].bool().reshape(-1)
    a = attr(node, "axis")
    if a is None:
        t, a = t.reshape(-1), 0
    a = axis(a, t.dim())
    idx = torch.nonzero(cond[: t.shape[a]]).reshape(-1)
    return t.index_select(a, idx)


@op("ReverseSequence")
def _reverse_sequence(node, x):
    t, lens = x[0], x[1].long()
    b_ax, t_ax = attr(node, "batch_axis", 1), attr(node, "time_axis", 0)
    steps = torch.arange(t.shape[t_ax]).unsqueeze(1)  # [T, 1]
    idx = torch.where(steps < lens.unsqueeze(0), lens.unsqueeze(0) - 1 - steps, steps)  # [T, B]
    if b_ax < t_ax:
        idx = idx.t()
    shape = [1] * t.dim()
    shape[t_ax], shape[b_ax] = t.shape[t_ax], t.shape[b_ax]
    return torch.gather(t, t_ax, idx.reshape(shape).expand(t.shape))


@op("OneHot")
def _onehot(node, x):
    idx, depth, values = x
    d = int(depth.reshape(-1)[0].item())
    idx = idx.long() if not idx.is_floating_point() else idx.trunc().long()
    idx = torch.where(idx < 0, idx + d, idx)
    mask = idx.unsqueeze(-1) == torch.arange(d)
    out = torch.where(mask, values[1], values[0])
    a = attr(node, "axis", -1)
    if a != -1:
        out = out.movedim(-1, axis(a, out.dim()))
    return out


@op("Dropout")
def _dropout(node, x):
    n_out = len(node.outputs)
    ratio = arg(x, 1)
    training = arg(x, 2)
    if training is not None and bool(training.reshape(-1)[0]):
        if (float(ratio.reshape(-1)[0]) if ratio is not None else 0.5) != 0.0:
            raise unsupported(node, "in training mode with a non-zero ratio (a random mask)")
    mask = torch.ones_like(x[0], dtype=torch.bool)
    return [x[0], mask][:n_out] if n_out > 1 else x[0]

