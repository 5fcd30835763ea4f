"""Pick a mixed-precision plan: the integer program of METHOD.md section 4, and its baselines.

The core works on plain data (a :class:`Problem`: regions -> configurations, each configuration an
assignment per unit, a gain per metric and a predicted loss MSE ``D``), independent of ONNX, so it
can be tested and benchmarked on its own. Thin adapters build a :class:`Problem` from a model that
carries the partition (``onnx_amp.regions``), the calibration (``onnx_amp.sens.*``) and the gain
tables (``onnx_amp.gains``), and :class:`SolvePass` writes the result back (``onnx_amp.plan`` on the
model and ``onnx_amp.precision`` on layers).

Strategies (same inputs, same code path: each one returns a *selection*, one configuration index
per region, and :func:`make_plan` turns every selection into the plan):

``ip``            the integer program: binary z[g,c], one configuration per region, maximize
                  sum T z subject to sum D z <= tau (``mip``; HiGHS when installed, else CBC).
``ip-pairs``      the same plus Schaefer-style inter-layer dependency terms: for neighbouring units
                  (u1, u2) a measured extra loss P of lowering both beyond the sum of each, linearized
                  with y >= x1 + x2 - 1, y <= x1, y <= x2 (x_u = unit u lowered).
``random``        K seeded random plans (per-unit lowering with a random probability), best under tau.
``prefix``        lower the first k units in graph order, largest k under tau.
``greedy``        lower units in order of least predicted sensitivity per unit of gain, skipping
                  those that no longer fit under tau.
``pareto-greedy`` AIMET AMP: per-unit sensitivity measured by lowering one unit at a time (a
                  callback; predicted MSE by default), cumulative greedy Pareto front, binary search
                  along the front to the bound.
``uniform-high`` / ``uniform-low``  everything high / everything low (tau is not used; the plan
                  records whether it meets tau).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import onnx_ir as ir

from onnx_amp.passes.solver_backend import select_solver
from onnx_amp.core.errors import OnnxAmpError

log = logging.getLogger("onnx_amp.solve")

Assignment = tuple[str, str]  # (weight format, activation format)

#: metric name -> key in the ``onnx_amp.gains`` tables
METRICS = {"time": "time_gain_s", "tt": "tt_gain_s", "memory": "mem_gain_bytes"}
METRIC_ALIASES = {
    "time": "time", "et": "time", "measured": "time", "time_gain_s": "time",
    "tt": "tt", "theoretical": "tt", "roofline": "tt", "tt_gain_s": "tt",
    "memory": "memory", "mem": "memory", "mg": "memory", "mem_gain_bytes": "memory",
}

STRATEGIES = ("ip", "ip-pairs", "random", "prefix", "greedy", "pareto-greedy", "uniform-high", "uniform-low")


def normalize_metric(metric: str) -> str:
    try:
        return METRIC_ALIASES[metric.lower()]
    except KeyError:
        raise OnnxAmpError(f"unknown metric {metric!r}; use one of: time (measured), tt (roofline), memory") from None


# --------------------------------------------------------------------------------------------
# plain-data problem
# --------------------------------------------------------------------------------------------


@dataclass
class Config:
    """One configuration of a region: an assignment per unit, gains per metric, predicted MSE."""

    assign: dict[str, Assignment]
    gains: dict[str, float] = field(default_factory=dict)  # metric ("time"/"tt"/"memory") -> gain
    mse: float = 0.0  # D: predicted loss MSE of this configuration (sum over its units)

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
    ) -> "Problem":
        """``regions``: dicts ``{"id", "units", "configs": [{"assign": {u: (w, a)}, "time_gain_s"|"gains": ..}]}``.

        D of each configuration = sum over its units of ``unit_loss(unit, (w, a))`` (plug in
        ``passes.lossmodel.predicted_mse`` through :func:`unit_loss_from_stats`).
        """
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
                gains = dict(c.get("gains", {}))
                for m, key in METRICS.items():
                    if key in c and c[key] is not None:
                        gains[m] = float(c[key])
                configs.append(Config(assign, gains, sum(ul(u, assign[u]) for u in units)))
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
        """(total gain, total predicted MSE) of a selection (one config index per region)."""
        g = d = 0.0
        for r, ci in zip(self.regions, selection):
            c = r.configs[ci]
            g += c.gain(metric)
            d += c.mse
        return g, d

    def min_mse(self) -> float:
        return float(sum(min(c.mse for c in r.configs) for r in self.regions))

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
        return c.gain(metric) - h.gain(metric), c.mse - h.mse

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
            try:
                total += float(predicted_mse(st, a[0], a[1]))
            except TypeError:
                total += float(predicted_mse(st, tuple(a)))
        return total

    return f


# --------------------------------------------------------------------------------------------
# the integer program
# --------------------------------------------------------------------------------------------


def solver_name_default() -> str:
    """The first solver ``mip`` can really use here (``passes.solver_backend.select_solver``)."""
    return select_solver().name


def _pareto_filter(T: np.ndarray, D: np.ndarray) -> list[int]:
    """Indices of configurations not dominated (lower-or-equal D and higher-or-equal gain)."""
    order = np.lexsort((np.arange(len(T)), -T, D))
    Ts = T[order]
    prev = np.maximum.accumulate(np.concatenate([[-np.inf], Ts[:-1]]))
    return [int(i) for i in order[Ts > prev]]


def _hull_greedy(arrays: list[tuple[np.ndarray, np.ndarray]], cand: list[list[int]], tau: float) -> list[int]:
    """Feasible multiple-choice-knapsack heuristic (Dantzig-style): start every region at its
    least-loss configuration and take upper-convex-hull steps in order of gain per added MSE while
    they fit. Used as the IP's warm start."""
    sel, steps = [], []
    for g, c in enumerate(cand):
        T, D = arrays[g]
        order = sorted(c, key=lambda i: (D[i], -T[i]))
        hull = [order[0]]
        for i in order[1:]:
            if T[i] <= T[hull[-1]]:
                continue
            while len(hull) >= 2:
                a, b = hull[-2], hull[-1]
                e1 = (T[b] - T[a]) / max(D[b] - D[a], 1e-300)
                e2 = (T[i] - T[b]) / max(D[i] - D[b], 1e-300)
                if e2 >= e1:
                    hull.pop()
                else:
                    break
            hull.append(i)
        sel.append(hull[0])
        for k in range(1, len(hull)):
            dd = D[hull[k]] - D[hull[k - 1]]
            dt = T[hull[k]] - T[hull[k - 1]]
            steps.append((-(dt / max(dd, 1e-300)), g, k, hull[k], dd))
    steps.sort(key=lambda s: (s[0], s[1], s[2]))
    budget = tau - sum(float(arrays[g][1][i]) for g, i in enumerate(sel))
    blocked = set()
    pos = [0] * len(cand)
    for _, g, k, i, dd in steps:
        if g in blocked or pos[g] != k - 1:
            continue
        if dd <= budget:
            budget -= dd
            sel[g] = i
            pos[g] = k
        else:
            blocked.add(g)
    return sel


