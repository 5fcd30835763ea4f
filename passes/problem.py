"""The plan-selection problem as plain data: regions, their configurations, and what each costs.

A :class:`Problem` lists the regions in graph order, each with its configurations (an assignment per
unit, a gain per metric, a predicted loss MSE ``D`` and, under the ``shift`` loss model, a predicted
mean loss change ``mu``), independent of ONNX, so solvers can be tested and benchmarked on their
own. A selection's predicted loss MSE is ``sum D + (sum mu)^2`` (:meth:`Problem.totals`): additive
when every ``mu`` is 0 (the ``ideal`` and ``measured`` models). :func:`problem_from_model` builds
one from a model that carries the partition (``onnx_amp.regions``), the calibration
(``onnx_amp.sens.*``) and the gain tables (``onnx_amp.gains``).

Measured time gains enter the problem *settled* (:func:`settle_measured_gains`): a gain within its
own noise (``|gain| <= spread``, the interquartile range of its per-round gains; every ``noisy``
configuration, whose per-round gains straddle 0, is one) counts as 0, and every other measured gain
is rounded to the measurement's resolution (the largest 1-2-5 step not above the median ``spread``
of the table).
Timings that differ between two runs by less than the noise then give the same numbers, and equal
gains are ties the solvers break the same way every time (the IP keeps, of equal gains, the
configuration with the lower predicted loss MSE, then the lower index). The table itself keeps the
raw medians.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from onnx_amp.core.errors import OnnxAmpError

Assignment = tuple[str, str]  # (weight format, activation format)

#: metric name -> key in the ``onnx_amp.gains`` tables
METRICS = {"time": "time_gain_s", "tt": "tt_gain_s", "memory": "mem_gain_bytes"}
METRIC_ALIASES = {
    "time": "time", "et": "time", "measured": "time", "time_gain_s": "time",
    "tt": "tt", "theoretical": "tt", "roofline": "tt", "tt_gain_s": "tt",
    "memory": "memory", "mem": "memory", "mg": "memory", "mem_gain_bytes": "memory",
}


def normalize_metric(metric: str) -> str:
    try:
        return METRIC_ALIASES[metric.lower()]
    except KeyError:
        raise OnnxAmpError(f"unknown metric {metric!r}; use one of: time (measured), tt (roofline), memory") from None


@dataclass
class Config:
    """One configuration of a region: an assignment per unit, gains per metric, predicted MSE."""

    assign: dict[str, Assignment]
    gains: dict[str, float] = field(default_factory=dict)  # metric ("time"/"tt"/"memory") -> gain
    mse: float = 0.0  # D: predicted loss MSE (variance part) of this configuration (sum over its units)
    shift: float = 0.0  # mu: predicted mean loss change of this configuration (sum over its units)

    def gain(self, metric: str) -> float:
        return float(self.gains.get(metric, 0.0) or 0.0)


@dataclass
class Region:
    id: str
    units: list[str]
    configs: list[Config]


@dataclass
class Problem:
    """Regions in graph order, each with its configurations (config 0 conventionally all-high).

    ``unit_order`` lists the units in graph order (for ``prefix`` and neighbour pairs); ``high`` is
    the target's high-precision assignment; ``low`` maps each unit to its low-precision assignment
    (by default: the non-high assignment of that unit with the fewest bits, ties by largest gain).
    """

    regions: list[Region]
    high: Assignment
    target: str = "unknown"
    unit_order: list[str] = field(default_factory=list)
    low: dict[str, Assignment] = field(default_factory=dict)

    def __post_init__(self):
        if not self.unit_order:
            self.unit_order = [u for r in self.regions for u in r.units]
        self.unit_region = {u: gi for gi, r in enumerate(self.regions) for u in r.units}
        if not self.low:
            self.low = _default_low(self)
        self._pick_cache: dict[tuple[int, frozenset], int] = {}
        self._arrays: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self._shifts: list[np.ndarray] | None = None

    @property
    def has_shift(self) -> bool:
        """True when some configuration has a mean loss change: the predicted MSE is not additive."""
        return any(c.shift for r in self.regions for c in r.configs)

    def shift_arrays(self) -> list[np.ndarray]:
        """Per region the mean loss change ``mu`` of each configuration (cached)."""
        if self._shifts is None:
            self._shifts = [np.array([c.shift for c in r.configs], float) for r in self.regions]
        return self._shifts

    def arrays(self, metric: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per region (T, D) as float arrays over its configurations (cached per metric)."""
        if metric not in self._arrays:
            self._arrays[metric] = [
                (np.array([c.gain(metric) for c in r.configs], float), np.array([c.mse for c in r.configs], float))
                for r in self.regions
            ]
        return self._arrays[metric]

    # ---- construction from a unit-level loss callable ----------------------------------------
    @classmethod
    def from_tables(
        cls,
        regions: Iterable[dict],
        unit_loss: Callable[[str, Assignment], float],
        high: Assignment,
        target: str = "unknown",
        unit_order: Sequence[str] | None = None,
        fixed_high: Iterable[str] = (),
        unit_shift: Callable[[str, Assignment], float] | None = None,
    ) -> "Problem":
        """``regions``: dicts ``{"id", "units", "configs": [{"assign": {u: (w, a)}, "time_gain_s"|"gains": ..}]}``.

        D of each configuration = sum over its units of ``unit_loss(unit, (w, a))`` (plug in
        ``passes.lossmodel.predicted_mse`` through :func:`unit_loss_from_stats`). Units in
        ``fixed_high`` (no calibration figures) keep the high assignment: configurations lowering
        them are left out, and their loss counts as 0 (the same in every plan). ``unit_shift(unit,
        (w, a))``: the unit's mean loss change (the ``shift`` model; :func:`unit_shift_from_stats`).
        """
        fixed = set(fixed_high)
        cache: dict[tuple[str, Assignment], float] = {}

        def ul(u: str, a: Assignment) -> float:
            k = (u, a)
            if k not in cache:
                cache[k] = float(unit_loss(u, a))
            return cache[k]

        out = []
        for r in regions:
            units = list(r["units"])
            configs = []
            for c in r["configs"]:
                assign = {u: tuple(c["assign"].get(u, high)) for u in units}
                if any(assign[u] != tuple(high) for u in units if u in fixed):
                    continue
                gains = dict(c.get("gains", {}))
                for m, key in METRICS.items():
                    if key in c and c[key] is not None:
                        gains[m] = float(c[key])
                mu = sum(float(unit_shift(u, assign[u])) for u in units if u not in fixed) if unit_shift else 0.0
                configs.append(Config(assign, gains, sum(ul(u, assign[u]) for u in units if u not in fixed), mu))
            out.append(Region(str(r["id"]), units, configs))
        return cls(out, tuple(high), target, list(unit_order) if unit_order else [])

    # ---- helpers -------------------------------------------------------------------------------
    @property
    def n_regions(self) -> int:
        return len(self.regions)

    def lowered(self, gi: int, ci: int) -> frozenset[str]:
        cfg = self.regions[gi].configs[ci]
        return frozenset(u for u, a in cfg.assign.items() if tuple(a) != tuple(self.high))

    def high_config(self, gi: int) -> int:
        return self.pick_config(gi, frozenset())

    def pick_config(self, gi: int, lowered: frozenset[str]) -> int:
        """Index of the configuration of region ``gi`` that lowers exactly ``lowered`` (to ``low``).

        When the table was capped and lacks it, the closest available one: most wanted units low,
        no unwanted unit low if possible, then least predicted MSE.
        """
        key = (gi, lowered)
        if key in self._pick_cache:
            return self._pick_cache[key]
        region = self.regions[gi]
        best, best_key = 0, None
        for ci, cfg in enumerate(region.configs):
            want = sum(1 for u in region.units if (u in lowered) == (tuple(cfg.assign[u]) == tuple(self.low[u])))
            exact_high = sum(1 for u in region.units if u not in lowered and tuple(cfg.assign[u]) == tuple(self.high))
            extra = sum(1 for u in region.units if u not in lowered and tuple(cfg.assign[u]) != tuple(self.high))
            k = (-extra, want, exact_high, -cfg.mse)
            if best_key is None or k > best_key:
                best, best_key = ci, k
        self._pick_cache[key] = best
        return best

    def select_lowered(self, units: Iterable[str]) -> list[int]:
        units = set(units)
        return [self.pick_config(gi, frozenset(u for u in r.units if u in units)) for gi, r in enumerate(self.regions)]

    def totals(self, selection: Sequence[int], metric: str) -> tuple[float, float]:
        """(total gain, predicted MSE ``sum D + (sum mu)^2``) of a selection (one config index per region)."""
        g = 0.0
        for r, ci in zip(self.regions, selection):
            g += r.configs[ci].gain(metric)
        v, m = self.parts(selection)
        return g, v + m * m

    def parts(self, selection: Sequence[int]) -> tuple[float, float]:
        """(summed variance terms V, summed mean shifts M) of a selection."""
        v = m = 0.0
        for r, ci in zip(self.regions, selection):
            v += r.configs[ci].mse
            m += r.configs[ci].shift
        return v, m

    def least_loss_selection(self) -> list[int]:
        """Every region at its least-loss configuration (least D, then least mu)."""
        return [min(range(len(r.configs)), key=lambda i, r=r: (r.configs[i].mse, r.configs[i].shift, i))
                for r in self.regions]

    def min_mse(self) -> float:
        """Predicted MSE of :meth:`least_loss_selection` (the smallest feasible tau whenever one
        configuration of each region is least in both D and mu, as the all-high one is)."""
        return self.totals(self.least_loss_selection(), "time")[1]

    def all_low_selection(self) -> list[int]:
        return self.select_lowered(self.unit_order)

    def all_high_selection(self) -> list[int]:
        return [self.high_config(gi) for gi in range(self.n_regions)]

    def all_low_mse(self) -> float:
        return self.totals(self.all_low_selection(), "time")[1]

    def unit_delta(self, unit: str, metric: str) -> tuple[float, float]:
        """(gain, predicted MSE increase) of lowering ``unit`` alone, relative to all-high."""
        gi = self.unit_region[unit]
        h = self.regions[gi].configs[self.high_config(gi)]
        c = self.regions[gi].configs[self.pick_config(gi, frozenset([unit]))]
        return c.gain(metric) - h.gain(metric), (c.mse + c.shift ** 2) - (h.mse + h.shift ** 2)

    def neighbour_pairs(self) -> list[tuple[str, str]]:
        o = self.unit_order
        return [(o[i], o[i + 1]) for i in range(len(o) - 1)]


