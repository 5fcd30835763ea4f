"""Searching over tau: the accuracy bound's bisection, the Pareto sweep, and relative bounds."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from onnx_amp.core.errors import OnnxAmpError
from onnx_amp.passes.problem import Problem
from onnx_amp.passes.strategies import Solution, solve

log = logging.getLogger("onnx_amp.solve")


def relative_tau(problem: Problem, r: float) -> float:
    """tau as a fraction ``r`` of the all-low-precision plan's predicted MSE."""
    if not r > 0:
        raise OnnxAmpError(f"--tau_relative must be > 0 (got {r})")
    return float(r) * problem.all_low_mse()


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
