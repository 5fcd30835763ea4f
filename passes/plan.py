"""Plans: per-unit (weight format, activation format) assignments, as JSON files and annotations.

``plan.json`` (and the model key ``onnx_amp.plan``)::

    {"version": 1, "target": "gaudi2", "strategy": "ip", "tau": 1e-3,
     "units": {"U2": {"weight": "fp8_e4m3", "activation": "fp8_e4m3"}, "L7": {...}},
     "predicted_mse": ..., "predicted_gain": {...}, ...any extra keys...}

Keys of ``units`` are unit ids (``U..``) or, to override one layer of a unit, layer ids (``L..``);
a layer entry wins over its unit's. Units not listed stay at the target's high-precision default
(fp32 when the plan names no known target).

- ``validate_plan(model, plan, target=None)`` raises ``OnnxAmpError`` naming unknown unit/layer ids,
  unknown formats, and assignments the target lacks.
- ``uniform_plan(model, weight_fmt, act_fmt, nodes_to_exclude=(), op_types_to_quantize=None)`` is the
  ORT-quantization-style plan (``nodes_to_exclude``: node names kept high precision;
  ``op_types_to_quantize``: op types lowered, e.g. ``["MatMul"]``).
- ``ApplyPlanPass(plan)`` writes ``onnx_amp.precision`` on every layer node and ``onnx_amp.plan`` on
  the model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import onnx_ir as ir

from onnx_amp.core import annotations as A
from onnx_amp.core.formats import FORMATS, get_format
from onnx_amp.core.targets import load_target, resolve_target, target_from_dict, target_of_model
from onnx_amp.passes.base import AmpPassResult, AnnotationPass, require_layers
from onnx_amp.core.errors import OnnxAmpError
from onnx_amp.core.onnx_io import save_json

PLAN_VERSION = 1
_KNOWN_KEYS = ("version", "target", "strategy", "tau", "units", "predicted_mse", "predicted_gain")


def _canon(name: str) -> str:
    return get_format(name).name


@dataclass
class Plan:
    version: int = PLAN_VERSION
    target: str | None = None
    strategy: str | None = None
    tau: float | None = None
    units: dict[str, tuple[str, str]] = field(default_factory=dict)
    predicted_mse: float | None = None
    predicted_gain: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    # ---- JSON ---------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "version": self.version,
            "target": self.target,
            "strategy": self.strategy,
            "tau": self.tau,
            "units": {u: {"weight": w, "activation": a} for u, (w, a) in self.units.items()},
            "predicted_mse": self.predicted_mse,
            "predicted_gain": self.predicted_gain,
        }
        for k, v in self.extra.items():
            if k not in d:
                d[k] = v
        return d

    @classmethod
    def from_json(cls, d: Any, source: str = "plan") -> "Plan":
        if isinstance(d, str):
            try:
                d = json.loads(d)
            except json.JSONDecodeError as e:
                raise OnnxAmpError(f"{source}: not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise OnnxAmpError(f"{source}: a plan is a JSON object with a 'units' mapping")
        version = d.get("version", PLAN_VERSION)
        if version != PLAN_VERSION:
            raise OnnxAmpError(f"{source}: plan version {version!r} not supported (expected {PLAN_VERSION})")
        raw_units = d.get("units")
        if not isinstance(raw_units, dict):
            raise OnnxAmpError(f"{source}: 'units' must be an object mapping unit ids to formats")
        units: dict[str, tuple[str, str]] = {}
        for uid, spec in raw_units.items():
            if isinstance(spec, dict):
                w, a = spec.get("weight"), spec.get("activation")
                if a is None and w is not None:
                    a = w
                if w is None and a is not None:
                    w = a
            elif isinstance(spec, (list, tuple)) and len(spec) == 2:
                w, a = spec
            elif isinstance(spec, str):
                w = a = spec
            else:
                raise OnnxAmpError(
                    f"{source}: unit {uid!r}: expected {{\"weight\": fmt, \"activation\": fmt}}, got {spec!r}"
                )
            if not isinstance(w, str) or not isinstance(a, str):
                raise OnnxAmpError(f"{source}: unit {uid!r}: formats must be strings, got {spec!r}")
            units[str(uid)] = (w, a)
        extra = {k: v for k, v in d.items() if k not in _KNOWN_KEYS}
        return cls(
            version=version,
            target=d.get("target"),
            strategy=d.get("strategy"),
            tau=d.get("tau"),
            units=units,
            predicted_mse=d.get("predicted_mse"),
            predicted_gain=d.get("predicted_gain"),
            extra=extra,
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plan":
        p = Path(path)
        if not p.is_file():
            raise OnnxAmpError(f"{p}: no such plan file")
        try:
            text = p.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise OnnxAmpError(f"{p}: cannot read plan ({e})") from None
        return cls.from_json(text, source=str(p))

    def save(self, path: str | os.PathLike) -> Path:
        """Atomic write (temporary file in the same folder, then rename)."""
        return save_json(path, self.to_json())

    def canonical(self) -> "Plan":
        """Same plan with format aliases resolved (raises ValueError on unknown names)."""
        units = {u: (_canon(w), _canon(a)) for u, (w, a) in self.units.items()}
        return Plan(self.version, self.target, self.strategy, self.tau, units, self.predicted_mse,
                    self.predicted_gain, dict(self.extra))


# ---- targets ------------------------------------------------------------------------------

@dataclass
class TargetInfo:
    name: str
    formats: frozenset[str]
    high: tuple[str, str]
    assignments: frozenset[tuple[str, str]] | None = None  # None: any (w, a) over ``formats``

    def allows(self, w: str, a: str) -> bool:
        if self.assignments is not None:
            return (w, a) in self.assignments
        return w in self.formats and a in self.formats


def _get(obj, key, default=None):
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _pair(x) -> tuple[str, str]:
    if isinstance(x, str):
        return _canon(x), _canon(x)
    if isinstance(x, dict):
        return _canon(x["weight"]), _canon(x["activation"])
    w, a = x
    return _canon(w), _canon(a)


def target_info(target) -> TargetInfo | None:
    """Normalize a target (name, path, target dict, ``core.targets.Target``) to ``TargetInfo``."""
    if target is None:
        return None
    if isinstance(target, TargetInfo):
        return target
    obj = target
    if isinstance(target, str):
        obj = load_target(target)  # a built-in name or a .json path; raises OnnxAmpError naming the known targets
    elif isinstance(target, dict) and "peak_flops" in target:
        obj = target_from_dict(target, f"target {target.get('name', '?')}")
    name = _get(obj, "name", str(target))
    fmts = _get(obj, "formats")
    if isinstance(fmts, dict):
        fmts = list(fmts)
    formats = frozenset(_canon(f) for f in (fmts or FORMATS))
    assigns = _get(obj, "assignments")
    assignments = None
    if assigns:
        assignments = frozenset(_pair(x) for x in assigns)
        formats = formats | {f for p in assignments for f in p}
    high = _get(obj, "high") or _get(obj, "high_precision") or ("fp32", "fp32")
    return TargetInfo(name=name, formats=formats, high=_pair(high), assignments=assignments)


# ---- model structure ----------------------------------------------------------------------

@dataclass
class LayerInfo:
    layer: str
    unit: str
    kind: str
    node: ir.Node


def model_layers(model: ir.Model) -> dict[str, LayerInfo]:
    """Layer id -> info, from the partition annotations (``onnx_amp.layer``/``unit``/``layer_kind``)."""
    out: dict[str, LayerInfo] = {}
    for node in model.graph.all_nodes():
        props = node.metadata_props
        lid = props.get(A.LAYER)
        if lid is None or props.get("onnx_amp.inserted_by"):
            continue
        unit = props.get(A.UNIT) or lid
        out[lid] = LayerInfo(lid, unit, props.get(A.LAYER_KIND, "weight"), node)
    return out


def _require_partition(model: ir.Model, what: str) -> dict[str, LayerInfo]:
    layers = model_layers(model)
    if not layers:
        raise OnnxAmpError(
            f"{what}: the model has no onnx_amp.layer annotations; run onnx-amp partition first"
        )
    return layers


def validate_plan(model: ir.Model, plan: Plan, target=None) -> Plan:
    """Check ids, formats and the target's assignments; return the plan with canonical formats."""
    layers = _require_partition(model, "plan")
    units = {li.unit for li in layers.values()}
    unknown_ids = [u for u in plan.units if u not in units and u not in layers]
    if unknown_ids:
        raise OnnxAmpError(
            f"plan names unknown unit/layer ids {', '.join(sorted(unknown_ids))} "
            f"(the model has units {_span(units)}); was the plan made for this partitioned model?"
        )
    bad_fmts = sorted({f for w, a in plan.units.values() for f in (w, a) if _try_canon(f) is None})
    if bad_fmts:
        raise OnnxAmpError(
            f"plan uses unknown formats {', '.join(map(repr, bad_fmts))}; known formats: {', '.join(FORMATS)}"
        )
    plan = plan.canonical()
    tgt = _target_for(model, target if target is not None else plan.target)
    if tgt is not None:
        act_act_units = {li.unit for li in layers.values() if li.kind == "act_act"}
        lacking = []
        for uid, (w, a) in plan.units.items():
            only_act = uid in act_act_units and all(
                li.kind == "act_act" for li in layers.values() if li.unit == uid
            ) or (uid in layers and layers[uid].kind == "act_act")
            ok = (a in tgt.formats) if only_act else tgt.allows(w, a)
            if not ok:
                lacking.append(f"{uid}=(w={w},a={a})")
        if lacking:
            allowed = (
                ", ".join(f"({w},{a})" for w, a in sorted(tgt.assignments)) if tgt.assignments
                else ", ".join(sorted(tgt.formats))
            )
            raise OnnxAmpError(
                f"target {tgt.name} lacks the assignments {', '.join(lacking[:8])}"
                f"{' ...' if len(lacking) > 8 else ''}; it supports {allowed}"
            )
    return plan