def check_tau(problem: Problem, tau: float) -> None:
    lo = problem.min_mse()
    if not (tau >= lo * (1 - 1e-12)):
        raise OnnxAmpError(
            f"tau={tau:.6g} is infeasible: the smallest feasible tau is {lo:.6g} (every region at its "
            f"least-loss configuration); raise --tau or use --tau_relative"
        )


def solve_ip(
    problem: Problem,
    tau: float,
    metric: str = "time",
    pairs: dict[tuple[str, str], float] | None = None,
    solver_name: str | None = None,
    max_gap: float = 1e-4,
    time_limit: float = 60.0,
    prune: bool = True,
) -> list[int]:
    """Optimal selection of the integer program (optionally with pair terms).

    D and T are rescaled (by tau and by max |T|) so solver tolerances do not swamp tiny loss MSEs;
    dominated configurations are dropped first (exact when there are no pair terms).
    """
    import mip

    metric = normalize_metric(metric)
    check_tau(problem, tau)
    pairs = {k: v for k, v in (pairs or {}).items() if v != 0.0}
    solver_name = select_solver(solver_name).name
    arrays = problem.arrays(metric)
    # candidate configurations per region
    if prune and not pairs:
        cand = [_pareto_filter(T, D) for T, D in arrays]
    else:
        cand = [list(range(len(T))) for T, _ in arrays]
    # exact: a configuration whose extra loss over its region's minimum exceeds the slack can never fit
    # (also keeps coefficients D/tau bounded, which HiGHS needs: it rejects |a| >= 1e15)
    slack = tau - problem.min_mse() - sum(p for p in pairs.values() if p < 0)
    cand = [[i for i in c if D[i] - D.min() <= slack * (1 + 1e-9) + 1e-300] or [int(np.argmin(D))]
            for (T, D), c in zip(arrays, cand)]
    if not pairs:
        # trivial case: every region's best-gain candidate fits
        best = [max(c, key=lambda i: (T[i], -D[i])) for (T, D), c in zip(arrays, cand)]
        if sum(float(arrays[g][1][i]) for g, i in enumerate(best)) <= tau:
            return best
    start = None if pairs else _hull_greedy(arrays, cand, tau)
    tscale = max((float(np.abs(T[c]).max()) for (T, _), c in zip(arrays, cand) if c), default=1.0) or 1.0
    dscale = tau if tau > 0 else (max(float(D[c].max()) for (_, D), c in zip(arrays, cand)) or 1.0)

    def build_and_solve(shrink: float):
        m = mip.Model(sense=mip.MAXIMIZE, solver_name=solver_name)
        m.verbose = 0
        m.max_mip_gap = max_gap
        m.max_mip_gap_abs = 1e-9
        try:
            m.threads = 1
        except Exception:
            pass
        z: list[list[Any]] = []
        kvars, kcoefs = [], []
        for g, c in enumerate(cand):
            T, D = arrays[g]
            zs = [m.add_var(var_type=mip.BINARY, obj=float(T[i]) / tscale) for i in c]
            z.append(zs)
            m.add_constr(mip.LinExpr(zs, [1.0] * len(zs)) == 1)
            for v, i in zip(zs, c):
                if D[i]:
                    kvars.append(v)
                    kcoefs.append(float(D[i]) / dscale)
        for (u1, u2), pen in pairs.items():
            xs = []
            for u in (u1, u2):
                g = problem.unit_region[u]
                vs = [v for v, i in zip(z[g], cand[g]) if tuple(problem.regions[g].configs[i].assign[u]) != tuple(problem.high)]
                xs.append(mip.LinExpr(vs, [1.0] * len(vs)))
            y = m.add_var(var_type=mip.BINARY)
            m.add_constr(y >= xs[0] + xs[1] - 1)
            m.add_constr(y <= xs[0])
            m.add_constr(y <= xs[1])
            kvars.append(y)
            kcoefs.append(pen / dscale)
        rhs = tau / dscale
        if kvars:
            m.add_constr(mip.LinExpr(kvars, kcoefs) <= rhs * (1 - shrink))
        if start is not None:  # after every row is in: HiGHS drops a solution set before rows are added
            m.start = [(z[g][cand[g].index(i)], 1.0) for g, i in enumerate(start)]
        status = m.optimize(max_seconds=time_limit)
        if status not in (mip.OptimizationStatus.OPTIMAL, mip.OptimizationStatus.FEASIBLE):
            if status == mip.OptimizationStatus.INFEASIBLE:
                lo = problem.min_mse() + min(0.0, sum(min(0.0, p) for p in pairs.values()))
                raise OnnxAmpError(
                    f"tau={tau:.6g} is infeasible with the pair terms; the smallest feasible tau is at least {lo:.6g}"
                )
            raise OnnxAmpError(f"integer program ended with status {status.name} (solver {solver_name}, tau={tau:.6g})")
        sel = []
        for g, c in enumerate(cand):
            vals = [v.x or 0.0 for v in z[g]]
            sel.append(c[int(np.argmax(vals))])
        return sel

    def total_d(sel):
        return problem.totals(sel, metric)[1] + pair_mse(problem, sel, pairs)

    # solver feasibility tolerances (~1e-6 relative) can admit a plan a hair over tau: tighten and
    # re-solve until the plan meets tau exactly; the warm start is always feasible as a last resort
    shrink = 1e-9
    for _ in range(4):
        sel = build_and_solve(shrink)
        over = total_d(sel) - tau
        if over <= 0:
            return sel
        shrink += over / max(tau, 1e-300) + 1e-7
        log.debug("IP plan exceeds tau by %.3g (solver tolerance); re-solving with rhs shrunk by %.3g", over, shrink)
    if start is not None and total_d(start) <= tau:
        return start
    raise OnnxAmpError(f"integer program could not meet tau={tau:.6g} within solver tolerances; raise tau slightly")


