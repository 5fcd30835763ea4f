"""ONNX Runtime's CPU execution provider as a :class:`~onnx_amp.runtime.backends.base.Backend`.

Sessions come from ``runtime.ort_session.make_session`` (FP8-safe optimizer settings, INT8 Q/DQ
fusion, external data); the lowering is ORT's fusable INT8 layout (``passes.rewrite.ORT_CPU_LOWERING``).
ORT CPU has no BF16 kernels and computes FP16 MatMul in FP32: only FP32 and INT8 execute at their
precision here.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnx_ir as ir

from onnx_amp.runtime.backends import register
from onnx_amp.runtime.backends.base import Backend


class OrtSession:
    def __init__(self, sess):
        self.ort = sess
        self.input_names = [i.name for i in sess.get_inputs()]
        self.output_names = [o.name for o in sess.get_outputs()]

    def run(self, feeds: dict[str, Any], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        from onnx_amp.runtime.ort_session import run

        return run(self.ort, feeds, outputs)


@register
class OrtCpuBackend(Backend):
    name = "ort_cpu"
    description = "ONNX Runtime, CPUExecutionProvider"

    def check(self) -> None:
        from onnx_amp.core.errors import OnnxAmpError

        try:
            import onnxruntime as ort
        except Exception as e:  # noqa: BLE001
            raise OnnxAmpError(f"onnxruntime cannot be imported ({type(e).__name__}: {e}); "
                               "reinstall with 'bash tools/install.sh'") from None
        if "CPUExecutionProvider" not in ort.get_available_providers():
            raise OnnxAmpError(f"onnxruntime {ort.__version__} has no CPUExecutionProvider "
                               f"(providers: {ort.get_available_providers()}); install the CPU onnxruntime package")

    def formats(self) -> tuple[str, ...]:
        return ("fp32", "int8")

    @property
    def lowering(self) -> dict[str, Any]:
        from onnx_amp.passes.rewrite import ORT_CPU_LOWERING

        return dict(ORT_CPU_LOWERING)

    def session(self, model: ir.Model | str | os.PathLike, *, exact: bool = False, threads: int | None = None,
                timing: bool = False) -> OrtSession:
        from onnx_amp.runtime.ort_session import make_session

        return OrtSession(make_session(model, threads=threads, exact_qdq=exact, timing=timing))
