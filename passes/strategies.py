"""Strategies: the integer program and its baselines, behind one registry and one plan format.

Every strategy takes the same inputs (a :class:`~onnx_amp.passes.problem.Problem`, tau, a metric)
and returns a *selection*, one configuration index per region; :func:`solve` runs one by name and
:func:`make_plan` turns any selection into the plan. Built in:

``ip``            the integer program (``passes.ip.solve_ip``): max sum T z s.t. sum D z <= tau.
``ip-pairs``      the same plus measured pair terms for neighbouring units (Schaefer).
``random``        K seeded random plans (per-unit lowering with a random probability), best under tau.
``prefix``        lower the first k units in graph order, largest k under tau.
``greedy``        lower units in order of least predicted sensitivity per unit of gain, skipping
                  those that no longer fit under tau.
``pareto-greedy`` AIMET AMP: per-unit sensitivity measured by lowering one unit at a time (a
                  callback; predicted MSE by default), cumulative greedy Pareto front, binary search
                  along the front to the bound.
``uniform-high`` / ``uniform-low``  everything high / everything low (tau is not used; the plan
                  records whether it meets tau).

Adding a strategy is one function ``fn(problem, tau, metric, ctx) -> selection`` and one
:func:`register_strategy` call.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from onnx_amp.core.errors import OnnxAmpError
from onnx_amp.passes.ip import check_tau, measure_pairs, pair_mse, solve_ip
from onnx_amp.passes.problem import METRICS, Problem, normalize_metric
from onnx_amp.passes.solver_backend import select_solver


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


@dataclass
class SolveContext:
    """What a strategy may need beyond the problem: solver, seeds, measured inputs."""

    samples: int = 200
    seed: int = 0
    solver_name: str | None = None
    pairs: dict[tuple[str, str], float] | None = None
    pair_measure: Callable[[str, str], float] | None = None
    measure_unit: Callable[[str], float] | None = None


@dataclass(frozen=True)
class Strategy:
    """A named way to pick a plan."""

    name: str
    fn: Callable[[Problem, float, str, SolveContext], list[int]]
    description: str = ""
    aliases: tuple[str, ...] = ()
    #: what it measures with real runs: "units" (each unit alone), "pairs" (neighbour pairs) or None
    measures: str | None = None
    uses_tau: bool = True
    uses_solver: bool = False


_STRATEGIES: dict[str, Strategy] = {}
_ALIASES: dict[str, str] = {}


def register_strategy(strategy: Strategy) -> Strategy:
    _STRATEGIES[strategy.name] = strategy
    for a in (strategy.name, *strategy.aliases):
        _ALIASES[a.lower().replace("_", "-")] = strategy.name
    return strategy


def strategy_names() -> tuple[str, ...]:
    return tuple(_STRATEGIES)


def get_strategy(name: str) -> Strategy:
    key = str(name).lower().replace("_", "-")
    if key not in _ALIASES:
        raise OnnxAmpError(f"unknown strategy {name!r}; choose one of: {', '.join(_STRATEGIES)}")
    return _STRATEGIES[_ALIASES[key]]


def measured_strategies() -> tuple[str, ...]:
    """Strategies that need measurements from real runs (``runtime.evaluate.PlanEvaluator``)."""
    return tuple(s.name for s in _STRATEGIES.values() if s.measures)


def _ip(problem, tau, metric, ctx):
    return solve_ip(problem, tau, metric, solver_name=ctx.solver_name)


def _ip_pairs(problem, tau, metric, ctx):
    if ctx.pairs is None:
        if ctx.pair_measure is None:
            raise OnnxAmpError("strategy ip-pairs needs measured pair terms (pairs=... or pair_measure=...)")
        ctx.pairs = measure_pairs(problem, ctx.pair_measure)
    return solve_ip(problem, tau, metric, pairs=ctx.pairs, solver_name=ctx.solver_name)


for _s in (
    Strategy("ip", _ip, "integer program: maximal gain with predicted loss MSE <= tau", uses_solver=True),
    Strategy("ip-pairs", _ip_pairs, "integer program with measured neighbour pair terms (Schaefer)",
             measures="pairs", uses_solver=True),
    Strategy("random", lambda p, t, m, c: solve_random(p, t, m, samples=c.samples, seed=c.seed),
             "best of K seeded random plans under tau"),
    Strategy("prefix", lambda p, t, m, c: solve_prefix(p, t, m), "the first k units in graph order"),
    Strategy("greedy", lambda p, t, m, c: solve_greedy(p, t, m), "least predicted sensitivity per gain first",
             aliases=("sensitivity-greedy",)),
    Strategy("pareto-greedy", lambda p, t, m, c: solve_pareto_greedy(p, t, m, measure_unit=c.measure_unit),
             "AIMET AMP: units measured one at a time, greedy Pareto front", measures="units",
             aliases=("aimet",)),
    Strategy("uniform-high", lambda p, t, m, c: p.all_high_selection(), "every unit high precision", uses_tau=False),
    Strategy("uniform-low", lambda p, t, m, c: p.all_low_selection(), "every unit low precision", uses_tau=False),
):
    register_strategy(_s)

#: the built-in strategy names (``strategy_names()`` includes any registered later)
STRATEGIES = strategy_names()


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
    st = get_strategy(strategy)
    t0 = time.perf_counter()
    if st.uses_tau:
        check_tau(problem, tau)
    choice = select_solver(solver_name) if st.uses_solver else None
    ctx = SolveContext(samples=samples, seed=seed, solver_name=choice.name if choice else solver_name,
                       pairs=pairs, pair_measure=pair_measure, measure_unit=measure_unit)
    sel = st.fn(problem, tau, metric, ctx)
    dt = time.perf_counter() - t0
    g, d = problem.totals(sel, metric)
    d += pair_mse(problem, sel, ctx.pairs if st.measures == "pairs" else None)
    sol = Solution(st.name, metric, float(tau), list(sel), g, d, bool(d <= tau * (1 + 1e-9)), dt,
                   solver=choice.name if choice else None, notes=[choice.note] if choice and choice.note else [])
    sol.plan = make_plan(problem, sol)
    return sol


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
        **({"predicted_shift": problem.parts(sol.selection)[1]} if problem.has_shift else {}),
        "predicted_gain": gains,
        "feasible": sol.feasible,
        **({"solver": sol.solver} if sol.solver else {}),
    }