def pair_mse(problem: Problem, selection: Sequence[int], pairs: dict[tuple[str, str], float] | None) -> float:
    if not pairs:
        return 0.0
    low = set()
    for g, ci in enumerate(selection):
        low |= problem.lowered(g, ci)
    return float(sum(p for (a, b), p in pairs.items() if a in low and b in low))


# --------------------------------------------------------------------------------------------
# baselines
# --------------------------------------------------------------------------------------------


def solve_random(problem: Problem, tau: float, metric: str = "time", samples: int = 200, seed: int = 0) -> list[int]:
    """Best of ``samples`` seeded random plans under tau (each lowers every unit with probability p,
    p itself uniform in (0, 1) per sample, so plans of every size are drawn). All-high if none fits."""
    rng = np.random.default_rng(seed)
    best = problem.all_high_selection()
    bg, bd = problem.totals(best, metric)
    best_key = (bg, -bd) if bd <= tau else (-math.inf, -bd)
    units = problem.unit_order
    for _ in range(samples):
        p = rng.uniform()
        chosen = [u for u, x in zip(units, rng.uniform(size=len(units))) if x < p]
        sel = problem.select_lowered(chosen)
        g, d = problem.totals(sel, metric)
        if d <= tau and (g, -d) > best_key:
            best, best_key = sel, (g, -d)
    return best


