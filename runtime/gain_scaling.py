"""Region gains scaled to what each format gains end to end (measured), for backends whose kernels
fuse across region boundaries.

Region configurations are timed one region at a time (``runtime.profile``); the solver adds their
gains. On OpenVINO the sum can miss what a format gains in the whole model: consecutive INT8 layers
hand int8 tensors to each other across a region boundary (no f32 round trip, one requantization),
and a region timed alone pays its own boundary conversions. :func:`format_gain_factors` times the
high-precision model against each uniform low-format model (paired rounds, on the target's backend)
and compares each end-to-end gain with the sum of the region gains of that uniform configuration;
:func:`scale_gains` multiplies every measured configuration's gain by the mean factor of the formats
its lowered units use. The raw gain stays in each row (``time_gain_raw_s``); so do the factors
(returned, and noted in the run). A factor is kept within [``MIN_FACTOR``, ``MAX_FACTOR``] and is 1
when either gain is not positive.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from onnx_amp.core import annotations as ann
from onnx_amp.core.targets import Target
from onnx_amp.passes.gains import config_key, region_units

MIN_FACTOR, MAX_FACTOR = 0.25, 4.0


def _uniform_model(model: ir.Model, fmt: str, target: Target, lowering: dict) -> ir.Model:
    from onnx_amp.passes.plan import ApplyPlanPass, uniform_plan
    from onnx_amp.passes.rewrite import rewrite
    from onnx_amp.runtime.region_inputs import fold_weight_constants

    m = model.clone()
    fold_weight_constants(m)
    ApplyPlanPass(uniform_plan(m, fmt, fmt), target=target, validate=False)(m)
    return rewrite(m, "emulate", **lowering)[0]


def format_gain_factors(model: ir.Model, target: Target, measured: dict[str, dict[str, dict]],
                        feeds: dict[str, np.ndarray], backend: str, lowering: dict, *, repeats: int = 7,
                        threads: int | None = None, seed: int = 0) -> dict[str, dict[str, float]]:
    """Per low format of ``target``: ``{"e2e_gain_s", "region_sum_s", "factor"}`` (see the module doc).
    ``model`` must carry the calibration maxima (``onnx_amp.amax.*``) the rewrite needs."""
    from onnx_amp.runtime.timing import time_model

    fmts = [f for f in target.low_formats if (f, f) in target.assignments]
    models = [model] + [_uniform_model(model, f, target, lowering) for f in fmts]
    tm = time_model(models, feeds, repeats=repeats, threads=threads, seed=seed, backend=backend, min_round_s=0.05)
    units_of = {r["id"]: region_units(r) for r in ann.get_json(model, ann.REGIONS)["regions"]}
    out = {}
    for i, f in enumerate(fmts):
        e2e = tm.summary(i + 1)["time_gain_s"]
        rs = sum(measured[rid].get(config_key({u: (f, f) for u in units}, units), {}).get("time_gain_s", 0.0)
                 for rid, units in units_of.items() if units and rid in measured)
        factor = e2e / rs if e2e > 0 and rs > 0 else 1.0
        out[f] = {"e2e_gain_s": e2e, "region_sum_s": rs, "factor": float(min(max(factor, MIN_FACTOR), MAX_FACTOR))}
    return out


def _lowered_formats(key: str, high: tuple[str, str]) -> list[str]:
    """The activation formats of the lowered units of a config key (``U2=int8/int8,U3=fp32/fp32``)."""
    out = []
    for part in key.split(","):
        _, _, wa = part.partition("=")
        w, _, a = wa.partition("/")
        if (w, a) != tuple(high):
            out.append(a if a != high[1] else w)
    return out


def scale_gains(measured: dict[str, dict[str, dict[str, Any]]], factors: dict[str, dict[str, float]],
                target: Target) -> int:
    """Multiply each configuration's measured gain by the mean factor of its lowered units' formats
    (in place; the raw gain kept as ``time_gain_raw_s``). Returns how many rows changed."""
    n = 0
    for tab in measured.values():
        for key, row in tab.items():
            fmts = _lowered_formats(key, target.high)
            if not fmts:
                continue
            k = float(np.mean([factors.get(f, {}).get("factor", 1.0) for f in fmts]))
            row.setdefault("time_gain_raw_s", row["time_gain_s"])
            row["time_gain_s"] = row["time_gain_raw_s"] * k
            n += 1
    return n
