"""Measured time gain (ET) per region configuration with ONNX Runtime on this CPU.

For every region of a partitioned model and every configuration of its units
(``passes.gains.region_configs``, same order and cap as the roofline table):

1. one real run of the whole model (feeds given, or sampled) records every value a region reads,
   so regions are timed on real activations (INT8 activation amax comes from this run too when
   the model has no ``onnx_amp.amax.*`` annotations);
2. ``extract_region`` -> ``ApplyPlanPass`` (the configuration) -> ``RewritePass(form="emulate",
   int8_output_q=True)`` (Q/DQ in ORT's fusable layout: with the output Q, ORT fuses INT8 Conv to
   QLinearConv and MatMul to QLinearMatMul; without it Conv stays float) -> one DQ per consumer ->
   an ORT session per configuration. Deploy with the same rewrite options for the gains to hold;
3. timing in **paired rounds**: each round runs every configuration once (shuffled order), after
   warm-up; the gain of configuration c in a round is ``t(config 0) - t(c)`` of that round, so slow
   drift on a shared machine cancels. Reported: median time, median gain, spread = IQR of the
   per-round gains; a configuration is flagged ``noisy`` when the middle half of its per-round
   gains straddles 0 (its sign is not settled by the measurement).

Regions with the same structure (ops, attributes, input shapes/dtypes, small constant values,
unit layout) share measurements: they are measured once (``structural_hash``), and each region's
configurations map to the representative's by unit position.
"""

from __future__ import annotations

import hashlib
import logging
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import onnx_ir as ir

from onnx_amp.core import annotations as ann
from onnx_amp.passes.gains import Config, config_key, region_configs, region_units
from onnx_amp.core.errors import OnnxAmpError
from onnx_amp.core.targets import Target, load_target
from onnx_amp.runtime.ort_session import ORT_MAX_IR

logger = logging.getLogger(__name__)

SMALL_CONST = 64  # constants up to this many elements enter the structural hash by value


# ---------------------------------------------------------------------------------------------
# sessions
# ---------------------------------------------------------------------------------------------

def make_ort_session(model: ir.Model, threads: int | None = None, spinning: bool = False,
                     disabled_optimizers: Sequence[str] = ()):
    """An ORT CPU session for timing: ``runtime.ort_session.make_session`` with thread-pool spinning
    off (``timing``) unless ``spinning``. The model is not modified."""
    from onnx_amp.runtime.ort_session import make_session

    return make_session(model, threads=threads, timing=not spinning, disabled_optimizers=disabled_optimizers)


# ---------------------------------------------------------------------------------------------
# inputs from a real run
# ---------------------------------------------------------------------------------------------

