"""Resampling: Resize (all modes), Upsample, GridSample, AffineGrid, RoiAlign.

Resize is separable: along each resized axis, every output position is a weighted sum of a few input
positions (index and weight tables computed here from the ONNX coordinate rules, as the ONNX reference
does), applied with ``index_select`` so the result stays differentiable in the input.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .common import arg, attr, axis, ints, op, opset, unsupported


def _source_coords(ctm: str, n_out: int, n_in: int, scale: float, roi) -> tuple[np.ndarray, np.ndarray | None]:
    y = np.arange(n_out, dtype=np.float64)
    width = scale * n_in
    if ctm == "align_corners":
        return (np.zeros(n_out) if width == 1 else y * (n_in - 1) / (width - 1)), None
    if ctm == "asymmetric":
        return y / scale, None
    if ctm == "tf_crop_and_resize":
        lo, hi = roi
        x = np.full(n_out, (hi - lo) * (n_in - 1) / 2) if width == 1 else y * (hi - lo) * (n_in - 1) / (width - 1)
        x = x + lo * (n_in - 1)
        return x, (x < 0) | (x > n_in - 1)
    if ctm == "pytorch_half_pixel":
        return (np.full(n_out, -0.5) if width == 1 else (y + 0.5) / scale - 0.5), None
    if ctm == "half_pixel":
        return (y + 0.5) / scale - 0.5, None
    if ctm == "half_pixel_symmetric":
        offset = n_in / 2 * (1 - n_out / width)
        return offset + (y + 0.5) / scale - 0.5, None
    raise ValueError(ctm)


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def _taps(node, mode: str, n_in: int, n_out: int, scale: float, roi, opset_: int):
    """(index [n_out, k], weight [n_out, k], extrapolated [n_out] or None) along one axis."""
    ctm = attr(node, "coordinate_transformation_mode", "half_pixel") if opset_ >= 11 else "asymmetric"
    x, extra = _source_coords(ctm, n_out, n_in, scale, roi)
    p = np.floor(x)
    x0 = np.where(x == p, p - 1, p).astype(np.int64)  # prefer the pixel left of x: ratio in (0, 1]
    ratio = x - x0
    if mode == "nearest":
        nm = attr(node, "nearest_mode", "round_prefer_floor") if opset_ >= 11 else (
            "floor" if scale >= 1 else "ceil")
        up = {"round_prefer_floor": ratio > 0.5, "round_prefer_ceil": ratio >= 0.5, "floor": ratio == 1.0,
              "ceil": np.ones_like(ratio, dtype=bool)}[nm]
        idx = (x0 + up)[:, None]
        w = np.ones_like(idx, dtype=np.float64)
    else:
        radius = 1 if mode == "linear" else 2
        s = min(scale, 1.0) if attr(node, "antialias", 0) else 1.0
        start = int(math.floor(-radius / s) + 1)
        offs = np.arange(start, 2 - start)
        d = s * (offs[None, :] - ratio[:, None])
        w = np.clip(1 - np.abs(d), 0, 1) if mode == "linear" else _cubic(d, attr(node, "cubic_coeff_a", -0.75))
        idx = x0[:, None] + offs[None, :]
        if attr(node, "exclude_outside", 0):
            w = np.where((idx < 0) | (idx >= n_in), 0.0, w)
        total = w.sum(1, keepdims=True)
        w = w / np.where(total == 0, 1.0, total)
    return np.clip(idx, 0, n_in - 1), w, extra


def _apply_taps(t: torch.Tensor, a: int, idx: np.ndarray, w: np.ndarray) -> torch.Tensor:
    n_out, k = idx.shape
    g = t.index_select(a, torch.from_numpy(idx.reshape(-1)))
    if k == 1:
        return g
    shape = list(t.shape)
    shape[a:a + 1] = [n_out, k]
    g = g.reshape(shape)
    wt = torch.from_numpy(w).to(t.dtype).reshape([n_out, k] + [1] * (t.dim() - a - 1))
    return (g * wt).sum(a + 1)


def _targets(node, t: torch.Tensor, scales, sizes, axes):
    """(scale per axis, output size per axis) for the resized axes, ONNX rules."""
    if sizes is not None:
        sc = [sizes[i] / t.shape[a] for i, a in enumerate(axes)]
        policy = attr(node, "keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            s = min(sc) if policy == "not_larger" else max(sc)
            return [s] * len(axes), [int(s * t.shape[a] + 0.5) for a in axes]
        return sc, list(sizes)
    return list(scales), [int(s * t.shape[a]) for s, a in zip(scales, axes, strict=False)]


def resize(node, t: torch.Tensor, scales, sizes, roi, mode: str, axes: list[int], opset_: int) -> torch.Tensor:
    if mode not in ("nearest", "linear", "cubic"):
        raise unsupported(node, f"mode {mode!r}")
    sc, out = _targets(node, t, scales, sizes, axes)
    extrap = attr(node, "extrapolation_value", 0.0)
    mask = None
    y = t.float() if not t.is_floating_point() else t
    for i, a in enumerate(axes):
        pair = None
        if roi is not None and len(roi):
            pair = (roi[i], roi[len(axes) + i])
        if sc[i] == 1.0 and out[i] == t.shape[a] and (pair is None or pair == (0.0, 1.0)):
            continue
        idx, w, extra = _taps(node, mode, y.shape[a], out[i], sc[i], pair, opset_)
        y = _apply_taps(y, a, idx, w)
        if extra is not None and extra.any():
            m = torch.from_numpy(extra).reshape([-1] + [1] * (t.dim() - a - 1))
            mask = m if mask is None else (mask | m)
    if mask is not None:
        y = torch.where(mask, torch.as_tensor(extrap, dtype=y.dtype), y)
    if not t.is_floating_point():
        info = torch.iinfo(t.dtype)
        y = torch.round(y).clamp(info.min, info.max).to(t.dtype)
    return y


@op("Resize")
def _resize(node, x):
    t = x[0]
    v = opset(node)
    if v < 11:
        scales, sizes, roi = [float(s) for s in x[1].reshape(-1)], None, None
    else:
        roi_t, sc_t, sz_t = arg(x, 1), arg(x, 2), arg(x, 3)
        roi = [float(r) for r in roi_t.reshape(-1)] if roi_t is not None and roi_t.numel() else None
        scales = [float(s) for s in sc_t.reshape(-1)] if sc_t is not None and sc_t.numel() else None
        sizes = ints(sz_t) if sz_t is not None and sz_t.numel() else None
    axes = [axis(a, t.dim()) for a in attr(node, "axes", list(range(t.dim())))]
    return resize(node, t, scales, sizes, roi, attr(node, "mode", "nearest"), axes, v)


@op("Upsample")
def _upsample(node, x):
    t = x[0]
    scales = [float(s) for s in x[1].reshape(-1)] if len(x) > 1 else list(attr(node, "scales"))
    mode = attr(node, "mode", "nearest")
    return resize(node, t, scales, None, None, "linear" if mode in ("linear", "bilinear") else mode,
                  list(range(t.dim())), 10)


@op("GridSample")
def _grid_sample(node, x):
    t, grid = x
    mode = {"bilinear": "bilinear", "linear": "bilinear", "nearest": "nearest", "bicubic": "bicubic",
            "cubic": "bicubic"}[attr(node, "mode", "linear" if opset(node) >= 20 else "bilinear")]
    pad = attr(node, "padding_mode", "zeros")
    if t.dim() not in (4, 5) or (t.dim() == 5 and mode == "bicubic"):
        raise unsupported(node, f"mode {mode} on a rank-{t.dim()} input")
    return F.grid_sample(t, grid, mode=mode, padding_mode=pad, align_corners=bool(attr(node, "align_corners", 0)))


@op("AffineGrid")
def _affine_grid(node, x):
    theta, size = x[0], ints(x[1])
    return F.affine_grid(theta, size, align_corners=bool(attr(node, "align_corners", 0)))


def _bilinear(img: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """img [C, H, W] sampled at the points (ys, xs) [P]: [C, P] (zero outside, as RoiAlign)."""
    h, w = img.shape[1:]
    valid = (ys >= -1.0) & (ys <= h) & (xs >= -1.0) & (xs <= w)
    y, x = ys.clamp(min=0), xs.clamp(min=0)
    y0, x0 = y.floor().long().clamp(max=h - 1), x.floor().long().clamp(max=w - 1)
    y = torch.where(y0 >= h - 1, y0.double(), y)
    x = torch.where(x0 >= w - 1, x0.double(), x)
    y1, x1 = (y0 + 1).clamp(max=h - 1), (x0 + 1).clamp(max=w - 1)
    ly, lx = (y - y0).to(img.dtype), (x - x0).to(img.dtype)
    hy, hx = 1 - ly, 1 - lx
    flat = img.reshape(img.shape[0], -1)
    out = []
    for yy, xx, ww in ((y0, x0, hy * hx), (y0, x1, hy * lx), (y1, x0, ly * hx), (y1, x1, ly * lx)):
        out.append(flat[:, yy * w + xx] * ww)
    return out, valid.to(img.dtype)


@op("RoiAlign")
def _roi_align(node, x):
    t, rois, bidx = x
    oh, ow = attr(node, "output_height", 1), attr(node, "output_width", 1)
    ratio, scale = attr(node, "sampling_ratio", 0), attr(node, "spatial_scale", 1.0)
    half = attr(node, "coordinate_transformation_mode", "half_pixel" if opset(node) >= 16 else
                "output_half_pixel") == "half_pixel"
    is_max = attr(node, "mode", "avg") == "max"
    outs = []
    for r in range(rois.shape[0]):
        x1, y1, x2, y2 = (float(v) * scale - (0.5 if half else 0.0) for v in rois[r])
        rw, rh = x2 - x1, y2 - y1
        if not half:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / oh, rw / ow
        gh = ratio if ratio > 0 else int(math.ceil(rh / oh))
        gw = ratio if ratio > 0 else int(math.ceil(rw / ow))
        iy = (torch.arange(oh, dtype=torch.float64)[:, None] * bh + y1
              + (torch.arange(gh, dtype=torch.float64)[None, :] + 0.5) * bh / max(gh, 1)).reshape(-1)
        ix = (torch.arange(ow, dtype=torch.float64)[:, None] * bw + x1
              + (torch.arange(gw, dtype=torch.float64)[None, :] + 0.5) * bw / max(gw, 1)).reshape(-1)
        ys = iy[:, None].expand(-1, ix.numel()).reshape(-1)
        xs = ix[None, :].expand(iy.numel(), -1).reshape(-1)
        parts, valid = _bilinear(t[int(bidx[r])], ys, xs)
        c = t.shape[1]
        if is_max:
            v = torch.stack(parts).amax(0) * valid
        else:
            v = sum(parts) * valid
        v = v.reshape(c, oh, gh, ow, gw)
        outs.append(v.amax(dim=(2, 4)) if is_max else v.sum(dim=(2, 4)) / max(gh * gw, 1))
    return torch.stack(outs) if outs else torch.zeros(0, t.shape[1], oh, ow)