def solve_prefix(problem: Problem, tau: float, metric: str = "time") -> list[int]:
    """Lower the first k units in graph order; the largest k whose plan is under tau."""
    best = problem.all_high_selection()
    if problem.totals(best, metric)[1] > tau:
        return best
    units = problem.unit_order
    for k in range(1, len(units) + 1):
        sel = problem.select_lowered(units[:k])
        if problem.totals(sel, metric)[1] <= tau:
            best = sel
    return best


def _ratio_order(problem: Problem, metric: str, sens: dict[str, float]) -> list[str]:
    def key(u):
        g, _ = problem.unit_delta(u, metric)
        s = max(sens[u], 0.0)
        if g <= 0:
            return (1, -g, s, problem.unit_order.index(u))  # no gain: last, least harmful first
        return (0, s / g, 0.0, problem.unit_order.index(u))

    return sorted(sens, key=key)  # the units given sensitivities


def solve_greedy(problem: Problem, tau: float, metric: str = "time", skip_no_gain: bool = True) -> list[int]:
    """Lower units in order of least predicted sensitivity per unit of gain, keeping each that fits."""
    sens = {u: problem.unit_delta(u, metric)[1] for u in problem.unit_order}
    chosen: list[str] = []
    best = problem.all_high_selection()
    if problem.totals(best, metric)[1] > tau:
        return best
    for u in _ratio_order(problem, metric, sens):
        if skip_no_gain and problem.unit_delta(u, metric)[0] <= 0:
            continue
        sel = problem.select_lowered(chosen + [u])
        if problem.totals(sel, metric)[1] <= tau:
            chosen.append(u)
            best = sel
    return best


def pareto_front_greedy(
    problem: Problem, metric: str = "time", measure_unit: Callable[[str], float] | None = None
) -> tuple[list[str], list[list[int]]]:
    """AIMET-AMP phase 1+2: per-unit sensitivity (``measure_unit(u)``: loss increase with only u lowered;
    predicted MSE by default), units sorted by sensitivity per gain, cumulative front (k first units)."""
    useful = [u for u in problem.unit_order if problem.unit_delta(u, metric)[0] > 0]  # others never lowered
    if measure_unit is None:
        sens = {u: problem.unit_delta(u, metric)[1] for u in useful}
    else:
        from tqdm.auto import tqdm

        sens = {u: float(measure_unit(u)) for u in tqdm(useful, desc="unit sensitivity", unit="unit", leave=False)}
    order = _ratio_order(problem, metric, sens)
    front = [problem.select_lowered(order[:k]) for k in range(len(order) + 1)]
    return order, front


