"""The loss model: predicted loss MSE of a layer assignment and of a whole plan (METHOD.md section 1).

THE one place that turns calibration figures into a predicted loss MSE; every stage calls it.

- floating formats: relative noise, ``alpha(f) * S`` per operand (S_W for the weight, S_A / S_B
  for activations), ``alpha = 2^(-2m)/12``.
- INT8 (symmetric, zero point 0): absolute noise ``step^2/12`` per element, step = amax/127 per
  weight output channel (``sum_c gsq_w[c] * (amax_w[c]/127)^2 / 12``) and per tensor for
  activations (``gsq_a * (amax_a/127)^2 / 12``), with ``gsq = mean_n ||dL_n/dx||^2``.
- act_act layers (attention's Q.K^T, P.V): both operands take the activation format.

The loss models (``loss_model`` of ``runtime.pipeline.RunConfig``; the annotations a calibration
wrote select the model, so every stage predicts with the same one):

- ``ideal``: the formulas above (the paper's alpha model).
- ``measured``: each operand's actual first-order error at the rewrite's scales,
  ``v = mean_n (sum_i g_i e_i)^2`` (``runtime.calibrate.measure_format_errors``), plus the INT8
  output ``Q -> DQ`` the target's lowering puts after a layer (slot ``y``: the CPU lowering's Conv
  output Q). Additive: ``MSE = V = sum v``.
- ``shift`` (default): the measured variance terms plus each operand's second-order *mean* loss
  change ``mu = E[dL]`` (the Gauss-Newton curvature of the cross-entropy, from a probe backward in
  the same pass): quantization noise raises the loss on average, and those shifts add up
  coherently across layers while the first-order terms add as variances, so
  ``MSE = V + M^2`` with ``V = sum v`` and ``M = sum mu``. For a causal LM, whose per-sample loss
  is a mean over T tokens, ``mu`` is about T/2 times larger relative to ``v`` than for a
  classifier: the ``M^2`` term dominates long windows. Not additive: the solver handles it
  exactly (``passes.ip``).

``layer_stats_from_model(model)`` reads the calibration annotations (``onnx_amp.sens.*``,
``onnx_amp.amax.*``) back into :class:`LayerStats`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import onnx_ir as ir

from onnx_amp.core import annotations as A
from onnx_amp.core.formats import Format, get_format
from onnx_amp.core.errors import OnnxAmpError

INT8_LEVELS = 127.0
#: the loss models, in the order they were built (``measured`` and ``shift`` need the second pass)
LOSS_MODELS = ("ideal", "measured", "shift")


@dataclass
class LayerStats:
    """Calibration figures of one layer (all means are over calibration samples n)."""

    layer: str  # "L12"
    node: str = ""
    kind: str = "weight"  # "weight" | "act_act"
    unit: str | None = None
    s_a: float = 0.0  # mean_n ||A (.) dL_n/dA||^2
    s_w: float = 0.0  # mean_n ||W (.) dL_n/dW||^2 (weight layers)
    s_b: float = 0.0  # mean_n ||B (.) dL_n/dB||^2 (act_act layers)
    gsq_a: float = 0.0  # mean_n ||dL_n/dA||^2
    gsq_b: float = 0.0
    gsq_w: np.ndarray | None = None  # [C] per output channel: mean_n ||dL_n/dW_c||^2
    amax_a: float = 0.0
    amax_b: float = 0.0
    amax_w: np.ndarray | None = None  # [C] per output channel max |W_c|
    amax_y: float | None = None  # layer output max |Y| (INT8 output QuantizeLinear)
    weight_axis: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. measured per-format error terms

    def _is_int8(self, wf: Format, af: Format) -> bool:
        return af.is_int and (self.kind == "act_act" or wf.is_int)

    def operand_terms(self, weight_fmt: str | Format, act_fmt: str | Format) -> dict[str, float]:
        """Predicted loss MSE contribution of each operand: {'w'|'a'|'b'|'y': value} (``y``: the INT8
        output Q the target's lowering adds, when the calibration measured it)."""
        wf = weight_fmt if isinstance(weight_fmt, Format) else get_format(weight_fmt)
        af = act_fmt if isinstance(act_fmt, Format) else get_format(act_fmt)
        out = {"a": _act_term(self.s_a, self.gsq_a, self.amax_a, af, self.extra.get("a"))}
        if self.kind == "act_act":
            out["b"] = _act_term(self.s_b, self.gsq_b, self.amax_b, af, self.extra.get("b"))
        else:
            out["w"] = _weight_term(self, wf)
        y = self.extra.get("y")
        if y and self._is_int8(wf, af) and af.name in y:
            out["y"] = float(y[af.name])
        return out

    def shift_terms(self, weight_fmt: str | Format, act_fmt: str | Format) -> dict[str, float]:
        """Second-order mean loss change of each operand (``shift`` model; empty without it)."""
        sh = self.extra.get("shift")
        if not sh:
            return {}
        wf = weight_fmt if isinstance(weight_fmt, Format) else get_format(weight_fmt)
        af = act_fmt if isinstance(act_fmt, Format) else get_format(act_fmt)
        fmts = {"a": af, "b": af, "w": wf}
        out = {slot: float(sh[slot][fmts[slot].name]) for slot in ("a", "b", "w")
               if slot in sh and fmts[slot].name in sh[slot]}
        if "y" in sh and self._is_int8(wf, af) and af.name in sh["y"]:
            out["y"] = float(sh["y"][af.name])
        return out


def _int8_var(amax) -> Any:
    step = np.asarray(amax, dtype=np.float64) / INT8_LEVELS
    return step * step / 12.0


def _act_term(s: float, gsq: float, amax: float, f: Format, measured: dict | None) -> float:
    if measured is not None and f.name in measured:  # "actual error" variant (see calibrate.measure_format_errors)
        return float(measured[f.name])
    if f.is_int:
        return float(gsq * _int8_var(amax))
    return float(f.alpha * s)


def _weight_term(st: LayerStats, f: Format) -> float:
    measured = st.extra.get("w")
    if measured is not None and f.name in measured:
        return float(measured[f.name])
    if f.is_int:
        if st.gsq_w is None or st.amax_w is None:
            raise OnnxAmpError(f"layer {st.layer}: INT8 weight prediction needs gsq_w and amax_w (re-run onnx-amp calibrate)")
        return float(np.sum(np.asarray(st.gsq_w, dtype=np.float64) * _int8_var(st.amax_w)))
    return float(f.alpha * st.s_w)


def predicted_mse(stats: LayerStats, weight_fmt: str | Format, act_fmt: str | Format) -> float:
    """The additive part of one layer's predicted loss MSE under (weight format, activation format):
    its variance term ``v`` (the whole prediction under the ``ideal`` and ``measured`` models)."""
    return float(sum(stats.operand_terms(weight_fmt, act_fmt).values()))


def predicted_shift(stats: LayerStats, weight_fmt: str | Format, act_fmt: str | Format) -> float:
    """One layer's second-order mean loss change ``mu`` (0 unless the calibration measured it)."""
    return float(sum(stats.shift_terms(weight_fmt, act_fmt).values()))


def combine(variance: float, shift: float) -> float:
    """A plan's predicted loss MSE from its summed variance terms and summed mean shifts."""
    return float(variance + shift * shift)


def loss_model_of(stats: Mapping[str, LayerStats]) -> str:
    """Which loss model the calibration figures carry: ``shift``, ``measured`` or ``ideal``."""
    extras = [st.extra for st in stats.values() if st.extra]
    if any("shift" in e for e in extras):
        return "shift"
    return "measured" if extras else "ideal"


def _as_pair(v: Any) -> tuple[str, str]:
    if isinstance(v, Mapping):
        return v["weight"], v["activation"]
    if isinstance(v, str):
        return A.parse_precision(v) if "=" in v else (v, v)
    w, a = v
    return w, a


def plan_predicted_mse(model_or_stats: ir.Model | Mapping[str, LayerStats], plan_units: Mapping[str, Any],
                       default: tuple[str, str] | None = ("fp32", "fp32"), by_layer: bool = False) -> float:
    """Predicted loss MSE of a plan: ``V + M^2``, the sum over layers of :func:`predicted_mse` plus
    the square of the summed :func:`predicted_shift` (0 unless the ``shift`` model was calibrated).
    ``by_layer``: also each layer's variance term.

    ``plan_units`` maps unit ids (``U3``) or layer ids (``L7``) to ``(weight, activation)``
    (a tuple, ``{"weight":..,"activation":..}`` or ``"w=..,a=.."``); a full plan dict with a
    ``"units"`` key is accepted too. Layers not covered take ``default`` (``None``: contribute 0).
    """
    stats = layer_stats_from_model(model_or_stats) if isinstance(model_or_stats, ir.Model) else model_or_stats
    if "units" in plan_units and isinstance(plan_units["units"], Mapping):
        plan_units = plan_units["units"]
    units: dict[str, list[str]] = {}
    for lid, st in stats.items():
        if st.unit:
            units.setdefault(st.unit, []).append(lid)
    assign: dict[str, tuple[str, str]] = {}
    for key, v in plan_units.items():
        pair = _as_pair(v)
        for f in pair:
            get_format(f)  # raises on unknown format names
        if key in units:
            for lid in units[key]:
                assign[lid] = pair
        elif key in stats:
            assign[key] = pair
        else:
            raise OnnxAmpError(
                f"plan names {key!r}, which is neither a unit nor a layer with calibration figures "
                f"(known units: {len(units)}, layers: {len(stats)}); was the model calibrated after partitioning?"
            )
    variance, shift = 0.0, 0.0
    per = {}
    for lid, st in stats.items():
        pair = assign.get(lid, default)
        if pair is None:
            continue
        per[lid] = predicted_mse(st, *pair)
        variance += per[lid]
        shift += predicted_shift(st, *pair)
    total = combine(variance, shift)
    return (total, per) if by_layer else total


def layer_stats_from_model(model: ir.Model) -> dict[str, LayerStats]:
    """LayerStats of every calibrated layer node (annotations written by AnnotateSensitivityPass)."""
    out: dict[str, LayerStats] = {}
    for node in model.graph:
        p = node.metadata_props
        lid = p.get(A.LAYER)
        if lid is None or A.SENS_A not in p:
            continue
        st = LayerStats(
            layer=lid, node=node.name, kind=p.get(A.LAYER_KIND, "weight"), unit=p.get(A.UNIT),
            s_a=float(p[A.SENS_A]), s_w=float(p.get(A.SENS_W, "0")), s_b=float(p.get(A.SENS_B, "0")),
            gsq_a=float(p.get(A.GSQ_A, "0")), gsq_b=float(p.get(A.GSQ_B, "0")),
            gsq_w=np.asarray(json.loads(p[A.GSQ_W]), dtype=np.float64) if A.GSQ_W in p else None,
            amax_a=float(p.get(A.AMAX_A, "0")), amax_b=float(p.get(A.AMAX_B, "0")),
            amax_w=np.asarray(json.loads(p[A.AMAX_W]), dtype=np.float64) if A.AMAX_W in p else None,
            amax_y=float(p[A.AMAX_Y]) if A.AMAX_Y in p else None,
            weight_axis=int(p[A.WEIGHT_AXIS]) if A.WEIGHT_AXIS in p else None,
        )
        if A.SENS_MEASURED in p:
            st.extra = json.loads(p[A.SENS_MEASURED])
        out[lid] = st
    return out