def sample_feeds(model: ir.Model, batch_size: int = 1, seq_len: int = 32, seed: int = 0,
                 vocab: int = 1000) -> dict[str, np.ndarray]:
    """Feeds for the graph inputs: token ids in [0, vocab), masks of ones, N(0,1) floats.
    Symbolic dims: axis 0 -> batch_size, others -> seq_len."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for v in model.graph.inputs:
        if v.const_value is not None:
            continue
        shape = [d if isinstance(d, int) else (batch_size if i == 0 else seq_len) for i, d in enumerate(v.shape or [])]
        dt = v.dtype.numpy()
        name = (v.name or "").lower()
        if np.issubdtype(dt, np.integer):
            if "mask" in name:
                feeds[v.name] = np.ones(shape, dt)
            elif "type" in name or "segment" in name:
                feeds[v.name] = np.zeros(shape, dt)
            elif "position" in name:
                feeds[v.name] = np.broadcast_to(np.arange(shape[-1], dtype=dt), shape).copy()
            else:
                feeds[v.name] = rng.integers(0, vocab, shape).astype(dt)
        elif dt == np.bool_:
            feeds[v.name] = np.ones(shape, dt)
        else:
            feeds[v.name] = rng.standard_normal(shape).astype(dt)
    return feeds


def run_with_values(model: ir.Model, feeds: dict[str, np.ndarray], names: Sequence[str],
                    scratch_dir: str | None = None) -> dict[str, np.ndarray]:
    """Run ``model`` once in ORT and return the named intermediate values (model unchanged)."""
    import os
    import tempfile

    import onnxruntime as ort

    values = {v.name: v for v in _iter_values(model.graph)}
    wanted = [n for n in dict.fromkeys(names) if n in values and n not in feeds]
    missing = [n for n in names if n not in values and n not in feeds]
    if missing:
        raise OnnxAmpError(f"values {missing[:5]} not found in the model")
    outs = list(model.graph.outputs)
    added = [values[n] for n in wanted if values[n] not in outs and not values[n].is_initializer()]
    model.graph.outputs.extend(added)
    ir_version = model.ir_version
    model.ir_version = min(ir_version or ORT_MAX_IR, ORT_MAX_IR)
    try:
        with tempfile.TemporaryDirectory(dir=scratch_dir) as d:
            p = os.path.join(d, "m.onnx")
            ir.save(model, p, external_data="m.onnx.data")
            so = ort.SessionOptions()
            so.log_severity_level = 3
            sess = ort.InferenceSession(p, so, providers=["CPUExecutionProvider"])
            out_names = [o.name for o in sess.get_outputs()]
            res = sess.run(None, {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}})
    finally:
        model.ir_version = ir_version
        for _ in added:
            model.graph.outputs.pop()
    got = dict(zip(out_names, res))
    got.update({k: v for k, v in feeds.items() if k in names})
    for n in wanted:
        if n not in got and values[n].const_value is not None:
            got[n] = values[n].const_value.numpy()
    return got


def _iter_values(graph: ir.Graph):
    yield from graph.inputs
    yield from graph.initializers.values()
    for n in graph:
        yield from n.outputs


# ---------------------------------------------------------------------------------------------
# structural hash
# ---------------------------------------------------------------------------------------------

def _attr_repr(attr: ir.Attr) -> str:
    v = attr.value
    if isinstance(v, ir.TensorProtocol):
        a = v.numpy()
        return f"T{a.dtype}{a.shape}" + (repr(a.tolist()) if a.size <= SMALL_CONST else "")
    if isinstance(v, ir.Graph):
        return f"G{len(v)}"
    return repr(v)


def structural_hash(nodes: Sequence[ir.Node], input_sigs: dict[str, str], units: Sequence[str]) -> str:
    """Hash of a node list: ops, attributes, wiring, external input signatures (shape/dtype or
    small constant values) and the position of each node's unit in ``units``."""
    h = hashlib.sha1()
    local: dict[int, str] = {}
    unit_pos = {u: i for i, u in enumerate(units)}
    ext_index: dict[str, int] = {}
    for i, node in enumerate(nodes):
        parts = [node.domain, node.op_type, str(len(node.outputs))]
        for k in sorted(node.attributes):
            parts.append(f"{k}={_attr_repr(node.attributes[k])}")
        for v in node.inputs:
            if v is None:
                parts.append("-")
            elif id(v) in local:
                parts.append(local[id(v)])
            else:
                if v.name not in ext_index:
                    ext_index[v.name] = len(ext_index)
                parts.append(f"x{ext_index[v.name]}:{input_sigs.get(v.name, '?')}")
        u = ann.get_str(node, ann.UNIT)
        kind = ann.get_str(node, ann.LAYER_KIND)
        if u is not None:
            parts.append(f"u{unit_pos.get(u, -1)}:{kind}:{ann.get_str(node, ann.WEIGHT_INPUT)}")
        for j, o in enumerate(node.outputs):
            local[id(o)] = f"n{i}.{j}"
        h.update("|".join(parts).encode())
        h.update(b"\n")
    return h.hexdigest()


def _value_sig(v: ir.Value, shapes: dict[str, tuple]) -> str:
    cv = v.const_value
    if cv is None and v.producer() is not None and v.producer().op_type == "Constant":
        attr = v.producer().attributes.get("value")
        cv = attr.as_tensor() if attr is not None else None
    if cv is not None:
        shape = tuple(cv.shape)
        if int(np.prod(shape)) <= SMALL_CONST:
            return f"c{cv.dtype}{shape}{cv.numpy().tolist()!r}"
        return f"c{cv.dtype}{shape}"
    return f"{v.dtype}{shapes.get(v.name)}"


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------

@dataclass
class Timing:
    """Paired-round timings of configurations 0..n-1 (config 0 = baseline)."""
    times: list[list[float]]  # times[c][round]

    def summary(self, c: int) -> dict[str, Any]:
        t = self.times[c]
        gains = [b - x for b, x in zip(self.times[0], t)]
        g_med = statistics.median(gains)
        q = np.percentile(gains, [25, 75]) if len(gains) > 1 else np.array([g_med, g_med])
        lo, hi = float(q[0]), float(q[1])
        return {
            "time_s": statistics.median(t),
            "time_gain_s": 0.0 if c == 0 else g_med,
            "spread": 0.0 if c == 0 else hi - lo,
            "gain_iqr": [0.0, 0.0] if c == 0 else [lo, hi],
            "time_minmax": [min(t), max(t)],
            "noisy": False if c == 0 else bool(lo <= 0.0 <= hi),
            "rounds": len(t),
        }


