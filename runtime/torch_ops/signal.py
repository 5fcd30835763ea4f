"""Signal processing: DFT, STFT, the window generators, MelWeightMatrix (torch.fft: differentiable)."""

from __future__ import annotations

import math

import numpy as np
import torch

from .common import arg, attr, axis, carrier_dtype, op, opset


def _complex(t: torch.Tensor) -> torch.Tensor:
    """[..., 1] real or [..., 2] (real, imag) -> complex [...]."""
    if t.shape[-1] == 1:
        return t[..., 0].to(torch.complex64)
    return torch.complex(t[..., 0].float(), t[..., 1].float())


@op("DFT")
def _dft(node, x):
    t = x[0]
    n_arg = arg(x, 1)
    if opset(node) >= 20:
        a = int(x[2].reshape(-1)[0]) if arg(x, 2) is not None else -2
    else:
        a = attr(node, "axis", 1)
    a = axis(a, t.dim())
    inverse, onesided = bool(attr(node, "inverse", 0)), bool(attr(node, "onesided", 0))
    if n_arg is not None and n_arg.numel():
        n = int(n_arg.reshape(-1)[0])
    else:
        n = 2 * (t.shape[a] - 1) if inverse and onesided else t.shape[a]
    c = _complex(t)
    if inverse:
        if onesided:
            return torch.fft.irfft(c, n=n, dim=a).unsqueeze(-1)
        y = torch.fft.ifft(c, n=n, dim=a)
    else:
        y = torch.fft.fft(c, n=n, dim=a)
        if onesided:
            y = y.narrow(a, 0, n // 2 + 1)
    return torch.view_as_real(y)


@op("STFT")
def _stft(node, x):
    sig, step, window, length = x[0], int(x[1].reshape(-1)[0]), arg(x, 2), arg(x, 3)
    n = int(length.reshape(-1)[0]) if length is not None else window.shape[0]
    c = _complex(sig)  # [B, L]
    frames = c.unfold(1, n, step)  # [B, F, n]
    if window is not None:
        frames = frames * window.to(frames.dtype)
    y = torch.fft.fft(frames, n=n, dim=-1)
    if attr(node, "onesided", 1):
        y = y[..., : n // 2 + 1]
    return torch.view_as_real(y)


def _window(node, x, fn):
    size = int(x[0].reshape(-1)[0])
    denom = size if attr(node, "periodic", 1) else size - 1
    k = torch.arange(size, dtype=torch.float64) * 2 * math.pi / max(denom, 1)
    return fn(k).to(carrier_dtype(attr(node, "output_datatype", 1)))


@op("HannWindow")
def _hann(node, x):
    return _window(node, x, lambda k: 0.5 - 0.5 * torch.cos(k))


@op("HammingWindow")
def _hamming(node, x):
    a = 25.0 / 46.0
    return _window(node, x, lambda k: a - (1 - a) * torch.cos(k))


@op("BlackmanWindow")
def _blackman(node, x):
    return _window(node, x, lambda k: 0.42 - 0.5 * torch.cos(k) + 0.08 * torch.cos(2 * k))


@op("MelWeightMatrix")
def _mel(node, x):
    n_mel, dft_len, rate = (int(t.reshape(-1)[0]) for t in x[:3])
    lo, hi = (float(t.reshape(-1)[0]) for t in x[3:5])
    bins = dft_len // 2 + 1
    lo_mel, hi_mel = 2595 * np.log1p(lo / 700) / np.log(10), 2595 * np.log1p(hi / 700) / np.log(10)
    pts = np.arange(n_mel + 2) * (hi_mel - lo_mel) / (n_mel + 2) + lo_mel
    pts = (((dft_len + 1) * (700 * np.expm1(pts / 2595 * np.log(10)))) // rate).astype(int)
    out = np.zeros((bins, n_mel))
    for i in range(n_mel):
        left, mid, right = pts[i], pts[i + 1], pts[i + 2]
        if mid == left:
            out[mid, i] = 1
        else:
            out[left:mid + 1, i] = (np.arange(left, mid + 1) - left) / (mid - left)
        if right > mid:
            out[mid:right, i] = (right - np.arange(mid, right)) / (right - mid)
    return torch.from_numpy(out).to(carrier_dtype(attr(node, "output_datatype", 1)))