def solve_pareto_greedy(
    problem: Problem,
    tau: float,
    metric: str = "time",
    measure_unit: Callable[[str], float] | None = None,
    accept: Callable[[list[int]], bool] | None = None,
) -> list[int]:
    """AIMET-AMP phase 3: binary search along the front for the furthest point that is accepted
    (``accept(selection)``, e.g. a real accuracy bound; default: predicted MSE <= tau)."""
    _, front = pareto_front_greedy(problem, metric, measure_unit)
    if accept is None:
        accept = lambda sel: problem.totals(sel, metric)[1] <= tau  # noqa: E731
    lo, hi = 0, len(front) - 1  # front[lo] accepted (all-high assumed), find max accepted
    if not accept(front[0]):
        return front[0]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if accept(front[mid]):
            lo = mid
        else:
            hi = mid - 1
    return front[lo]


# --------------------------------------------------------------------------------------------
# one entry point, one plan format
# --------------------------------------------------------------------------------------------


@dataclass
class Solution:
    strategy: str
    metric: str
    tau: float
    selection: list[int]
    gain: float
    predicted_mse: float  # includes pair terms for ip-pairs
    feasible: bool
    seconds: float
    plan: dict = field(default_factory=dict)
    solver: str | None = None  # the integer-program solver that ran (ip strategies)
    notes: list[str] = field(default_factory=list)


def solve(
    problem: Problem,
    tau: float,
    strategy: str = "ip",
    metric: str = "time",
    *,
    pairs: dict[tuple[str, str], float] | None = None,
    pair_measure: Callable[[str, str], float] | None = None,
    measure_unit: Callable[[str], float] | None = None,
    samples: int = 200,
    seed: int = 0,
    solver_name: str | None = None,
) -> Solution:
    """Run a strategy by name and build its plan (same path for every strategy)."""
    metric = normalize_metric(metric)
    strategy = strategy.lower().replace("_", "-")
    if strategy not in STRATEGIES:
        raise OnnxAmpError(f"unknown strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")
    t0 = time.perf_counter()
    if strategy not in ("uniform-high", "uniform-low"):
        check_tau(problem, tau)
    choice = select_solver(solver_name) if strategy in ("ip", "ip-pairs") else None
    solver_name = choice.name if choice else solver_name
    if strategy == "ip":
        sel = solve_ip(problem, tau, metric, solver_name=solver_name)
    elif strategy == "ip-pairs":
        if pairs is None:
            if pair_measure is None:
                raise OnnxAmpError("strategy ip-pairs needs measured pair terms (pairs=... or pair_measure=...)")
            pairs = measure_pairs(problem, pair_measure)
        sel = solve_ip(problem, tau, metric, pairs=pairs, solver_name=solver_name)
    elif strategy == "random":
        sel = solve_random(problem, tau, metric, samples=samples, seed=seed)
    elif strategy == "prefix":
        sel = solve_prefix(problem, tau, metric)
    elif strategy == "greedy":
        sel = solve_greedy(problem, tau, metric)
    elif strategy == "pareto-greedy":
        sel = solve_pareto_greedy(problem, tau, metric, measure_unit=measure_unit)
    elif strategy == "uniform-high":
        sel = problem.all_high_selection()
    else:
        sel = problem.all_low_selection()
    dt = time.perf_counter() - t0
    g, d = problem.totals(sel, metric)
    d += pair_mse(problem, sel, pairs if strategy == "ip-pairs" else None)
    sol = Solution(strategy, metric, float(tau), list(sel), g, d, bool(d <= tau * (1 + 1e-9)), dt,
                   solver=choice.name if choice else None, notes=[choice.note] if choice and choice.note else [])
    sol.plan = make_plan(problem, sol)
    return sol


