"""Opaque execution of one node the interpreter cannot run (``TorchGraph(model, fallback=True)``).

The node is wrapped in a one-node ONNX model and run by a reference implementation: ONNX Runtime
for ops outside the standard domains (``com.microsoft`` contrib ops and the like), else ONNX's own
``onnx.reference.ReferenceEvaluator`` (which also runs the model's local functions). Its outputs are
plain tensors, detached: no gradient flows through an opaque node.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import torch

from onnx_amp.core.errors import OnnxAmpError

from .common import DT, numpy_to_torch, onnx_type

_STANDARD = ("", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview", "ai.onnx.preview.training")


def _to_numpy(t: torch.Tensor, dt: DT) -> np.ndarray:
    np_dt = onnx.helper.tensor_dtype_to_np_dtype(int(dt))
    arr = t.detach().cpu()
    arr = arr.numpy() if arr.dtype != torch.bfloat16 else arr.float().numpy()
    return arr.astype(np_dt)


class OpaqueNode:
    """Runs ``node`` by a reference implementation; outputs as detached carrier tensors."""

    def __init__(self, node: ir.Node, opsets: dict[str, int], functions: list[Any]):
        self.node = node
        self.opsets = dict(opsets)
        self.functions = functions
        self._runners: dict[tuple, Any] = {}

    def _model(self, args: list[torch.Tensor | None], types: list[DT]) -> onnx.ModelProto:
        proto = ir.serde.serialize_node(self.node)
        names = [f"in{i}" if a is not None else "" for i, a in enumerate(args)]
        outs = [f"out{i}" if (v is not None and v.name) else "" for i, v in enumerate(self.node.outputs)]
        del proto.input[:]
        proto.input.extend(names)
        del proto.output[:]
        proto.output.extend(outs)
        inputs = [oh.make_tensor_value_info(n, int(dt), list(a.shape))
                  for n, a, dt in zip(names, args, types, strict=False) if a is not None]
        outputs = []
        for n, v in zip(outs, self.node.outputs, strict=False):
            if n:
                known = v.dtype is not None and v.dtype != DT.UNDEFINED
                outputs.append(oh.make_tensor_value_info(n, int(v.dtype), None) if known
                               else oh.make_value_info(n, onnx.TypeProto()))
        graph = oh.make_graph([proto], "opaque", inputs, outputs)
        opsets = [oh.make_opsetid(d, v) for d, v in self.opsets.items()]
        if self.node.domain not in self.opsets:
            opsets.append(oh.make_opsetid(self.node.domain, 1))
        model = oh.make_model(graph, opset_imports=opsets, ir_version=10)
        model.functions.extend(self.functions)
        return model

    def _runner(self, args, types):
        key = tuple((None if a is None else (tuple(a.shape), dt)) for a, dt in zip(args, types, strict=False))
        if key in self._runners:
            return self._runners[key]
        model = self._model(args, types)
        runner = None
        if self.node.domain not in _STANDARD:
            try:
                import onnxruntime as ort

                sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
                runner = lambda feeds: sess.run(None, feeds)  # noqa: E731
            except Exception:  # noqa: BLE001  (ORT has no kernel: try ONNX's reference evaluator)
                runner = None
        if runner is None:
            from onnx.reference import ReferenceEvaluator

            try:
                ref = ReferenceEvaluator(model)
            except Exception as e:  # noqa: BLE001
                raise self._error(e) from e
            runner = lambda feeds: ref.run(None, feeds)  # noqa: E731
        self._runners[key] = runner
        return runner

    def _error(self, e: Exception) -> OnnxAmpError:
        node = self.node
        op = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return OnnxAmpError(
            f"node {node.name!r}: op {op} is not supported by the ONNX->torch interpreter, and neither ONNX Runtime "
            f"nor onnx.reference could run it as an opaque step ({first[:200]}); simplify or replace it")

    def __call__(self, args: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        types = [onnx_type(v, a) if a is not None else DT.UNDEFINED
                 for v, a in zip(self.node.inputs, args, strict=False)]
        runner = self._runner(args, types)
        feeds = {f"in{i}": _to_numpy(a, dt)
                 for i, (a, dt) in enumerate(zip(args, types, strict=False)) if a is not None}
        try:
            res = runner(feeds)
        except Exception as e:  # noqa: BLE001
            raise self._error(e) from e
        res = iter(res)
        return [numpy_to_torch(next(res)) if (v is not None and v.name) else None for v in self.node.outputs]