def _bits(a: Assignment) -> int:
    from onnx_amp.core.formats import get_format

    return get_format(a[0]).bits + get_format(a[1]).bits


def _default_low(p: Problem) -> dict[str, Assignment]:
    low: dict[str, Assignment] = {}
    for r in p.regions:
        for u in r.units:
            cands: dict[Assignment, float] = {}
            for c in r.configs:
                a = tuple(c.assign[u])
                if a != tuple(p.high):
                    cands[a] = max(cands.get(a, -math.inf), max(c.gains.values(), default=0.0))
            if cands:
                low[u] = min(cands, key=lambda a: (_bits(a), -cands[a], a))
            else:
                low[u] = tuple(p.high)
    return low


def unit_loss_from_stats(
    layer_stats: dict[str, Any], unit_layers: dict[str, list[str]], predicted_mse: Callable | None = None
) -> Callable[[str, Assignment], float]:
    """unit_loss(unit, (w, a)) = sum over the unit's layers of ``predicted_mse(stats, w, a)``."""
    if predicted_mse is None:
        from onnx_amp.passes.lossmodel import predicted_mse

    def f(unit: str, a: Assignment) -> float:
        total = 0.0
        for lid in unit_layers[unit]:
            st = layer_stats.get(lid)
            if st is None:
                raise OnnxAmpError(
                    f"layer {lid} (unit {unit}) has no sensitivity annotations; run `onnx-amp calibrate` first"
                )
            total += float(predicted_mse(st, a[0], a[1]))
        return total

    return f