def time_paired(runners: Sequence[Callable[[], Any]], warmup: int = 2, repeats: int = 10,
                seed: int = 0, min_round_s: float = 0.0) -> Timing:
    """Time ``runners`` in paired rounds (each round runs all, shuffled). When one call is shorter
    than ``min_round_s``, each measurement loops the call to reach it (time per call reported)."""
    rng = random.Random(seed)
    loops = [1] * len(runners)
    for i, r in enumerate(runners):
        for _ in range(warmup):
            r()
        if min_round_s > 0:
            t0 = time.perf_counter()
            r()
            dt = max(time.perf_counter() - t0, 1e-7)
            loops[i] = max(1, int(min_round_s / dt))
    n = max(loops)
    loops = [n] * len(runners)  # same loop count for all: paired differences stay comparable
    times = [[] for _ in runners]
    order = list(range(len(runners)))
    for _ in range(repeats):
        rng.shuffle(order)
        for i in order:
            r = runners[i]
            t0 = time.perf_counter()
            for _ in range(loops[i]):
                r()
            times[i].append((time.perf_counter() - t0) / loops[i])
    return Timing(times)


# ---------------------------------------------------------------------------------------------
# lowering a configuration
# ---------------------------------------------------------------------------------------------

# The CPU target's INT8 lowering, shared with the model the pipeline ships (passes.rewrite.ORT_CPU_LOWERING):
# output Q on Conv only (ORT fuses INT8 Conv only as DQ -> Conv -> Q, QLinearConv; MatMul fuses to
# MatMulIntegerToFloat without it, as fast and without the extra output rounding), u8 activations,
# one DQ per consumer.
from onnx_amp.passes.rewrite import ORT_CPU_LOWERING, activations_to_uint8, dedicate_dq  # noqa: E402,F401

INT8_OUTPUT_Q = ORT_CPU_LOWERING["int8_output_q"]


def _rewrite(model: ir.Model, int8_output_q: bool | str = INT8_OUTPUT_Q) -> ir.Model:
    from onnx_amp.passes.rewrite import RewritePass

    return RewritePass(form="emulate", int8_output_q=int8_output_q, ort_int8_layout=True)(model).model


def annotate_amax_from_run(model: ir.Model, values: dict[str, np.ndarray], overwrite: bool = False) -> int:
    """Write ``onnx_amp.amax.a/.b/.y`` (max |x| of the activation operands and output in ``values``)
    and ``onnx_amp.amax.w`` (per output channel) on layer nodes that lack them. For timing only: the
    calibration pass writes the real ones. Returns how many layers were annotated."""
    n = 0
    for node in model.graph:
        if ann.get_str(node, ann.LAYER) is None:
            continue
        if not overwrite and ann.get_str(node, ann.AMAX_A) is not None:
            continue
        kind = ann.get_str(node, ann.LAYER_KIND, "weight")
        a = node.inputs[0]
        if a is None or a.name not in values:
            continue
        ann.set_float(node, ann.AMAX_A, float(np.max(np.abs(values[a.name]))) or 1.0)
        y = node.outputs[0]
        if y.name in values:
            ann.set_float(node, ann.AMAX_Y, float(np.max(np.abs(values[y.name]))) or 1.0)
        if kind == "act_act":
            b = node.inputs[1]
            if b is not None and b.name in values:
                ann.set_float(node, ann.AMAX_B, float(np.max(np.abs(values[b.name]))) or 1.0)
        else:
            wi = int(ann.get_str(node, ann.WEIGHT_INPUT, "1"))
            w = _const_array(node.inputs[wi])
            if w is not None:
                axis = int(ann.get_str(node, ann.WEIGHT_AXIS, "0"))
                ax = axis % w.ndim
                red = tuple(i for i in range(w.ndim) if i != ax)
                amax = np.max(np.abs(w), axis=red) if red else np.abs(w)
                amax = np.where(amax > 0, amax, 1.0)
                ann.set_json(node, ann.AMAX_W, [float(x) for x in amax.ravel()])
        n += 1
    return n


def _type_io(model: ir.Model, values: dict[str, np.ndarray]) -> None:
    """Give the graph inputs/outputs of an extracted region the dtype/shape seen in the real run
    (ORT needs typed inputs; models built without value_info lack them)."""
    for v in list(model.graph.inputs) + list(model.graph.outputs):
        arr = values.get(v.name)
        if arr is None:
            continue
        if v.dtype is None:
            v.dtype = ir.DataType.from_numpy(arr.dtype)
        if v.shape is None:
            v.shape = ir.Shape(arr.shape)


