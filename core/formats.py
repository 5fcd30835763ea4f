"""Numeric formats: names, noise model constants and storage types (ONNX and numpy, no torch).

Floating formats get relative noise with variance ``alpha = 2**(-2m) / 12`` (m mantissa bits);
INT8 is symmetric (per-channel weights, per-tensor activations) with absolute noise step**2/12.
``numpy_dtype`` is the storage type as numpy knows it (``ml_dtypes`` for bfloat16 and float8), so
weights can be quantized without torch; ``runtime.torch_graph.torch_dtype(fmt.onnx_dtype)`` gives
the torch type where torch runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx_ir as ir


@dataclass(frozen=True)
class Format:
    name: str
    bits: int  # storage bits
    mantissa: int  # explicit mantissa bits (floating); 0 for integers
    max_value: float  # largest finite magnitude (qmax for int8)
    is_int: bool
    onnx_dtype: ir.DataType
    numpy_dtype: np.dtype
    needs_qdq: bool  # lowered with QuantizeLinear/DequantizeLinear (else Cast or nothing)

    @property
    def alpha(self) -> float:
        """Variance of the relative rounding noise, 2^(-2m)/12 (floating formats only)."""
        if self.is_int:
            raise ValueError(f"{self.name} noise is absolute; use step**2/12, not alpha")
        return 2.0 ** (-2 * self.mantissa) / 12.0

    @property
    def bytes(self) -> float:
        return self.bits / 8.0


FORMATS: dict[str, Format] = {
    f.name: f
    for f in [
        Format("fp32", 32, 23, 3.4028234663852886e38, False, ir.DataType.FLOAT, np.dtype(np.float32), False),
        Format("bf16", 16, 7, 3.3895313892515355e38, False, ir.DataType.BFLOAT16, np.dtype(ml_dtypes.bfloat16), False),
        Format("fp16", 16, 10, 65504.0, False, ir.DataType.FLOAT16, np.dtype(np.float16), False),
        Format("fp8_e4m3", 8, 3, 448.0, False, ir.DataType.FLOAT8E4M3FN, np.dtype(ml_dtypes.float8_e4m3fn), True),
        Format("fp8_e5m2", 8, 2, 57344.0, False, ir.DataType.FLOAT8E5M2, np.dtype(ml_dtypes.float8_e5m2), True),
        Format("int8", 8, 0, 127.0, True, ir.DataType.INT8, np.dtype(np.int8), True),
    ]
}

ALIASES = {
    "float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16",
    "fp8": "fp8_e4m3", "e4m3": "fp8_e4m3", "fp8-e4m3": "fp8_e4m3", "float8_e4m3fn": "fp8_e4m3",
    "e5m2": "fp8_e5m2", "fp8-e5m2": "fp8_e5m2", "float8_e5m2": "fp8_e5m2",
}

#: formats stored in 8 bits as floats
FP8_FORMATS = ("fp8_e4m3", "fp8_e5m2")


def get_format(name: str) -> Format:
    key = ALIASES.get(name.lower(), name.lower())
    try:
        return FORMATS[key]
    except KeyError:
        raise ValueError(
            f"unknown format {name!r}; known formats: {', '.join(FORMATS)}"
        ) from None
