"""Measured time gain (ET) per region configuration, on the runtime of the target (ORT or OpenVINO).

For every region of a partitioned model and every configuration of its units
(``passes.gains.region_configs``, same order and cap as the roofline table):

1. one real run of the whole model (feeds given, or sampled) records every value a region reads,
   so regions are timed on real activations (INT8 activation amax comes from this run too when
   the model has no ``onnx_amp.amax.*`` annotations): ``runtime.region_inputs``;
2. ``extract_region`` -> ``ApplyPlanPass`` (the configuration) -> the lowering the pipeline ships
   for the target's backend -> a session per configuration. On ``ort_cpu`` (the ``cpu`` target):
   ``RewritePass(form="emulate", int8_output_q="conv", ort_int8_layout=True)``, Q/DQ in ORT's
   fusable layout (with the output Q ORT fuses INT8 Conv to QLinearConv; MatMul fuses to
   MatMulIntegerToFloat without it), one DQ per consumer, an ORT session
   (``runtime.timing.make_ort_session``). On any other backend of
   ``runtime.backends.MEASURED_BACKENDS`` (``openvino_cpu``: the ``openvino`` target):
   ``rewrite(..., "emulate", **backend.lowering)`` and ``backend.session(..., timing=True)``;
3. timing in **paired rounds** (``runtime.timing.time_paired``): each round runs every
   configuration once (shuffled order), after warm-up; the gain of configuration c in a round is
   ``t(config 0) - t(c)`` of that round, so slow drift on a shared machine cancels. Reported:
   median time, median gain, spread = IQR of the per-round gains; a configuration is flagged
   ``noisy`` when the middle half of its per-round gains straddles 0.

Regions with the same structure (ops, attributes, input shapes/dtypes, small constant values,
unit layout) share measurements on every backend: they are measured once (``structural_hash``),
and each region's configurations map to the representative's by unit position.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import onnx_ir as ir

from onnx_amp.core import annotations as ann
from onnx_amp.core.errors import OnnxAmpError
from onnx_amp.core.targets import Target, load_target
from onnx_amp.passes.gains import Config, config_key, region_configs, region_units
from onnx_amp.runtime.region_inputs import (  # noqa: F401  (the names this module has always offered)
    SMALL_CONST, _const_array, _iter_values, _type_io, _value_sig, annotate_amax_from_run, fold_weight_constants,
    run_with_values, sample_feeds, structural_hash,
)
from onnx_amp.runtime.timing import (  # noqa: F401
    DEFAULT_BACKEND, Timing, backend_of, make_ort_session, time_model, time_paired, timing_runner,
)

logger = logging.getLogger(__name__)


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

    return RewritePass(form="emulate", **dict(ORT_CPU_LOWERING, int8_output_q=int8_output_q))(model).model


def lower_config(region_model: ir.Model, config: Config, target: Target,
                 int8_output_q: bool | str = INT8_OUTPUT_Q, lowering: dict | None = None) -> ir.Model:
    """Apply a configuration (units -> (w, a)) to an extracted region and lower it (emulate form):
    with ``lowering`` (a backend's ``rewrite`` options) as ``rewrite(..., **lowering)``, else in ORT's
    fusable INT8 layout with ``int8_output_q``."""
    from onnx_amp.passes.plan import ApplyPlanPass, Plan

    units = {u: tuple(a) for u, a in config.items() if tuple(a) != target.high}
    layer_units = {ann.get_str(n, ann.UNIT) for n in region_model.graph if ann.get_str(n, ann.LAYER)}
    units = {u: a for u, a in units.items() if u in layer_units}
    plan = Plan(target=target.name, strategy="profile", units=units)
    fold_weight_constants(region_model)
    ApplyPlanPass(plan, target=target)(region_model)
    if lowering is None:
        return _rewrite(region_model, int8_output_q)
    from onnx_amp.passes.rewrite import rewrite

    return rewrite(region_model, "emulate", **lowering)[0]



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
    backend: str = DEFAULT_BACKEND  # the runtime that timed it (runtime.backends name)

    def summary(self) -> str:
        noisy = sum(1 for r in self.measured.values() for c in r.values() if c.get("noisy"))
        total = sum(len(r) for r in self.measured.values())
        what = "ORT" if self.backend == DEFAULT_BACKEND else self.backend
        return (f"{self.n_regions} regions, {self.n_unique} distinct structures measured "
                f"({self.n_sessions} {what} sessions) in {self.seconds:.1f} s; "
                f"{noisy}/{total} configurations within the noise")


def measured_backend(target: Target) -> str:
    """The backend that times ``target`` here; ``OnnxAmpError`` when none does (a roofline target)."""
    from onnx_amp.runtime.backends import MEASURED_BACKENDS, get_backend

    if target.measured_backend not in MEASURED_BACKENDS:
        raise OnnxAmpError(
            f"target {target.name} cannot be measured here (measured_backend={target.measured_backend}); "
            "use the roofline (drop --measure) or tools/bench/gpu_profile.py on that device"
        )
    if target.measured_backend != DEFAULT_BACKEND:
        get_backend(target.measured_backend).check()
    return target.measured_backend


def _checked_partition(model: ir.Model):
    """(regions annotation, partition) of ``model``; ``OnnxAmpError`` when they disagree."""
    from onnx_amp.passes.partition import partition

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
    return regions_json, part


def _structure_groups(model: ir.Model, rids: list[str], units_of: dict[str, list[str]], batch_size: int,
                      seq_len: int, share: bool) -> dict[str, list[str]]:
    """Structural hash -> the regions with that structure (one group per region when not ``share``)."""
    from onnx_amp.passes.gains import static_shapes

    node_region: dict[str, list[ir.Node]] = {}
    for node in model.graph:
        rid = ann.get_str(node, ann.REGION)
        if rid is not None:
            node_region.setdefault(rid, []).append(node)
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
    return groups


@dataclass
class _Lowering:
    """How a configuration becomes a timed session on one backend."""

    target: Target
    backend: str
    lowering: dict | None  # a backend's rewrite options; None: ORT's layout with int8_output_q
    int8_output_q: bool | str
    threads: int | None
    disabled_optimizers: Sequence[str]

    def runner(self, model: ir.Model, rid: str, part, cfg: Config, values: dict[str, np.ndarray], feeds):
        from onnx_amp.passes.partition import extract_region

        m = extract_region(model, rid, part)
        _type_io(m, values)
        annotate_amax_from_run(m, values)
        if any(tuple(a) != self.target.high for a in cfg.values()):
            m = lower_config(m, cfg, self.target, self.int8_output_q, self.lowering)
        return timing_runner(m, feeds, self.backend, self.threads, self.disabled_optimizers)[1]


def _region_values(model: ir.Model, sub_models: dict[str, ir.Model], feeds: dict[str, np.ndarray]):
    """The values the representative regions read and their layers' operands, from one real run."""
    need = sorted({v.name for m in sub_models.values() for v in list(m.graph.inputs) + list(m.graph.outputs)})
    layer_inputs = sorted({v.name for m in sub_models.values() for n in m.graph
                           if ann.get_str(n, ann.LAYER) for v in list(n.inputs[:2]) + [n.outputs[0]] if v is not None})
    return run_with_values(model, feeds, need + layer_inputs)


def profile_model(model: ir.Model, target: Target | str = "cpu", *, feeds: dict[str, np.ndarray] | None = None,
                  batch_size: int = 1, seq_len: int = 32, warmup: int = 2, repeats: int = 10,
                  max_configs: int = 64, regions: Sequence[str] | None = None, threads: int | None = None,
                  min_round_s: float = 0.002, progress: bool = True, share: bool = True,
                  seed: int = 0, int8_output_q: bool | str = INT8_OUTPUT_Q,
                  disabled_optimizers: Sequence[str] = (), lowering: dict | None = None) -> ProfileResult:
    """Measure every region configuration of a partitioned model on the target's backend here.

    ``model`` must carry the partition annotations (``PartitionPass``); it is not modified.
    ``share=False`` measures every region even when structurally identical (for checks).
    ``int8_output_q`` / ``disabled_optimizers``: ORT only; ``lowering``: other rewrite options than
    the backend's (default: ``backend.lowering``; ORT's layout on ``ort_cpu``).
    """
    from tqdm import tqdm

    from onnx_amp.passes.partition import extract_region
    from onnx_amp.runtime.backends import get_backend

    target = load_target(target)
    backend = measured_backend(target)
    if lowering is None and backend != DEFAULT_BACKEND:
        lowering = get_backend(backend).lowering
    low = _Lowering(target, backend, lowering, int8_output_q, threads, disabled_optimizers)
    t_start = time.perf_counter()
    regions_json, part = _checked_partition(model)
    rids = [r["id"] for r in regions_json["regions"] if regions is None or r["id"] in regions]
    units_of = {r["id"]: region_units(r) for r in regions_json["regions"]}
    groups = _structure_groups(model, rids, units_of, batch_size, seq_len, share)
    reps = {key: rids_[0] for key, rids_ in groups.items()}
    sub_models = {key: extract_region(model, rid, part) for key, rid in reps.items()}
    if feeds is None:
        feeds = sample_feeds(model, batch_size, seq_len, seed)
    values = _region_values(model, sub_models, feeds)

    measured: dict[str, dict[str, dict[str, Any]]] = {}
    n_sessions = 0
    for key, members in tqdm(list(groups.items()), desc="profile regions", disable=not progress, unit="struct"):
        rid, units = reps[key], units_of[reps[key]]
        configs, _, _ = region_configs(units, target, max_configs)
        region_feeds = {v.name: values[v.name] for v in sub_models[key].graph.inputs}
        runners = [low.runner(model, rid, part, cfg, values, region_feeds) for cfg in configs]
        n_sessions += len(runners)
        timing = time_paired(runners, warmup=warmup, repeats=repeats, seed=seed, min_round_s=min_round_s)
        summaries = [timing.summary(c) for c in range(len(configs))]
        del runners
        for member in members:
            mu = units_of[member]
            measured[member] = {config_key({mu[i]: cfg[u] for i, u in enumerate(units)}, mu):
                                dict(s, shared_with=rid if member != rid else None)
                                for cfg, s in zip(configs, summaries)}
    return ProfileResult(measured, len(rids), len(groups), n_sessions, time.perf_counter() - t_start, groups,
                         backend)
