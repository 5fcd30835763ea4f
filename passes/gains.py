"""Gains per region configuration: theoretical (roofline), measured (from ``runtime.profile``), memory.

A region **configuration** assigns one of the target's allowed (weight, activation) format pairs to
each unit of the region; configuration 0 is all-high (gain 0). With ``A`` allowed assignments and
``U`` units a region has ``A**U`` configurations. Above ``max_configs`` (default 64) the set is
**capped**: config 0, every single unit lowered alone (to each low assignment), and the cumulative
prefixes (units 0..k lowered together, in graph order). If that is still too many, consecutive units
are tied into groups (a group is lowered together) and the same singles + prefixes are taken over
groups. The table records ``"capped": true`` and the method.

Theoretical time (TT) of a node on a target: ``max(FLOPs / peak(fmt), bytes(fmt) / bandwidth)``

- FLOPs of MatMul / Gemm / Conv / ConvTranspose from static shapes (the model's own, or shape
  inference after fixing symbolic input dims to ``batch_size`` (axis 0) and ``seq_len`` (others));
  the compute format is the wider of the layer's two operand formats;
- bytes: each operand at its format (weights at the weight format, activations at the activation
  format), everything else (outputs, bias, elementwise ops) at the target's high activation format;
  shape-only ops (Shape, Reshape, Squeeze, ...) cost nothing;
- plus, per distinct activation value read in a format other than the high activation format, a
  boundary (a Q or Cast): ``per_node_s + elements * per_element_s`` (q/k/v reading one activation
  pay once). Weights are converted offline (free).

Memory gain (MG) of a configuration: for every lowered weight layer,
``elements(W) * (bytes(high_w) - bytes(fmt_w))`` minus ``4 * channels`` (an fp32 scale per output
channel) when the format is lowered with Q/DQ.

``GainsPass(target, measured=None)`` writes the model key ``onnx_amp.gains`` (schema in the brief);
``read_gains(model)`` reads it back. ``time_gain_s`` is the measured gain where ``measured`` has it,
else the roofline gain; ``tt_gain_s`` is always the roofline gain.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import onnx_ir as ir

from onnx_amp.core.ops import FREE_OPS, LAYER_OPS
from onnx_amp.core import annotations as ann
from onnx_amp.core.formats import get_format
from onnx_amp.core.errors import OnnxAmpError
from onnx_amp.core.targets import Target, load_target
from onnx_amp.passes.base import AmpPassResult, AnnotationPass, require_model_key

logger = logging.getLogger(__name__)

MAX_CONFIGS = 64

Assignment = tuple[str, str]
Config = dict[str, Assignment]


# ---------------------------------------------------------------------------------------------
# configurations
# ---------------------------------------------------------------------------------------------

def region_configs(units: Sequence[str], target: Target, max_configs: int = MAX_CONFIGS
                   ) -> tuple[list[Config], bool, str | None]:
    """Configurations of a region's units: ``(configs, capped, method)``; configs[0] is all-high."""
    high = target.high
    lows = target.low_assignments
    units = list(units)
    n_full = len(target.assignments) ** len(units)
    if n_full <= max_configs:
        configs = []
        order = [high] + lows
        for combo in itertools.product(order, repeat=len(units)):
            configs.append(dict(zip(units, combo)))
        return configs, False, None

    def singles_prefixes(groups: list[list[str]]) -> list[Config]:
        out: list[Config] = [{u: high for u in units}]
        seen = {tuple(out[0].values())}

        def add(c):
            key = tuple(c[u] for u in units)
            if key not in seen:
                seen.add(key)
                out.append(c)

        for low in lows:
            for g in groups:
                c = {u: high for u in units}
                c.update({u: low for u in g})
                add(c)
            for k in range(2, len(groups) + 1):
                c = {u: high for u in units}
                for g in groups[:k]:
                    c.update({u: low for u in g})
                add(c)
        return out

    groups = [[u] for u in units]
    configs = singles_prefixes(groups)
    if len(configs) <= max_configs:
        return configs, True, (f"singles+prefixes: all-high, each unit lowered alone, cumulative prefixes in graph order "
                               f"({len(units)} units, {n_full} full configs)")
    # tie consecutive units into G groups so that 1 + |lows| * (2G - 1) <= max_configs
    g_count = max(1, (max_configs - 1) // max(1, len(lows)) // 2)
    size = math.ceil(len(units) / g_count)
    groups = [units[i:i + size] for i in range(0, len(units), size)]
    configs = singles_prefixes(groups)[:max_configs]
    return configs, True, (
        f"tied+singles+prefixes: {len(units)} units tied into {len(groups)} groups of <= {size} consecutive units, "
        f"then each group alone and cumulative prefixes ({n_full} full configs)"
    )


# ---------------------------------------------------------------------------------------------
# static shapes
# ---------------------------------------------------------------------------------------------

def _static(shape, symbols: dict[str, int] | None = None) -> tuple[int, ...] | None:
    """Static dims of a shape; symbolic dims are looked up (or evaluated, e.g. ``seq + 1``) in
    ``symbols``."""
    if shape is None:
        return None
    dims = []
    for d in shape:
        if isinstance(d, int):
            dims.append(d)
            continue
        v = getattr(d, "value", None)
        if isinstance(v, int):
            dims.append(v)
        elif isinstance(v, str) and symbols:
            if v in symbols:
                dims.append(symbols[v])
            elif re.fullmatch(r"[\w\s+\-*/()]+", v):
                try:
                    dims.append(int(eval(v, {"__builtins__": {}}, dict(symbols))))  # noqa: S307 (names + arithmetic only)
                except Exception:
                    return None
            else:
                return None
        else:
            return None
    return tuple(dims)


def static_shapes(model: ir.Model, batch_size: int = 1, seq_len: int = 128) -> dict[str, tuple[int, ...]]:
    """Static shape of every value (by name) with symbolic input dims fixed: axis 0 -> batch_size,
    other symbolic axes -> seq_len. The model is left unchanged."""
    import onnx
    from onnx_ir.passes.common import _c_api_utils

    graph = model.graph
    saved = [(v, v.shape) for v in graph.inputs]
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        for v in graph.inputs:
            if v.shape is None or v.const_value is not None:
                continue
            dims = []
            for i, d in enumerate(v.shape):
                if isinstance(d, int):
                    dims.append(d)
                else:
                    dims.append(batch_size if i == 0 else seq_len)
            v.shape = ir.Shape(dims)
        try:
            proto = _c_api_utils.call_onnx_api(
                lambda p: onnx.shape_inference.infer_shapes(p, check_type=False, strict_mode=False, data_prop=True),
                model,
            )
            for vi in list(proto.graph.value_info) + list(proto.graph.input) + list(proto.graph.output):
                tt = vi.type.tensor_type
                if not tt.HasField("shape"):
                    continue
                dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
                if all(isinstance(d, int) for d in dims):
                    shapes[vi.name] = tuple(dims)
        except Exception as e:  # keep going with what the model itself says
            logger.warning("shape inference failed (%s); using the model's own shapes", e)
    finally:
        for v, s in saved:
            v.shape = s
    # symbols of the graph inputs (batch, seq, s0 ...) -> the given sizes, for values inference missed
    symbols: dict[str, int] = {}
    for v in graph.inputs:
        for i, d in enumerate(v.shape or []):
            if not isinstance(d, int) and getattr(d, "value", None) is not None:
                symbols.setdefault(str(d.value), batch_size if i == 0 else seq_len)
    for v in _all_values(graph):
        if v.name and v.name not in shapes:
            s = _static(v.shape, symbols)
            if s is None and v.const_value is not None:
                s = tuple(v.const_value.shape)
            if s is not None:
                shapes[v.name] = s
    return shapes


def _all_values(graph: ir.Graph) -> Iterable[ir.Value]:
    yield from graph.inputs
    yield from graph.initializers.values()
    for node in graph:
        yield from node.outputs


def _const_shape(v: ir.Value | None) -> tuple[int, ...] | None:
    if v is None:
        return None
    if v.const_value is not None:
        return tuple(v.const_value.shape)
    p = v.producer()
    if p is not None and p.op_type == "Constant" and "value" in p.attributes:
        return tuple(p.attributes["value"].as_tensor().shape)
    return None


# ---------------------------------------------------------------------------------------------
# roofline
# ---------------------------------------------------------------------------------------------

def _numel(shape) -> int:
    return int(np.prod(shape)) if shape is not None else 0


def layer_flops(node: ir.Node, shapes: dict[str, tuple[int, ...]]) -> float | None:
    """Dense FLOPs (2 per multiply-add) of a MatMul/Gemm/Conv/ConvTranspose from static shapes."""
    def sh(i):
        v = node.inputs[i] if i < len(node.inputs) else None
        if v is None:
            return None
        return shapes.get(v.name) or _const_shape(v)

    out = shapes.get(node.outputs[0].name)
    op = node.op_type
    if op == "MatMul":
        a = sh(0)
        if a is None or out is None:
            return None
        return 2.0 * _numel(out) * a[-1]
    if op == "Gemm":
        a = sh(0)
        if a is None or out is None:
            return None
        trans_a = node.attributes.get_int("transA", 0)
        k = a[0] if trans_a else a[1]
        return 2.0 * _numel(out) * k
    if op == "Conv":
        w = sh(1)
        if w is None or out is None:
            return None
        return 2.0 * _numel(out) * _numel(w[1:])
    if op == "ConvTranspose":
        x, w = sh(0), sh(1)
        if x is None or w is None:
            return None
        return 2.0 * _numel(x) * _numel(w[1:])
    return None


@dataclass
class NodeCost:
    """Pre-computed per-node quantities for the roofline."""
    name: str
    op: str
    layer: str | None = None
    unit: str | None = None
    kind: str | None = None
    flops: float = 0.0
    weight_input: int | None = None
    weight_elems: int = 0
    weight_channels: int = 0
    act_elems: list[int] = field(default_factory=list)  # activation operand element counts
    act_names: list[str] = field(default_factory=list)  # activation operand value names
    other_elems: int = 0  # bias + outputs (high act format)
    plain_bytes: float = 0.0  # non-layer nodes: bytes at the high format


def _dtype_bytes(v: ir.Value, high_bytes: float) -> float:
    dt = v.dtype
    if dt is None or dt.is_floating_point():
        return high_bytes
    return dt.itemsize


def node_costs(model: ir.Model, shapes: dict[str, tuple[int, ...]], target: Target) -> dict[str, NodeCost]:
    high_a = get_format(target.high[1]).bytes
    costs: dict[str, NodeCost] = {}
    for node in model.graph:
        c = NodeCost(node.name or "", node.op_type)
        layer = ann.get_str(node, ann.LAYER)
        if layer is not None and node.op_type in LAYER_OPS:
            c.layer, c.unit = layer, ann.get_str(node, ann.UNIT)
            c.kind = ann.get_str(node, ann.LAYER_KIND, "weight")
            c.flops = layer_flops(node, shapes) or 0.0
            if c.flops == 0.0:
                logger.warning("layer %s (%s): no static shapes, FLOPs counted as 0", layer, node.name)
            wi = None
            if c.kind == "weight":
                wi = int(ann.get_str(node, ann.WEIGHT_INPUT, "1"))
                wshape = _const_shape(node.inputs[wi]) or shapes.get(node.inputs[wi].name)
                c.weight_input, c.weight_elems = wi, _numel(wshape)
                axis = int(ann.get_str(node, ann.WEIGHT_AXIS, "0" if node.op_type != "MatMul" else "-1"))
                c.weight_channels = wshape[axis] if wshape else 0
            data_inputs = [0] if c.kind == "weight" else [0, 1]
            for i in data_inputs:
                v = node.inputs[i]
                c.act_elems.append(_numel(shapes.get(v.name)) if v is not None else 0)
                c.act_names.append(v.name if v is not None else "")
            for i, v in enumerate(node.inputs):
                if v is not None and i not in data_inputs and i != wi:
                    c.other_elems += _numel(shapes.get(v.name) or _const_shape(v))
            c.other_elems += sum(_numel(shapes.get(o.name)) for o in node.outputs)
        elif node.op_type not in FREE_OPS:
            b = 0.0
            for v in list(node.inputs) + list(node.outputs):
                if v is None:
                    continue
                b += _numel(shapes.get(v.name) or _const_shape(v)) * _dtype_bytes(v, high_a)
            c.plain_bytes = b
        costs[c.name] = c
    return costs


def roofline_time(c: NodeCost, target: Target, assignment: Assignment | None = None,
                  boundary: bool = True) -> float:
    """Roofline time of one node; ``assignment`` (w, a) for layers (None = the target's high);
    ``boundary``: add the cost of converting its activation operands (see ``boundary_time``)."""
    bw = target.memory_bandwidth
    if c.layer is None:
        return c.plain_bytes / bw
    w_fmt, a_fmt = assignment or target.high
    if c.kind != "weight":
        w_fmt = a_fmt
    hi_a = target.high[1]
    fw, fa, fh = get_format(w_fmt), get_format(a_fmt), get_format(hi_a)
    nbytes = c.weight_elems * fw.bytes + sum(c.act_elems) * fa.bytes + c.other_elems * fh.bytes
    compute = c.flops / target.peak(target.compute_format((w_fmt, a_fmt)))
    t = max(compute, nbytes / bw)
    if boundary and a_fmt != hi_a:
        for n in c.act_elems:
            t += target.boundary_per_node_s + n * target.boundary_per_element_s
    return t


def boundary_time(layers: Sequence[NodeCost], target: Target, config: Config) -> float:
    """Format boundaries of a region configuration: one Q (or Cast) per distinct (activation value,
    format) that a lowered layer reads; layers of a unit reading the same activation (q/k/v) share it."""
    hi_a = target.high[1]
    seen: set[tuple[str, str]] = set()
    t = 0.0
    for c in layers:
        a_fmt = config.get(c.unit, target.high)[1]
        if a_fmt == hi_a:
            continue
        for name, n in zip(c.act_names, c.act_elems):
            if (name, a_fmt) in seen:
                continue
            seen.add((name, a_fmt))
            t += target.boundary_per_node_s + n * target.boundary_per_element_s
    return t


def memory_gain(c: NodeCost, target: Target, assignment: Assignment) -> float:
    """Weight bytes saved by running layer ``c`` at ``assignment`` instead of the target's high."""
    if c.layer is None or c.kind != "weight" or assignment[0] == target.high[0]:
        return 0.0
    hi, lo = get_format(target.high[0]), get_format(assignment[0])
    saved = c.weight_elems * (hi.bytes - lo.bytes)
    if target.lowering.get(lo.name) == "qdq":
        saved -= 4 * c.weight_channels
    return float(saved)


# ---------------------------------------------------------------------------------------------
# the pass
# ---------------------------------------------------------------------------------------------

def read_regions(model: ir.Model) -> dict[str, Any]:
    regions = ann.get_json(model, ann.REGIONS)
    if not regions:
        raise OnnxAmpError(
            "model has no onnx_amp.regions annotation; run `onnx-amp partition` (PartitionPass) first"
        )
    return regions


def region_units(region: dict[str, Any]) -> list[str]:
    units = region.get("units") or {}
    return list(units.keys()) if isinstance(units, dict) else list(units)


def config_key(config: Config, units: Sequence[str]) -> str:
    """Stable text key of a configuration, e.g. ``U2=int8/int8,U3=fp32/fp32``."""
    return ",".join(f"{u}={config[u][0]}/{config[u][1]}" for u in units)


def compute_gains(model: ir.Model, target: Target | str, measured: dict | None = None,
                  batch_size: int = 1, seq_len: int = 128, max_configs: int = MAX_CONFIGS) -> dict[str, Any]:
    """The ``onnx_amp.gains`` table (not written; ``GainsPass`` writes it).

    ``measured``: ``{region_id: {config_key: {"time_s", "time_gain_s", "spread", "noisy", ...}}}``
    from ``runtime.profile.profile_model``; regions/configs found there use the measured gain.
    """
    target = load_target(target)
    regions = read_regions(model)
    shapes = static_shapes(model, batch_size, seq_len)
    costs = node_costs(model, shapes, target)
    by_region: dict[str, list[NodeCost]] = {}
    for node in model.graph:
        rid = ann.get_str(node, ann.REGION)
        if rid is not None:
            by_region.setdefault(rid, []).append(costs[node.name or ""])
    out_regions: dict[str, Any] = {}
    for region in regions["regions"]:
        rid = region["id"]
        units = region_units(region)
        nodes = by_region.get(rid)
        if nodes is None:
            nodes = [costs[n] for n in region.get("nodes", []) if n in costs]
        configs, capped, method = region_configs(units, target, max_configs)
        base_plain = sum(roofline_time(c, target) for c in nodes if c.layer is None)
        layers = [c for c in nodes if c.layer is not None]
        m = (measured or {}).get(rid)
        rows = []
        t0 = None
        for cfg in configs:
            t_layers = sum(roofline_time(c, target, cfg.get(c.unit, target.high), boundary=False) for c in layers)
            t = base_plain + t_layers + boundary_time(layers, target, cfg)
            if t0 is None:
                t0 = t
            row = {
                "assign": {u: list(cfg[u]) for u in units},
                "tt_gain_s": t0 - t,
                "tt_time_s": t,
                "mem_gain_bytes": sum(memory_gain(c, target, cfg.get(c.unit, target.high)) for c in layers),
            }
            mm = m.get(config_key(cfg, units)) if m else None
            if mm is not None:
                row.update({"time_gain_s": mm["time_gain_s"], "time_s": mm["time_s"], "spread": mm["spread"],
                            "noisy": bool(mm.get("noisy", False))})
            else:
                row.update({"time_gain_s": row["tt_gain_s"], "time_s": t, "spread": 0.0})
            rows.append(row)
        out_regions[rid] = {
            "units": units, "configs": rows, "capped": capped,
            **({"cap_method": method} if capped else {}),
            "time_source": "measured" if m else "roofline",
        }
    return {
        "version": 1, "target": target.name, "high": list(target.high),
        "shapes": {"batch_size": batch_size, "seq_len": seq_len},
        "measured_backend": target.measured_backend if measured else None,
        "regions": out_regions,
    }


@dataclasses.dataclass
class GainsResult(AmpPassResult):
    gains: dict | None = None


class GainsPass(AnnotationPass):
    """Write ``onnx_amp.gains`` (roofline for every region; measured where ``measured`` has it) and
    ``onnx_amp.target`` (the whole target description, so a custom target file travels with the
    model to ``solve``, ``rewrite`` and ``run``). Returns a :class:`GainsResult`."""

    result_type = GainsResult

    def __init__(self, target: Target | str, measured: dict | None = None, batch_size: int = 1,
                 seq_len: int = 128, max_configs: int = MAX_CONFIGS):
        super().__init__()
        self.target = load_target(target)
        self.measured = measured
        self.batch_size, self.seq_len, self.max_configs = batch_size, seq_len, max_configs

    def requires(self, model: ir.Model) -> None:
        require_model_key(model, ann.REGIONS, "GainsPass", "the partition pass (onnx-amp partition)")

    def annotate(self, model: ir.Model) -> dict:
        table = compute_gains(model, self.target, self.measured, self.batch_size, self.seq_len, self.max_configs)
        ann.set_json(model, ann.GAINS, table)
        ann.set_json(model, ann.TARGET, self.target.to_json())
        return {"gains": table}


def read_gains(model: ir.Model) -> dict[str, Any]:
    """The ``onnx_amp.gains`` table of a model (raises ``OnnxAmpError`` when absent)."""
    g = ann.get_json(model, ann.GAINS)
    if g is None:
        raise OnnxAmpError("model has no onnx_amp.gains annotation; run `onnx-amp profile` first")
    if g.get("version") != 1:
        raise OnnxAmpError(f"onnx_amp.gains version {g.get('version')!r} is not supported (expected 1)")
    return g
