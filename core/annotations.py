"""The annotation contract: the only hand-off between onnx-amp stages.

Every stage reads and writes these ``metadata_props`` keys (strings, Netron shows them), so any
stage can be re-run from a saved ONNX file. Floats are written with ``repr`` so they round-trip
exactly; structured values are compact JSON.

Node keys
---------
``onnx_amp.module``       torch module path the node came from (from ``pkg.torch.onnx.name_scopes``)
``onnx_amp.region``       region id, e.g. ``r7`` (every node of the main graph)
``onnx_amp.layer``        layer id, e.g. ``L12`` (quantizable nodes only)
``onnx_amp.layer_kind``   ``weight`` (input 1 is a constant weight) or ``act_act`` (two activations)
``onnx_amp.weight_input`` index of the weight input of a ``weight`` layer (usually 1)
``onnx_amp.weight_axis``  output-channel axis of that weight (MatMul W[K,N]: 1, Gemm transB=1: 0, Conv: 0)
``onnx_amp.unit``         unit id, e.g. ``U5``: layers that must share an assignment
``onnx_amp.sens.a`` / ``.w`` / ``.b``   Taylor sensitivities S_A (input 0), S_W (weight), S_B
                          (input 1 of an act_act layer): mean_n || x (.) dL_n/dx ||^2
``onnx_amp.sens.gsq_a`` / ``gsq_b``     mean_n || dL_n/dx ||^2 (per-tensor, for INT8)
``onnx_amp.sens.gsq_w``   JSON list, per weight output channel: mean_n || dL_n/dW_c ||^2
``onnx_amp.amax.a`` / ``amax.b``        calibration max |x| of the activation operand(s)
``onnx_amp.amax.w``       JSON list, per weight output channel max |W_c|
``onnx_amp.amax.y``       calibration max |Y| of the layer output (INT8 output QuantizeLinear)
``onnx_amp.sens.measured`` JSON {"a"|"w"|"b": {format: predicted loss MSE term}} from the measured
                          rounding error of each operand (optional "actual error" loss model)
``onnx_amp.precision``    the plan's assignment of the layer, e.g. ``w=fp8_e4m3,a=fp8_e4m3``
``onnx_amp.inserted_by``  on nodes the rewrite inserted (``rewrite``): never mistaken for layers
``onnx_amp.inserted_for`` the layer id such a node was inserted for

Model keys
----------
``onnx_amp.regions``      JSON summary of the partition (see ``passes.partition``)
``onnx_amp.calibration``  JSON: samples, loss, unmatched layers, ...
``onnx_amp.gains``        JSON gain tables per region configuration (see ``passes.gains``)
``onnx_amp.plan``         JSON plan (same schema as ``plan.json``)
``onnx_amp.target``       JSON: the target the gains and the plan are for (its whole description,
                          so a custom target file travels with the model)
``onnx_amp.rewrite``      JSON: the rewrite's form and notes (a rewritten model is never rewritten again)
"""

from __future__ import annotations

import json
from typing import Any

import onnx_ir as ir

PREFIX = "onnx_amp."

# node keys
MODULE = "onnx_amp.module"
REGION = "onnx_amp.region"
LAYER = "onnx_amp.layer"
LAYER_KIND = "onnx_amp.layer_kind"
UNIT = "onnx_amp.unit"
WEIGHT_INPUT = "onnx_amp.weight_input"
WEIGHT_AXIS = "onnx_amp.weight_axis"
SENS_A = "onnx_amp.sens.a"
SENS_W = "onnx_amp.sens.w"
SENS_B = "onnx_amp.sens.b"
GSQ_A = "onnx_amp.sens.gsq_a"
GSQ_W = "onnx_amp.sens.gsq_w"
GSQ_B = "onnx_amp.sens.gsq_b"
AMAX_A = "onnx_amp.amax.a"
AMAX_W = "onnx_amp.amax.w"
AMAX_B = "onnx_amp.amax.b"
AMAX_Y = "onnx_amp.amax.y"
SENS_MEASURED = "onnx_amp.sens.measured"
PRECISION = "onnx_amp.precision"
INSERTED_BY = "onnx_amp.inserted_by"
INSERTED_FOR = "onnx_amp.inserted_for"

# model keys
REGIONS = "onnx_amp.regions"
CALIBRATION = "onnx_amp.calibration"
GAINS = "onnx_amp.gains"
PLAN = "onnx_amp.plan"
TARGET = "onnx_amp.target"
REWRITE = "onnx_amp.rewrite"

# the torch exporter's own keys
TORCH_NAME_SCOPES = "pkg.torch.onnx.name_scopes"
TORCH_CLASS_HIERARCHY = "pkg.torch.onnx.class_hierarchy"


def _props(obj: ir.Node | ir.Model | ir.Graph) -> dict[str, str]:
    return obj.metadata_props


def set_str(obj, key: str, value: str) -> None:
    _props(obj)[key] = str(value)


def get_str(obj, key: str, default: str | None = None) -> str | None:
    return _props(obj).get(key, default)


def set_float(obj, key: str, value: float) -> None:
    _props(obj)[key] = repr(float(value))


def get_float(obj, key: str, default: float | None = None) -> float | None:
    v = _props(obj).get(key)
    return default if v is None else float(v)


def set_json(obj, key: str, value: Any) -> None:
    _props(obj)[key] = json.dumps(value, separators=(",", ":"), sort_keys=False)


def get_json(obj, key: str, default: Any = None) -> Any:
    v = _props(obj).get(key)
    return default if v is None else json.loads(v)


def format_precision(weight: str, activation: str) -> str:
    return f"w={weight},a={activation}"


def parse_precision(text: str) -> tuple[str, str]:
    parts = dict(p.split("=", 1) for p in text.split(","))
    return parts["w"], parts["a"]


def layer_nodes(graph: ir.Graph) -> list[ir.Node]:
    """Layer nodes (annotated by the partition pass), in graph order."""
    return [n for n in graph if LAYER in n.metadata_props]