def _target_for(model: ir.Model, target) -> TargetInfo | None:
    """The target of a plan on this model: given, or named by the plan; a name the model's own
    ``onnx_amp.target`` has is that one (custom target files travel with the model)."""
    if isinstance(target, TargetInfo):
        return target
    if target is None and target_of_model(model) is None:
        return None
    return target_info(resolve_target(target, model))


def _try_canon(f: str) -> str | None:
    try:
        return _canon(f)
    except ValueError:
        return None


def _span(ids: Iterable[str]) -> str:
    ids = sorted(ids, key=lambda s: (len(s), s))
    if len(ids) <= 6:
        return ", ".join(ids)
    return f"{ids[0]}..{ids[-1]} ({len(ids)} in all)"


def layer_assignments(model: ir.Model, plan: Plan, high: tuple[str, str] | None = None) -> dict[str, tuple[str, str]]:
    """Layer id -> (w, a) after unit defaults and layer overrides."""
    layers = model_layers(model)
    if high is None:
        tgt = None
        try:
            tgt = target_info(plan.target)
        except OnnxAmpError:
            tgt = None
        high = tgt.high if tgt is not None else ("fp32", "fp32")
    out = {}
    for lid, li in layers.items():
        if lid in plan.units:
            w, a = plan.units[lid]
        elif li.unit in plan.units:
            w, a = plan.units[li.unit]
        else:
            w, a = high
        w, a = _canon(w), _canon(a)
        if li.kind == "act_act":
            w = a  # the weight slot of an act_act layer is ignored / equal
        out[lid] = (w, a)
    return out


