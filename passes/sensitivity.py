"""Write calibration figures into the model: ``onnx_amp.sens.*`` / ``onnx_amp.amax.*`` on layer nodes
and the ``onnx_amp.calibration`` summary on the model (keys in :mod:`onnx_amp.core.annotations`).

    result = calibrate(model, data)
    AnnotateSensitivityPass(result)(model)
"""

from __future__ import annotations

import onnx_ir as ir

from onnx_amp.core import annotations as A
from onnx_amp.core.errors import OnnxAmpError
from onnx_amp.passes.base import AnnotationPass, PassPreconditionError, require_layers

_SENS_KEYS = (A.SENS_A, A.SENS_W, A.SENS_B, A.GSQ_A, A.GSQ_W, A.GSQ_B, A.AMAX_A, A.AMAX_W, A.AMAX_B, A.AMAX_Y,
              A.SENS_MEASURED)


def _floats(arr) -> list[float]:
    return [float(x) for x in arr]


class AnnotateSensitivityPass(AnnotationPass):
    """Annotate each calibrated layer node; unmatched layers get no figures and are listed in the summary."""

    def __init__(self, result):
        """``result``: a ``runtime.calibrate.CalibrationResult`` (``layers``: layer id -> ``passes.lossmodel.LayerStats``,
        and ``summary()``)."""
        super().__init__()
        self.result = result

    def requires(self, model: ir.Model) -> None:
        by_layer = {n.metadata_props[A.LAYER] for n in require_layers(model, "AnnotateSensitivityPass")}
        missing = [lid for lid in self.result.layers if lid not in by_layer]
        if missing:
            raise PassPreconditionError(
                f"AnnotateSensitivityPass: layer(s) {missing[:5]} of the calibration result are not in this model; "
                "calibrate and annotate the same partitioned model"
            )

    def annotate(self, model: ir.Model) -> dict:
        res = self.result
        by_layer = {n.metadata_props[A.LAYER]: n for n in model.graph if A.LAYER in n.metadata_props}
        for node in by_layer.values():
            for k in _SENS_KEYS:
                node.metadata_props.pop(k, None)
        for lid, st in res.layers.items():
            node = by_layer[lid]
            if st.node and node.name != st.node:
                raise OnnxAmpError(f"AnnotateSensitivityPass: layer {lid} is node {node.name!r} here but {st.node!r} "
                                   "in the result")
            A.set_float(node, A.SENS_A, st.s_a)
            A.set_float(node, A.GSQ_A, st.gsq_a)
            A.set_float(node, A.AMAX_A, st.amax_a)
            if st.amax_y is not None:
                A.set_float(node, A.AMAX_Y, st.amax_y)
            if st.kind == "act_act":
                A.set_float(node, A.SENS_B, st.s_b)
                A.set_float(node, A.GSQ_B, st.gsq_b)
                A.set_float(node, A.AMAX_B, st.amax_b)
            else:
                A.set_float(node, A.SENS_W, st.s_w)
                if st.gsq_w is not None:
                    A.set_json(node, A.GSQ_W, _floats(st.gsq_w))
                if st.amax_w is not None:
                    A.set_json(node, A.AMAX_W, _floats(st.amax_w))
            if st.extra:
                A.set_json(node, A.SENS_MEASURED, st.extra)
        A.set_json(model, A.CALIBRATION, res.summary())
        return {}