def _const_array(v: ir.Value | None) -> np.ndarray | None:
    """Value of a constant (initializer, Constant node, or a chain of simple ops on one): the
    rewrite's own folding, so the profiler and the rewrite agree on what is a weight."""
    from onnx_amp.passes.rewrite import _const_array as fold

    return None if v is None else fold(v)


def fold_weight_constants(model: ir.Model) -> int:
    """Give every weight layer whose weight is a constant chain (Transpose/Cast of an initializer,
    a Constant node; e.g. tied embeddings) a folded initializer, so the rewrite can quantize it.
    In place; returns the number of weights folded."""
    n = 0
    for node in model.graph:
        if ann.get_str(node, ann.LAYER) is None or ann.get_str(node, ann.LAYER_KIND, "weight") != "weight":
            continue
        wi = int(ann.get_str(node, ann.WEIGHT_INPUT, "1"))
        w = node.inputs[wi]
        if w is None or w.const_value is not None:
            continue
        arr = _const_array(w)
        if arr is None:
            continue
        name = f"{w.name}/folded"
        if name in model.graph.initializers:
            v = model.graph.initializers[name]
        else:
            v = ir.Value(name=name, shape=ir.Shape(arr.shape), type=ir.TensorType(ir.DataType.from_numpy(arr.dtype)),
                         const_value=ir.Tensor(np.ascontiguousarray(arr), name=name))
            model.graph.register_initializer(v)
        node.replace_input_with(wi, v)
        n += 1
    return n


def lower_config(region_model: ir.Model, config: Config, target: Target,
                 int8_output_q: bool | str = INT8_OUTPUT_Q) -> ir.Model:
    """Apply a configuration (units -> (w, a)) to an extracted region and lower it (emulate form)."""
    from onnx_amp.passes.plan import ApplyPlanPass, Plan

    units = {u: tuple(a) for u, a in config.items() if tuple(a) != target.high}
    layer_units = {ann.get_str(n, ann.UNIT) for n in region_model.graph if ann.get_str(n, ann.LAYER)}
    units = {u: a for u, a in units.items() if u in layer_units}
    plan = Plan(target=target.name, strategy="profile", units=units)
    fold_weight_constants(region_model)
    ApplyPlanPass(plan, target=target)(region_model)
    return _rewrite(region_model, int8_output_q)


# ---------------------------------------------------------------------------------------------
# profiling a model
# ---------------------------------------------------------------------------------------------

@dataclass
class ProfileResult:
    measured: dict[str, dict[str, dict[str, Any]]]  # region -> config key -> timing summary
    n_regions: int
    n_unique: int
    n_sessions: int
    seconds: float
    groups: dict[str, list[str]] = field(default_factory=dict)  # hash -> region ids

    def summary(self) -> str:
        noisy = sum(1 for r in self.measured.values() for c in r.values() if c.get("noisy"))
        total = sum(len(r) for r in self.measured.values())
        return (f"{self.n_regions} regions, {self.n_unique} distinct structures measured "
                f"({self.n_sessions} ORT sessions) in {self.seconds:.1f} s; "
                f"{noisy}/{total} configurations within the noise")


