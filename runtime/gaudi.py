"""Gaudi export: the Intel Neural Compressor (INC) FP8 config that optimum-habana reads.

optimum-habana quantizes a model to FP8 with INC's ``fp8_quant`` algorithm, configured by a JSON
file named in the ``QUANT_CONFIG`` environment variable (its examples ship
``quantization_config/maxabs_measure.json`` and ``maxabs_quant.json``). Measurement runs first
(``mode: MEASURE``, writes amax statistics to ``dump_stats_path``), then quantization
(``mode: QUANTIZE``, reads them). Every patched module (``Linear``, ``Matmul``, ...) is quantized
unless its type is in ``blocklist.types`` or its name matches one of ``blocklist.names``; INC
matches names with ``re.search`` (``neural_compressor/torch/algorithms/fp8_quant/_core/utils.py``,
``is_re_match``), so a plain ``model.layers.1.mlp`` would also block ``model.layers.10.mlp``.
We therefore write anchored, escaped regexes: ``^model\\.layers\\.1\\.mlp\\.down_proj$``.

What goes into the blocklist: the torch modules (node annotation ``onnx_amp.module``) of every
layer whose plan assignment is not FP8 (BF16/FP16/FP32 stay in the high-precision dtype; INT8 has no
Gaudi FP8 lowering, so it is kept high too and reported). Attention's activation-activation MatMuls
carry the attention module's path; optimum-habana's Gaudi models run them through ``Matmul``
submodules (``matmul_qk``, ``matmul_av``), so the first/second act-act layer of a module maps to
``<module>.matmul_qk`` / ``<module>.matmul_av`` (``attention_matmul_names``).

Validation: tests parse the file with INC 3.10's own loaders (``FP8Config.from_json_file`` and the
``Fp8cfg.parse`` parser that ``prepare``/``convert`` use) and check its own matcher
``should_quantize`` on the module names (see ``tests/test_gaudi.py``).

Example::

    from onnx_amp.runtime.gaudi import write_gaudi_config
    info = write_gaudi_config("model.gaudi_fp8.json", "model.amp.onnx")
    # QUANT_CONFIG=model.gaudi_fp8_measure.json python run_generation.py ...  (measure)
    # QUANT_CONFIG=model.gaudi_fp8.json          python run_generation.py ...  (quantize)
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Mapping

import onnx_ir as ir

from onnx_amp.core import annotations as ann
from onnx_amp.core.errors import OnnxAmpError
from onnx_amp.core.onnx_io import load_model, save_json

FP8_FORMATS = {"fp8_e4m3": "E4M3", "fp8_e5m2": "E5M2"}
DEFAULT_ATTENTION_MATMULS = ("matmul_qk", "matmul_av")


@dataclass
class GaudiInfo:
    """What the config says, in words: which modules run FP8, which stay high, what could not map."""

    config: dict
    fp8_modules: list[str] = field(default_factory=list)
    blocked_modules: list[str] = field(default_factory=list)
    unmapped_layers: list[str] = field(default_factory=list)  # layers without a torch module path
    notes: list[str] = field(default_factory=list)


def module_regex(module: str) -> str:
    """Anchored regex matching exactly one torch module path (``layers.1`` never hits ``layers.10``)."""
    return "^" + re.escape(module) + "$"


def _layers_from_model(model: ir.Model) -> list[dict]:
    """Per layer: id, kind, module, precision (w, a) or None, in graph order."""
    summary = ann.get_json(model, ann.REGIONS, {}) or {}
    layer_meta = summary.get("layers", {}) if isinstance(summary, dict) else {}
    plan = ann.get_json(model, ann.PLAN, None)
    out = []
    for node in model.graph:
        lid = node.metadata_props.get(ann.LAYER)
        if lid is None:
            continue
        meta = layer_meta.get(lid, {})
        module = node.metadata_props.get(ann.MODULE) or meta.get("module")
        prec = node.metadata_props.get(ann.PRECISION)
        assign = ann.parse_precision(prec) if prec else None
        if assign is None and plan is not None:
            unit = node.metadata_props.get(ann.UNIT) or meta.get("unit")
            u = plan.get("units", {}).get(unit)
            if u is not None:
                assign = (u["weight"], u["activation"])
        out.append({
            "id": lid,
            "kind": node.metadata_props.get(ann.LAYER_KIND) or meta.get("kind", "weight"),
            "module": module or None,
            "assign": assign,
        })
    return out


def _layers_from_plan(plan: Mapping, regions: Mapping) -> list[dict]:
    out = []
    for lid, meta in regions.get("layers", {}).items():
        u = plan.get("units", {}).get(meta.get("unit"))
        out.append({
            "id": lid,
            "kind": meta.get("kind", "weight"),
            "module": meta.get("module") or None,
            "assign": (u["weight"], u["activation"]) if u else None,
        })
    out.sort(key=lambda d: int(d["id"][1:]) if d["id"][1:].isdigit() else 0)
    return out


def _gaudi_layers(model_or_plan, regions) -> list[dict]:
    if isinstance(model_or_plan, ir.Model):
        layers = _layers_from_model(model_or_plan)
    elif isinstance(model_or_plan, (str, os.PathLike)):
        layers = _layers_from_model(load_model(model_or_plan))
    elif isinstance(model_or_plan, Mapping):
        if regions is None:
            raise OnnxAmpError("gaudi config: a plan dict needs the regions summary (onnx_amp.regions) too")
        layers = _layers_from_plan(model_or_plan, regions)
    else:
        raise OnnxAmpError(f"gaudi config: expected an ir.Model, ONNX path or plan dict, "
                           f"got {type(model_or_plan).__name__}")
    if not layers:
        raise OnnxAmpError("gaudi config: the model has no annotated layers; run the partition pass first")
    return layers


def _module_status(layers: list[dict], attention_matmul_names: tuple[str, ...]):
    """Per torch module (in order): whether every one of its layers is FP8; the FP8 kinds used;
    layers without a module path; layers planned in INT8 (Gaudi has no INT8 lowering)."""
    status: dict[str, bool] = {}
    order: list[str] = []
    fp8_kinds: set[str] = set()
    unmapped: list[str] = []
    act_seen: dict[str, int] = defaultdict(int)
    int8_layers: list[str] = []
    for lay in layers:
        module = lay["module"]
        if not module:
            unmapped.append(lay["id"])
            continue
        if lay["kind"] == "act_act":
            k = act_seen[module]
            act_seen[module] += 1
            if k < len(attention_matmul_names):
                module = f"{module}.{attention_matmul_names[k]}"
        w, a = lay["assign"] or ("bf16", "bf16")
        is_fp8 = (w in FP8_FORMATS or lay["kind"] == "act_act") and a in FP8_FORMATS
        if is_fp8:
            fp8_kinds.update({f for f in (w, a) if f in FP8_FORMATS})
        elif "int8" in (w, a):
            int8_layers.append(lay["id"])
        if module not in status:
            order.append(module)
            status[module] = is_fp8
        else:
            status[module] = status[module] and is_fp8  # any high layer keeps the module high
    return order, status, fp8_kinds, unmapped, int8_layers


def build_gaudi_config(
    model_or_plan: ir.Model | str | os.PathLike | Mapping,
    regions: Mapping | None = None,
    *,
    mode: str = "QUANTIZE",
    dump_stats_path: str = "./hqt_output/measure",
    fp8_config: str | None = None,
    hp_dtype: str = "bf16",
    scale_method: str = "maxabs_hw",
    observer: str = "maxabs",
    allowlist_types: list[str] | None = None,
    blocklist_types: list[str] | None = None,
    attention_matmul_names: tuple[str, ...] = DEFAULT_ATTENTION_MATMULS,
) -> GaudiInfo:
    """Build the INC FP8 config and say what it decided.

    ``model_or_plan``: an annotated ``ir.Model`` (layers carry ``onnx_amp.module`` and
    ``onnx_amp.precision``, or the model carries ``onnx_amp.plan``), a path to such an ONNX file,
    or a plan dict (``plan.json`` schema) together with ``regions`` (the ``onnx_amp.regions`` JSON,
    whose ``layers`` entries carry ``module`` and ``unit``). Layers without an assignment are
    kept high precision (the plan's rule: units not listed stay at the target's high default).
    """
    if mode not in ("QUANTIZE", "MEASURE"):
        raise OnnxAmpError(f"gaudi config: mode must be QUANTIZE or MEASURE, not {mode!r}")
    layers = _gaudi_layers(model_or_plan, regions)
    order, status, fp8_kinds, unmapped, int8_layers = _module_status(layers, attention_matmul_names)
    notes: list[str] = []
    if int8_layers:
        notes.append(f"{len(int8_layers)} layer(s) planned in int8 ({', '.join(int8_layers[:6])}"
                     f"{' ...' if len(int8_layers) > 6 else ''}): Gaudi FP8 has no int8 lowering; kept in {hp_dtype}")
    if unmapped:
        notes.append(
            f"{len(unmapped)} layer(s) have no torch module path (ONNX-only model?): "
            f"{', '.join(unmapped[:8])}{' ...' if len(unmapped) > 8 else ''}; INC cannot address them"
        )
    if fp8_config is None:
        fp8_config = "E5M2" if fp8_kinds == {"fp8_e5m2"} else "E4M3"
        if len(fp8_kinds) > 1:
            notes.append("plan mixes E4M3 and E5M2; INC uses one FP8 type per model: E4M3 written")
    fp8_config = fp8_config.upper()
    if fp8_config not in ("E4M3", "E5M2"):
        raise OnnxAmpError(f"gaudi config: fp8_config must be E4M3 or E5M2, not {fp8_config!r}")

    blocked = [m for m in order if not status[m]]
    fp8 = [m for m in order if status[m]]
    config = {
        "method": "HOOKS",
        "mode": mode,
        "observer": observer,
        "scale_method": scale_method,
        "fp8_config": fp8_config,
        "hp_dtype": hp_dtype,
        "allowlist": {"types": list(allowlist_types or []), "names": []},
        "blocklist": {"types": list(blocklist_types or []), "names": [module_regex(m) for m in blocked]},
        "dump_stats_path": dump_stats_path,
    }
    return GaudiInfo(config=config, fp8_modules=fp8, blocked_modules=blocked, unmapped_layers=unmapped, notes=notes)


def gaudi_config(model_or_plan, regions: Mapping | None = None, **kwargs: Any) -> dict:
    """The INC FP8 config dict (see ``build_gaudi_config`` for the arguments)."""
    return build_gaudi_config(model_or_plan, regions, **kwargs).config


def write_gaudi_config(
    path: str | os.PathLike,
    model_or_plan,
    regions: Mapping | None = None,
    *,
    measure_path: str | os.PathLike | None = None,
    **kwargs: Any,
) -> GaudiInfo:
    """Atomically write the QUANTIZE config to ``path`` (and, if given, the matching MEASURE config
    to ``measure_path``: same lists, ``mode: MEASURE``, run first on Gaudi to collect amax)."""
    kwargs.pop("mode", None)
    info = build_gaudi_config(model_or_plan, regions, mode="QUANTIZE", **kwargs)
    save_json(path, info.config, indent=2)
    if measure_path is not None:
        save_json(measure_path, dict(info.config, mode="MEASURE"), indent=2)
    return info