def unit_shift_from_stats(layer_stats: dict[str, Any], unit_layers: dict[str, list[str]]
                          ) -> Callable[[str, Assignment], float] | None:
    """unit_shift(unit, (w, a)) = sum over the unit's layers of ``passes.lossmodel.predicted_shift``;
    ``None`` when the figures carry no mean shifts (the ``ideal`` and ``measured`` loss models)."""
    from onnx_amp.passes.lossmodel import loss_model_of, predicted_shift

    if loss_model_of(layer_stats) != "shift":
        return None

    def f(unit: str, a: Assignment) -> float:
        return sum(predicted_shift(layer_stats[lid], a[0], a[1]) for lid in unit_layers[unit] if lid in layer_stats)

    return f


def _step_125(x: float) -> float:
    """The largest 1, 2 or 5 times a power of ten that is <= ``x`` (``x`` > 0)."""
    e = math.floor(math.log10(x))
    for m in (5, 2, 1):
        step = float(f"{m}e{e}")  # exact decimal steps: 5e-06, not 4.9999999999999996e-06
        if step <= x * (1 + 1e-12):
            return step
    return float(f"1e{e}")


def gain_resolution(regions: dict[str, Any]) -> float:
    """The resolution of the measured time gains of a gain table (``onnx_amp.gains["regions"]``):
    the largest 1-2-5 step not above the median ``spread`` (per-round IQR) of its measured
    configurations; 0 when nothing was measured."""
    spreads = [float(c.get("spread") or 0.0) for r in regions.values() if r.get("time_source") == "measured"
               for c in r.get("configs", [])[1:]]
    spreads = [x for x in spreads if math.isfinite(x) and x > 0]
    return _step_125(float(np.median(spreads))) if spreads else 0.0