def measure_pairs(problem: Problem, pair_measure: Callable[[str, str], float],
                  clip_negative: bool = True) -> dict[tuple[str, str], float]:
    """Pair terms for neighbouring units: ``pair_measure(u1, u2)`` returns the extra loss of lowering
    both beyond the sum of each (e.g. measured(both) - measured(u1) - measured(u2) + measured(none)).

    ``clip_negative`` (default): negative terms become 0. A measured interaction is a difference of
    four noisy loss measurements; a negative one is a reward the integer program exploits (on
    MiniLM with 16 held-out sentences it drove a plan's predicted MSE below zero), so only added
    loss is trusted."""
    try:
        from tqdm.auto import tqdm
    except Exception:  # pragma: no cover
        tqdm = lambda x, **k: x  # noqa: E731
    out = {(a, b): float(pair_measure(a, b)) for a, b in tqdm(problem.neighbour_pairs(), desc="pair terms", leave=False)}
    return {k: max(v, 0.0) for k, v in out.items()} if clip_negative else out


def make_plan(problem: Problem, sol: Solution) -> dict:
    """plan.json / ``onnx_amp.plan`` dict (units not listed stay at the high default)."""
    units: dict[str, dict[str, str]] = {}
    for gi, ci in enumerate(sol.selection):
        for u, a in problem.regions[gi].configs[ci].assign.items():
            if tuple(a) != tuple(problem.high):
                units[u] = {"weight": a[0], "activation": a[1]}
    gains = {}
    for m in METRICS:
        if any(m in c.gains for r in problem.regions for c in r.configs):
            gains[m] = problem.totals(sol.selection, m)[0]
    return {
        "version": 1,
        "target": problem.target,
        "strategy": sol.strategy,
        "metric": sol.metric,
        "tau": sol.tau,
        "high": {"weight": problem.high[0], "activation": problem.high[1]},
        "units": units,
        "regions": {problem.regions[gi].id: ci for gi, ci in enumerate(sol.selection)},
        "predicted_mse": sol.predicted_mse,
        "predicted_gain": gains,
        "feasible": sol.feasible,
        **({"solver": sol.solver} if sol.solver else {}),
    }


def relative_tau(problem: Problem, r: float) -> float:
    """tau as a fraction ``r`` of the all-low-precision plan's predicted MSE."""
    if not r > 0:
        raise OnnxAmpError(f"--tau_relative must be > 0 (got {r})")
    return float(r) * problem.all_low_mse()


# --------------------------------------------------------------------------------------------
# accuracy target: bisection over tau
# --------------------------------------------------------------------------------------------


@dataclass
class BisectionStep:
    tau: float
    metric_value: float
    ok: bool
    gain: float
    predicted_mse: float


def bisect_tau(
    problem: Problem,
    evaluate: Callable[[dict], float],
    max_drop: float,
    *,
    relative: bool = False,
    higher_is_better: bool = True,
    baseline: float | None = None,
    strategy: str = "ip",
    metric: str = "time",
    steps: int = 12,
    tau_hi: float | None = None,
    **solve_kw,
) -> tuple[Solution, list[BisectionStep]]:
    """Largest tau (log-space bisection) whose plan's task metric stays within the allowed drop.

    ``evaluate(plan_dict) -> metric`` runs the rewritten model (accuracy: higher is better;
    perplexity: ``higher_is_better=False``). ``max_drop`` is absolute, or a fraction of the baseline
    when ``relative``. ``baseline`` defaults to evaluating the all-high plan. Each step is logged.
    Evaluations of identical plans are cached.
    """
    cache: dict[str, float] = {}

    def ev(sol: Solution) -> float:
        key = json.dumps(sol.plan["units"], sort_keys=True)
        if key not in cache:
            cache[key] = float(evaluate(sol.plan))
        return cache[key]

    lo_tau = problem.min_mse()
    hi_tau = tau_hi if tau_hi is not None else max(problem.all_low_mse(), sum(max(c.mse for c in r.configs) for r in problem.regions))
    if baseline is None:
        baseline = ev(solve(problem, float("inf"), "uniform-high", metric))
    allowed = max_drop * abs(baseline) if relative else max_drop

    def ok(v: float) -> bool:
        drop = (baseline - v) if higher_is_better else (v - baseline)
        return drop <= allowed + 1e-12

    history: list[BisectionStep] = []

    def step(tau: float) -> tuple[Solution, bool]:
        sol = solve(problem, tau, strategy, metric, **solve_kw)
        v = ev(sol)
        good = ok(v)
        history.append(BisectionStep(tau, v, good, sol.gain, sol.predicted_mse))
        log.info("bisection: tau=%.4g -> metric %.6g (%s; baseline %.6g, allowed drop %.4g), gain %.4g",
                 tau, v, "ok" if good else "too lossy", baseline, allowed, sol.gain)
        return sol, good

    best_sol, good = step(hi_tau)
    if good:
        return best_sol, history
    lo_sol, good = step(lo_tau)
    if not good:
        log.warning("bisection: even the least-loss plan (tau=%.4g) misses the accuracy bound; returning all-high", lo_tau)
        return solve(problem, float("inf"), "uniform-high", metric), history
    best_sol = lo_sol
    a, b = math.log(max(lo_tau, 1e-300)), math.log(hi_tau)
    for _ in range(steps):
        mid = math.exp((a + b) / 2)
        sol, good = step(mid)
        if good:
            a, best_sol = math.log(mid), sol if sol.gain >= best_sol.gain else best_sol
        else:
            b = math.log(mid)
    return best_sol, history


