"""ONNX Runtime's CPU execution provider as a :class:`~onnx_amp.runtime.backends.base.Backend`.

Sessions come from ``runtime.ort_session.make_session`` (FP8-safe optimizer settings, INT8 Q/DQ
fusion, external data); the lowering is ORT's fusable INT8 layout (``passes.rewrite.ORT_CPU_LOWERING``).
ORT CPU has no BF16 kernels and computes FP16 MatMul in FP32: only FP32 and INT8 execute at their
precision here. :meth:`OrtCpuBackend.fused_int8` reads ORT's optimized graph
(``optimized_model_filepath``) and counts the INT8-planned layers ORT really fused into integer kernels
(``MatMulIntegerToFloat``, ``QLinearMatMul``, ``QLinearConv``, ...; a fused node keeps the layer's name,
or that name plus ``_token_<n>``).
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

    def runner(self, feeds: dict[str, Any]):
        names = set(self.input_names)
        f = {k: v for k, v in feeds.items() if k in names}
        return lambda s=self.ort, f=f: s.run(None, f)


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

    def fused_int8(self, model_planned: ir.Model, lowered: ir.Model) -> dict[str, Any]:
        """The executed-precision check of ORT: every layer of ``model_planned`` whose activations are
        planned INT8, and whether ORT's optimized graph of ``lowered`` (the shipped model) runs it as an
        integer kernel (``mismatches``: those it left as a float op on dequantized values)."""
        import tempfile
        from pathlib import Path

        import onnx

        from onnx_amp.core import annotations as A
        from onnx_amp.runtime.ort_session import make_session

        layers = [n for n in model_planned.graph.all_nodes()
                  if A.LAYER in n.metadata_props and A.INSERTED_BY not in n.metadata_props]
        planned = [n for n in layers if A.PRECISION in n.metadata_props
                   and A.parse_precision(n.metadata_props[A.PRECISION])[1] == "int8"]
        with tempfile.TemporaryDirectory(prefix="onnx_amp_ortopt_") as d:
            path = Path(d) / "optimized.onnx"
            make_session(lowered, optimized_model_filepath=str(path))
            kinds = {}
            for node in onnx.load(str(path), load_external_data=False).graph.node:
                # a fused node keeps its layer's name, or that name plus "_token_<n>" (QLinearConv)
                kinds.setdefault(node.name.split("_token_")[0], node.op_type)
                if node.op_type in INT8_KERNELS:
                    kinds[node.name.split("_token_")[0]] = node.op_type
        fused = [n for n in planned if kinds.get(n.name) in INT8_KERNELS]
        mm = [{"node": n.name, "layer": n.metadata_props[A.LAYER], "op_type": n.op_type,
               "planned": n.metadata_props[A.PRECISION], "expected": "int8", "expected_weights": None,
               "executed": "fp32", "executed_weights": None, "op": n.name, "layer_type": kinds.get(n.name),
               "kind": "not_fused"} for n in planned if n not in fused]
        text = "\n".join(f"{m['layer']} {m['node']} [{m['op_type']}]: planned {m['planned']}, ORT kept "
                         f"{m['layer_type']} on dequantized values: not_fused" for m in mm[:20])
        return {"backend": "ort_cpu", "source": "optimized graph", "layers": len(layers),
                "executed": {"int8": len(fused), "fp32": len(layers) - len(fused)}, "int8_planned": len(planned),
                "mismatches": mm, "text": text}


#: ORT's integer kernels (what its QDQ fusions turn INT8 Q/DQ layers into)
INT8_KERNELS = {"MatMulIntegerToFloat", "QLinearMatMul", "QLinearConv", "MatMulInteger", "ConvInteger",
                "DynamicQuantizeMatMul", "QGemm", "QAttention", "DynamicQuantizeLSTM"}