def profile_model(model: ir.Model, target: Target | str = "cpu", *, feeds: dict[str, np.ndarray] | None = None,
                  batch_size: int = 1, seq_len: int = 32, warmup: int = 2, repeats: int = 10,
                  max_configs: int = 64, regions: Sequence[str] | None = None, threads: int | None = None,
                  min_round_s: float = 0.002, progress: bool = True, share: bool = True,
                  seed: int = 0, int8_output_q: bool | str = INT8_OUTPUT_Q,
                  disabled_optimizers: Sequence[str] = ()) -> ProfileResult:
    """Measure every region configuration of a partitioned model with ORT on this CPU.

    ``model`` must carry the partition annotations (``PartitionPass``); it is not modified.
    ``share=False`` measures every region even when structurally identical (for checks).
    """
    from tqdm import tqdm

    from onnx_amp.passes.gains import static_shapes
    from onnx_amp.passes.partition import extract_region, partition

    target = load_target(target)
    if target.measured_backend != "ort_cpu":
        raise OnnxAmpError(
            f"target {target.name} cannot be measured here (measured_backend={target.measured_backend}); "
            "use the roofline (drop --measure) or tools/bench/gpu_profile.py on that device"
        )
    t_start = time.perf_counter()
    regions_json = ann.get_json(model, ann.REGIONS)
    if not regions_json:
        raise OnnxAmpError("model has no onnx_amp.regions annotation; run `onnx-amp partition` first")
    part = partition(model)
    ann_ids = [r["id"] for r in regions_json["regions"]]
    if [r.id for r in part.regions] != ann_ids or any(
            sorted(r.layers) != sorted(a.get("layers", [])) for r, a in zip(part.regions, regions_json["regions"])):
        raise OnnxAmpError(
            "the model's onnx_amp.regions annotation does not match its partition (made by another version of "
            "the partition pass?); re-run `onnx-amp partition` on the original model")
    rids = [r["id"] for r in regions_json["regions"] if regions is None or r["id"] in regions]
    units_of = {r["id"]: region_units(r) for r in regions_json["regions"]}
    node_region: dict[str, list[ir.Node]] = {}
    for node in model.graph:
        rid = ann.get_str(node, ann.REGION)
        if rid is not None:
            node_region.setdefault(rid, []).append(node)

    # 1. structural hashes (from the nodes in the full model; no extraction yet)
    shapes = static_shapes(model, batch_size, seq_len)
    groups: dict[str, list[str]] = {}
    for rid in rids:
        nodes = node_region.get(rid, [])
        sigs = {}
        for n in nodes:
            for v in n.inputs:
                if v is not None and v.name not in sigs:
                    sigs[v.name] = _value_sig(v, shapes)
        key = structural_hash(nodes, sigs, units_of[rid]) if share else rid
        groups.setdefault(key, []).append(rid)

    reps = {key: rids_[0] for key, rids_ in groups.items()}
    # 2. one real run for the values the representatives read
    sub_models = {key: extract_region(model, rid, part) for key, rid in reps.items()}
    need = sorted({v.name for m in sub_models.values() for v in list(m.graph.inputs) + list(m.graph.outputs)})
    if feeds is None:
        feeds = sample_feeds(model, batch_size, seq_len, seed)
    layer_inputs = sorted({v.name for m in sub_models.values() for n in m.graph
                           if ann.get_str(n, ann.LAYER) for v in list(n.inputs[:2]) + [n.outputs[0]] if v is not None})
    values = run_with_values(model, feeds, need + layer_inputs)

    measured: dict[str, dict[str, dict[str, Any]]] = {}
    n_sessions = 0
    it = tqdm(list(groups.items()), desc="profile regions", disable=not progress, unit="struct")
    for key, members in it:
        rid = reps[key]
        units = units_of[rid]
        configs, _, _ = region_configs(units, target, max_configs)
        base = sub_models[key]
        runners = []
        region_feeds = {v.name: values[v.name] for v in base.graph.inputs}
        for cfg in configs:
            m = extract_region(model, rid, part)
            _type_io(m, values)
            annotate_amax_from_run(m, values)
            if any(tuple(a) != target.high for a in cfg.values()):
                m = lower_config(m, cfg, target, int8_output_q)
            sess = make_ort_session(m, threads, disabled_optimizers=disabled_optimizers)
            n_sessions += 1
            f = {i.name: region_feeds[i.name] for i in sess.get_inputs()}
            runners.append(lambda s=sess, f=f: s.run(None, f))
        timing = time_paired(runners, warmup=warmup, repeats=repeats, seed=seed, min_round_s=min_round_s)
        summaries = [timing.summary(c) for c in range(len(configs))]
        for member in members:
            mu = units_of[member]
            table = {}
            for cfg, s in zip(configs, summaries):
                mapped = {mu[i]: cfg[u] for i, u in enumerate(units)}
                table[config_key(mapped, mu)] = dict(s, shared_with=rid if member != rid else None)
            measured[member] = table
    return ProfileResult(measured, len(rids), len(groups), n_sessions, time.perf_counter() - t_start, groups)


def time_model(models: Sequence[ir.Model], feeds: dict[str, np.ndarray], warmup: int = 2, repeats: int = 10,
               threads: int | None = None, seed: int = 0, min_round_s: float = 0.0,
               disabled_optimizers: Sequence[str] = ()) -> Timing:
    """Paired-round timing of whole models (e.g. all-high vs a plan) on the same feeds."""
    runners = []
    for m in models:
        sess = make_ort_session(m, threads, disabled_optimizers=disabled_optimizers)
        names = {x.name for x in sess.get_inputs()}
        f = {k: v for k, v in feeds.items() if k in names}
        runners.append(lambda s=sess, f=f: s.run(None, f))
    return time_paired(runners, warmup=warmup, repeats=repeats, seed=seed, min_round_s=min_round_s)