# --------------------------------------------------------------------------------------------
# Pareto sweep
# --------------------------------------------------------------------------------------------


@dataclass
class ParetoPoint:
    strategy: str
    tau: float
    gain: float
    predicted_mse: float
    feasible: bool
    plan: dict
    measured_mse: float | None = None


def tau_grid(problem: Problem, n: int = 25) -> list[float]:
    """Log-spaced taus from where the first unit fits (least-loss plan + the smallest single-unit
    increase) to just above the all-low plan."""
    base = problem.min_mse()
    deltas = [d for d in (problem.unit_delta(u, "time")[1] for u in problem.unit_order) if d > 0]
    lo = max(base + (min(deltas) if deltas else 0.0), 1e-30)
    hi = max(problem.all_low_mse(), lo * 10)
    return [float(x) for x in np.geomspace(lo * (1 + 1e-9), hi * 1.05, n)]


def pareto_sweep(
    problem: Problem,
    strategies: Sequence[str] = ("ip", "greedy", "prefix", "random"),
    metric: str = "time",
    taus: Sequence[float] | None = None,
    n: int = 25,
    **solve_kw,
) -> list[ParetoPoint]:
    taus = list(taus) if taus is not None else tau_grid(problem, n)
    pts = []
    for s in strategies:
        if s in ("uniform-high", "uniform-low"):
            sol = solve(problem, taus[-1], s, metric, **solve_kw)
            pts.append(ParetoPoint(s, sol.tau, sol.gain, sol.predicted_mse, sol.feasible, sol.plan))
            continue
        for t in taus:
            sol = solve(problem, t, s, metric, **solve_kw)
            pts.append(ParetoPoint(s, t, sol.gain, sol.predicted_mse, sol.feasible, sol.plan))
    return pts


