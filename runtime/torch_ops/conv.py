"""Convolutions: Conv, ConvTranspose, DeformConv, Col2Im (and the helper the integer convs share)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .common import arg, attr, ints, op

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONVT = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def same_pads(auto_pad: str, sizes, kernel, strides, dilations) -> list[int]:
    """[begin..., end...] pads of SAME_UPPER / SAME_LOWER (output = ceil(input / stride))."""
    nd = len(sizes)
    pads = [0] * (2 * nd)
    for i in range(nd):
        out = math.ceil(sizes[i] / strides[i])
        total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - sizes[i])
        lo = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
        pads[i], pads[nd + i] = lo, total - lo
    return pads


def conv_pads(node, sizes, kernel, strides, dilations) -> list[int]:
    nd = len(kernel)
    auto_pad = attr(node, "auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return same_pads(auto_pad, sizes, kernel, strides, dilations)
    if auto_pad == "VALID":
        return [0] * (2 * nd)
    return list(attr(node, "pads", [0] * (2 * nd)))


def torch_pad(pads: list[int]) -> list[int]:
    """ONNX [b1, b2, .., e1, e2, ..] -> torch F.pad order (last dim first)."""
    nd = len(pads) // 2
    fp = []
    for i in reversed(range(nd)):
        fp += [pads[i], pads[nd + i]]
    return fp


def conv_nd(node, t: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    nd = w.dim() - 2
    strides = attr(node, "strides", [1] * nd)
    dilations = attr(node, "dilations", [1] * nd)
    pads = conv_pads(node, list(t.shape[2:]), list(w.shape[2:]), strides, dilations)
    if pads[:nd] == pads[nd:]:
        padding = pads[:nd]
    else:
        t = F.pad(t, torch_pad(pads))
        padding = [0] * nd
    return _CONV[nd](t, w, b, stride=strides, padding=padding, dilation=dilations, groups=attr(node, "group", 1))


@op("Conv")
def _conv(node, x):
    return conv_nd(node, x[0], x[1], arg(x, 2))


@op("ConvTranspose")
def _convt(node, x):
    t, w, b = x[0], x[1], arg(x, 2)
    nd = w.dim() - 2
    strides = attr(node, "strides", [1] * nd)
    dil = attr(node, "dilations", [1] * nd)
    opad = attr(node, "output_padding", [0] * nd)
    k = list(w.shape[2:])
    sizes = list(t.shape[2:])
    full = [strides[i] * (sizes[i] - 1) + opad[i] + (k[i] - 1) * dil[i] + 1 for i in range(nd)]
    out_shape = attr(node, "output_shape")
    auto_pad = attr(node, "auto_pad", "NOTSET")
    if out_shape is None and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out_shape = [sizes[i] * strides[i] for i in range(nd)]
    if out_shape is not None:
        out_shape = list(out_shape)[-nd:]
        pads = [0] * (2 * nd)
        for i in range(nd):
            total = full[i] - out_shape[i]
            lo = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            pads[i], pads[nd + i] = lo, total - lo
    else:
        pads = [0] * (2 * nd) if auto_pad == "VALID" else list(attr(node, "pads", [0] * (2 * nd)))
    group = attr(node, "group", 1)
    native = pads[:nd] == pads[nd:] and all(p >= 0 for p in pads)
    if native and all(o < max(s, d) for o, s, d in zip(opad, strides, dil, strict=False)):
        return _CONVT[nd](t, w, b, stride=strides, padding=pads[:nd], output_padding=opad, groups=group, dilation=dil)
    y = _CONVT[nd](t, w, None, stride=strides, groups=group, dilation=dil)
    y = F.pad(y, [p for i in reversed(range(nd)) for p in (0, opad[i])])  # output_padding: zeros at the end
    y = F.pad(y, torch_pad([-p for p in pads]))  # crop (or pad, for negative pads)
    if b is not None:
        y = y + b.reshape([1, -1] + [1] * nd)
    return y


@op("DeformConv")
def _deform_conv(node, x):
    t, w, offset, b, mask = x[0], x[1], x[2], arg(x, 3), arg(x, 4)
    n, c, ih, iw = t.shape
    oc, cg, kh, kw = w.shape
    sh, sw = attr(node, "strides", [1, 1])
    dh, dw = attr(node, "dilations", [1, 1])
    pads = attr(node, "pads", [0, 0, 0, 0])
    group, og = attr(node, "group", 1), attr(node, "offset_group", 1)
    oh, ow = offset.shape[2:]
    off = offset.reshape(n, og, kh, kw, 2, oh, ow)
    base_h = (torch.arange(oh) * sh - pads[0]).reshape(1, 1, 1, 1, oh, 1) + (
        torch.arange(kh) * dh).reshape(1, 1, kh, 1, 1, 1)
    base_w = (torch.arange(ow) * sw - pads[1]).reshape(1, 1, 1, 1, 1, ow) + (
        torch.arange(kw) * dw).reshape(1, 1, 1, kw, 1, 1)
    ph = base_h + off[:, :, :, :, 0]  # [n, og, kh, kw, oh, ow]
    pw = base_w + off[:, :, :, :, 1]
    grid = torch.stack([pw / max(iw - 1, 1) * 2 - 1, ph / max(ih - 1, 1) * 2 - 1], dim=-1)
    grid = grid.reshape(n * og, kh * kw * oh, ow, 2)
    sampled = F.grid_sample(t.reshape(n * og, c // og, ih, iw), grid, mode="bilinear", padding_mode="zeros",
                            align_corners=True)  # [n*og, c/og, kh*kw*oh, ow]
    sampled = sampled.reshape(n, og, c // og, kh * kw, oh, ow)
    if mask is not None:
        sampled = sampled * mask.reshape(n, og, 1, kh * kw, oh, ow)
    cols = sampled.reshape(n, group, cg * kh * kw, oh * ow)
    y = torch.einsum("goc,ngcl->ngol", w.reshape(group, oc // group, cg * kh * kw), cols).reshape(n, oc, oh, ow)
    return y if b is None else y + b.reshape(1, -1, 1, 1)


@op("Col2Im")
def _col2im(node, x):
    t, image, block = x[0], ints(x[1]), ints(x[2])
    nd = len(image)
    dil = attr(node, "dilations", [1] * nd)
    strides = attr(node, "strides", [1] * nd)
    pads = attr(node, "pads", [0] * (2 * nd))
    padded = [image[i] + pads[i] + pads[nd + i] for i in range(nd)]
    nblocks = [(padded[i] - (block[i] - 1) * dil[i] - 1) // strides[i] + 1 for i in range(nd)]
    # flat index into the padded image of every (kernel offset, block position) pair
    idx = torch.zeros([1] * (2 * nd), dtype=torch.int64)
    for i in range(nd):
        stride = int(np.prod(padded[i + 1:], dtype=np.int64))
        kpos = (torch.arange(block[i]) * dil[i]).reshape([1] * i + [-1] + [1] * (2 * nd - i - 1))
        lpos = (torch.arange(nblocks[i]) * strides[i]).reshape([1] * (nd + i) + [-1] + [1] * (nd - i - 1))
        idx = idx + (kpos + lpos) * stride
    n = t.shape[0]
    c = t.shape[1] // int(np.prod(block))
    out = torch.zeros(n, c, int(np.prod(padded)), dtype=t.dtype)
    out = out.index_add(2, idx.reshape(-1), t.reshape(n, c, -1))
    out = out.reshape([n, c] + padded)
    return F.pad(out, torch_pad([-p for p in pads]))
