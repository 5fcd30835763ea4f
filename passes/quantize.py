"""Quantization arithmetic in numpy: what the rewrite stores for a weight and writes as a scale.

Bit-exact with the torch emulation in ``runtime.fakequant`` (``tests/test_rewrite.py`` checks the
rewritten model against it): float32 arithmetic throughout, round half to even, saturation to the
format's largest finite value (ONNX QuantizeLinear with ``saturate=1``), bfloat16/float8 through
``ml_dtypes``.
"""

from __future__ import annotations

import math

import numpy as np

from onnx_amp.core.formats import Format, get_format

REDUCED_INT8_QMAX = 63.0  # ORT's reduce_range: 7-bit weights, no int16 saturation in u8s8 kernels


def _fmt(fmt: str | Format) -> Format:
    return fmt if isinstance(fmt, Format) else get_format(fmt)


def _bshape(scale: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    if axis is None or scale.ndim == 0 or scale.size == 1:
        return scale.reshape(())
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return scale.reshape(shape)


def weight_scales(w: np.ndarray, fmt: str | Format, axis: int, reduce_range: bool = False) -> np.ndarray:
    """Per-output-channel scale amax_c / fmt.max as float32 (1 where a channel is all zero).
    ``reduce_range`` (INT8): amax_c / 63, ORT's 7-bit weights for x86 kernels without VNNI."""
    f = _fmt(fmt)
    w = np.asarray(w, dtype=np.float32)
    ax = axis % w.ndim
    dims = tuple(d for d in range(w.ndim) if d != ax)
    amax = np.abs(w).max(axis=dims) if dims else np.abs(w)
    qmax = REDUCED_INT8_QMAX if (reduce_range and f.is_int) else f.max_value
    s = (amax.astype(np.float32) / np.float32(qmax)).astype(np.float32)
    return np.where(s > 0, s, np.float32(1.0)).astype(np.float32)


def activation_scale(amax: float, fmt: str | Format) -> float:
    """Per-tensor scale from a calibration amax, as a float32 value (1 when amax is 0)."""
    f = _fmt(fmt)
    if amax is None or not math.isfinite(float(amax)):
        raise ValueError(f"activation amax {amax!r} is not a finite number")
    s = float(np.float32(float(amax) / f.max_value))
    return s if s > 0 else 1.0


def quantize(x: np.ndarray, fmt: str | Format, scale, axis: int | None = None) -> np.ndarray:
    """QuantizeLinear with zero point 0: the int8 / float8 array (``fmt.numpy_dtype``)."""
    f = _fmt(fmt)
    if not f.needs_qdq:
        raise ValueError(f"{f.name} is not a Q/DQ format")
    x = np.asarray(x, dtype=np.float32)
    s = _bshape(np.asarray(scale, dtype=np.float32), x.ndim, axis)
    y = (x / s).astype(np.float32)
    if f.is_int:
        return np.clip(np.round(y), -128, 127).astype(np.int8)
    with np.errstate(invalid="ignore"):
        y = np.where(np.isnan(y), y, np.clip(y, -f.max_value, f.max_value)).astype(np.float32)
    return y.astype(f.numpy_dtype)


def quantize_weight(w: np.ndarray, fmt: str | Format, axis: int,
                    reduce_range: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(stored quantized weight, per-channel float32 scales) as the rewrite writes them."""
    s = weight_scales(w, fmt, axis, reduce_range)
    return quantize(w, fmt, s, axis), s


def cast_to(x: np.ndarray, dtype) -> np.ndarray:
    """Round float32 ``x`` to ``dtype`` (bfloat16, float16, float32), round half to even."""
    return np.asarray(x, dtype=np.float32).astype(dtype)