def plot_pareto(
    points: Sequence[ParetoPoint],
    path,
    metric: str = "time",
    chosen: Solution | None = None,
    measure: Callable[[dict], float] | None = None,
    n_measured: int = 4,
    title: str | None = None,
) -> list[ParetoPoint]:
    """PNG: predicted gain vs predicted loss MSE per strategy; with ``measure(plan) -> measured MSE``
    a few points per strategy are also drawn at their measured MSE (hollow markers); the chosen plan
    is starred. Returns the points that were measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = normalize_metric(metric)
    unit = {"time": "measured time gain [s]", "tt": "roofline time gain [s]", "memory": "memory gain [bytes]"}[metric]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    measured = []
    strategies = list(dict.fromkeys(p.strategy for p in points))
    for i, s in enumerate(strategies):
        ps = sorted([p for p in points if p.strategy == s], key=lambda p: p.predicted_mse)
        color = f"C{i}"
        xs = [max(p.predicted_mse, 1e-30) for p in ps]
        ax.plot(xs, [p.gain for p in ps], "o-" if len(ps) > 1 else "s", color=color, ms=3, label=s)
        if measure is not None and ps and not s.startswith("uniform"):
            idx = np.unique(np.linspace(0, len(ps) - 1, min(n_measured, len(ps))).round().astype(int))
            for j in idx:
                p = ps[j]
                if p.measured_mse is None:
                    p.measured_mse = float(measure(p.plan))
                measured.append(p)
                ax.plot([max(p.measured_mse, 1e-30)], [p.gain], "o", mfc="none", color=color, ms=7)
    if measure is not None:
        ax.plot([], [], "o", mfc="none", color="gray", label="measured loss MSE")
    if chosen is not None:
        ax.plot([max(chosen.predicted_mse, 1e-30)], [chosen.gain], "*", color="k", ms=14, label=f"chosen ({chosen.strategy})")
        ax.axvline(chosen.tau, color="gray", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("loss MSE (predicted; hollow = measured)")
    ax.set_ylabel(f"predicted {unit}")
    ax.set_title(title or "Pareto sweep over tau")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return measured


# --------------------------------------------------------------------------------------------
# adapters: annotated ir.Model <-> Problem / Plan
# --------------------------------------------------------------------------------------------


def problem_from_model(model, unit_loss: Callable[[str, Assignment], float] | None = None) -> Problem:
    """Problem from a partitioned (``onnx_amp.regions``), calibrated (``onnx_amp.sens.*``) and
    profiled (``onnx_amp.gains``) model. D of each configuration = sum over its units' layers of
    ``passes.lossmodel.predicted_mse``; pass ``unit_loss`` to use another loss model."""
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

    def lnum(lid: str) -> int:
        try:
            return int(lid.lstrip("L"))
        except ValueError:
            return 1 << 30

    rows = []
    order_ids = [r["id"] for r in regions["regions"]]
    table = gains["regions"]
    missing = [rid for rid in order_ids if rid not in table and any(True for _ in (regions["regions"][order_ids.index(rid)].get("units") or {}))]
    if missing:
        raise OnnxAmpError(
            f"onnx_amp.gains has no table for region(s) {', '.join(missing[:5])}; re-run `onnx-amp profile` on this partition"
        )
    for rid in order_ids:
        t = table.get(rid)
        if t is None or not t.get("units"):
            continue
        rows.append({"id": rid, "units": t["units"], "configs": t["configs"]})
    unit_order = sorted(unit_layers, key=lambda u: (min((lnum(l) for l in unit_layers[u]), default=1 << 30), u))
    in_tables = {u for r in rows for u in r["units"]}
    unit_order = [u for u in unit_order if u in in_tables]
    return Problem.from_tables(rows, unit_loss, tuple(gains["high"]), gains.get("target", "unknown"), unit_order)


def plan_object(sol: Solution):
    """The rewrite engineer's ``passes.plan.Plan`` for a solution."""
    from onnx_amp.passes.plan import Plan

    return Plan.from_json(sol.plan, source=f"solve[{sol.strategy}]")


class SolvePass(ir.passes.InPlacePass):
    """Pick the plan for an annotated model and write it (``onnx_amp.plan`` on the model,
    ``onnx_amp.precision`` on every layer, through ``passes.plan.ApplyPlanPass``).

    Give ``tau`` (absolute predicted loss MSE) or ``tau_relative`` (fraction of the all-low
    plan's predicted MSE). After the call: ``.plan`` (a ``Plan``), ``.solution``, ``.problem``.
    Extra keyword arguments go to :func:`solve` (``pairs``, ``measure_unit``, ``samples``, ...).
    """

    def __init__(self, strategy: str = "ip", tau: float | None = None, metric: str = "time",
                 tau_relative: float | None = None, unit_loss=None, **solve_kw):
        super().__init__()
        if (tau is None) == (tau_relative is None):
            raise OnnxAmpError("give exactly one of tau (absolute predicted loss MSE) or tau_relative")
        self.strategy, self.tau, self.tau_relative, self.metric = strategy, tau, tau_relative, metric
        self.unit_loss, self.solve_kw = unit_loss, solve_kw
        self.plan = self.solution = self.problem = None

    def call(self, model):
        from onnx_amp.passes.plan import ApplyPlanPass

        self.problem = problem_from_model(model, self.unit_loss)
        tau = self.tau if self.tau is not None else relative_tau(self.problem, self.tau_relative)
        self.solution = solve(self.problem, tau, self.strategy, self.metric, **self.solve_kw)
        self.plan = plan_object(self.solution)
        ApplyPlanPass(self.plan, target=self.problem.target if self.problem.target != "unknown" else None)(model)
        return ir.passes.PassResult(model, True)