def settle_measured_gains(regions: dict[str, Any], resolution: float | None = None) -> dict[str, list[dict]]:
    """Region id -> its configurations with the measured ``time_gain_s`` settled (see the module
    docstring): within its own noise (``noisy``, or ``|gain| <= spread``) -> 0, else rounded to
    ``resolution`` (default :func:`gain_resolution`). Roofline tables are returned as they are; the
    input is not modified."""
    res = gain_resolution(regions) if resolution is None else resolution
    out: dict[str, list[dict]] = {}
    for rid, r in regions.items():
        configs = r.get("configs", [])
        if r.get("time_source") != "measured":
            out[rid] = configs
            continue
        settled = []
        for i, c in enumerate(configs):
            g = c.get("time_gain_s")
            if i > 0 and g is not None:
                g = float(g)
                spread = float(c.get("spread") or 0.0)
                if c.get("noisy") or abs(g) <= spread:
                    g = 0.0
                elif res > 0:
                    g = math.floor(abs(g) / res + 0.5) * res * (1.0 if g >= 0 else -1.0)
                c = dict(c, time_gain_s=g)
            settled.append(c)
        out[rid] = settled
    return out


def settle_summary(regions: dict[str, Any]) -> tuple[int, int, float]:
    """(measured configurations, how many of them settle to 0, the resolution) of a gain table."""
    settled = settle_measured_gains(regions)
    n = zeroed = 0
    for rid, r in regions.items():
        if r.get("time_source") != "measured":
            continue
        for c, sc in list(zip(r.get("configs", []), settled[rid]))[1:]:
            n += 1
            zeroed += bool(sc.get("time_gain_s") == 0.0 and c.get("time_gain_s"))
    return n, zeroed, gain_resolution(regions)


def problem_from_model(model, unit_loss: Callable[[str, Assignment], float] | None = None,
                       unit_shift: Callable[[str, Assignment], float] | None = None) -> Problem:
    """Problem from a partitioned (``onnx_amp.regions``), calibrated (``onnx_amp.sens.*``) and
    profiled (``onnx_amp.gains``) model. D of each configuration = sum over its units' layers of
    ``passes.lossmodel.predicted_mse`` and mu the sum of ``predicted_shift`` (the loss model the
    calibration annotations carry); pass ``unit_loss`` (and ``unit_shift``) to use another one."""
    from onnx_amp.passes.gains import read_gains, read_regions

    regions = read_regions(model)
    gains = read_gains(model)
    unit_layers: dict[str, list[str]] = {}
    for r in regions["regions"]:
        units = r.get("units") or {}
        if isinstance(units, dict):
            for u, ls in units.items():
                unit_layers.setdefault(u, []).extend(ls)
    for lid, info in (regions.get("layers") or {}).items():
        u = info.get("unit")
        if u and lid not in unit_layers.setdefault(u, []):
            unit_layers[u].append(lid)
    if unit_loss is None:
        from onnx_amp.passes.lossmodel import layer_stats_from_model

        stats = layer_stats_from_model(model)
        if not stats:
            raise OnnxAmpError("model has no sensitivity annotations (onnx_amp.sens.*); run `onnx-amp calibrate` first")
        unit_loss = unit_loss_from_stats(stats, unit_layers)
        unit_shift = unit_shift_from_stats(stats, unit_layers)

    def lnum(lid: str) -> int:
        try:
            return int(lid.lstrip("L"))
        except ValueError:
            return 1 << 30

    rows = []
    order_ids = [r["id"] for r in regions["regions"]]
    table = gains["regions"]
    units_of = {r["id"]: r.get("units") or {} for r in regions["regions"]}
    missing = [rid for rid in order_ids if rid not in table and units_of[rid]]
    if missing:
        raise OnnxAmpError(
            f"onnx_amp.gains has no table for region(s) {', '.join(missing[:5])}; re-run `onnx-amp profile` on this partition"
        )
    settled = settle_measured_gains(table)
    for rid in order_ids:
        t = table.get(rid)
        if t is None or not t.get("units"):
            continue
        rows.append({"id": rid, "units": t["units"], "configs": settled[rid]})
    unit_order = sorted(unit_layers, key=lambda u: (min((lnum(l) for l in unit_layers[u]), default=1 << 30), u))
    in_tables = {u for r in rows for u in r["units"]}
    unit_order = [u for u in unit_order if u in in_tables]
    # units with a layer calibration could not measure stay high (runtime.calibrate: unmatched layers)
    from onnx_amp.core import annotations as A

    uncalibrated = {u["layer"] for u in (A.get_json(model, A.CALIBRATION) or {}).get("unmatched", [])}
    fixed = {u for u, ls in unit_layers.items() if uncalibrated & set(ls)}
    return Problem.from_tables(rows, unit_loss, tuple(gains["high"]), gains.get("target", "unknown"), unit_order,
                               fixed_high=fixed, unit_shift=unit_shift)