def uniform_plan(
    model: ir.Model,
    weight_fmt: str,
    act_fmt: str | None = None,
    nodes_to_exclude: Iterable[str] = (),
    op_types_to_quantize: Iterable[str] | None = None,
    target: str | None = None,
    include_act_act: bool = True,
) -> Plan:
    """Every layer in ``weight_fmt``/``act_fmt`` except ``nodes_to_exclude`` (node names) and op
    types outside ``op_types_to_quantize`` (ORT quantization's parameters).

    A unit whose layers are all selected is listed by unit id; in a unit only partly selected
    (some of its nodes excluded), the selected layers are listed one by one.
    """
    act_fmt = act_fmt or weight_fmt
    for f in (weight_fmt, act_fmt):
        if _try_canon(f) is None:
            raise OnnxAmpError(f"unknown format {f!r}; known formats: {', '.join(FORMATS)}")
    w, a = _canon(weight_fmt), _canon(act_fmt)
    layers = _require_partition(model, "uniform plan")
    excl = set(nodes_to_exclude or ())
    all_names = {n.name for n in model.graph.all_nodes()}
    missing = sorted(excl - all_names)
    if missing:
        raise OnnxAmpError(f"nodes_to_exclude names nodes not in the model: {', '.join(missing[:8])}")
    ops = None if op_types_to_quantize is None else {str(o) for o in op_types_to_quantize}
    selected: dict[str, bool] = {}
    for lid, li in layers.items():
        sel = li.node.name not in excl and (ops is None or li.node.op_type in ops)
        if li.kind == "act_act" and not include_act_act:
            sel = False
        selected[lid] = sel
    by_unit: dict[str, list[str]] = {}
    for lid, li in layers.items():
        by_unit.setdefault(li.unit, []).append(lid)
    units: dict[str, tuple[str, str]] = {}
    for uid, lids in by_unit.items():
        if all(selected[l] for l in lids):
            units[uid] = (w, a)
        else:
            for l in lids:
                if selected[l]:
                    units[l] = (w, a)
    return Plan(
        target=target,
        strategy="uniform",
        units=units,
        extra={"nodes_to_exclude": sorted(excl), "op_types_to_quantize": sorted(ops) if ops else None},
    )


@dataclass
class PlanResult(AmpPassResult):
    plan: Plan | None = None  # the plan as applied (canonical format names)


class ApplyPlanPass(AnnotationPass):
    """Write ``onnx_amp.precision`` on every layer node and the plan JSON on the model. Returns a
    :class:`PlanResult`."""

    result_type = PlanResult

    def __init__(self, plan: Plan, target=None, validate: bool = True):
        super().__init__()
        self.plan = plan
        self.target = target
        self.validate = validate

    def requires(self, model: ir.Model) -> None:
        require_layers(model, "ApplyPlanPass")

    def annotate(self, model: ir.Model) -> dict:
        plan = validate_plan(model, self.plan, self.target) if self.validate else self.plan.canonical()
        tgt = _target_for(model, self.target if self.target is not None else plan.target)
        high = tgt.high if tgt is not None else ("fp32", "fp32")
        assigns = layer_assignments(model, plan, high)
        layers = model_layers(model)
        for lid, (w, a) in assigns.items():
            layers[lid].node.metadata_props[A.PRECISION] = A.format_precision(w, a)
        d = plan.to_json()
        d["high"] = list(high)
        A.set_json(model, A.PLAN, d)
        return {"plan": plan}
