"""Searching over tau: the accuracy bound (one predicted solve plus verification, or the bisection),
the Pareto sweep, and relative bounds.

- :func:`solve_to_bound`: the loss model predicts the task metric of a plan from its predicted
  figures (``predict_drop(V, M)``, e.g. perplexity ``exp(M)``: ``runtime.metric_model``), so the
  plan at the bound is found by a search over tau with *no* evaluations; one real evaluation
  verifies it, and when it misses, the measured/predicted ratio corrects the prediction for a
  second (and at most a third) plan. Used when the loss model is good (``shift``).
- :func:`bisect_tau`: log-space bisection over tau with a real evaluation per step (about a dozen).
"""

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
    predicted_drop: float | None = None  # solve_to_bound: the drop the corrected loss model predicted


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
    hi_tau = tau_hi if tau_hi is not None else _tau_range(problem)[1]
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


def _drop_check(baseline: float, allowed: float, higher_is_better: bool):
    def drop(v: float) -> float:
        return (baseline - v) if higher_is_better else (v - baseline)

    return drop, (lambda v: drop(v) <= allowed + 1e-12)


def _tau_range(problem: Problem) -> tuple[float, float]:
    lo = problem.min_mse()
    hi = max(problem.all_low_mse(), sum(max(c.mse for c in r.configs) for r in problem.regions)
             + sum(max(abs(c.shift) for c in r.configs) for r in problem.regions) ** 2)
    return lo, hi


def predicted_tau(problem: Problem, predict_drop: Callable[[float, float], float], allowed: float,
                  strategy: str = "ip", metric: str = "time", steps: int = 24, **solve_kw) -> Solution:
    """The plan at the largest tau whose predicted drop ``predict_drop(V, M)`` (its summed variance
    terms and mean shifts, ``Problem.parts``) stays within ``allowed``: a log-space bisection over
    tau that only solves, never evaluates. The least-loss plan when even that one is predicted over."""
    lo, hi = _tau_range(problem)
    cache: dict[float, Solution] = {}

    def sol_at(tau: float) -> Solution:
        if tau not in cache:
            cache[tau] = solve(problem, tau, strategy, metric, **solve_kw)
        return cache[tau]

    def fits(tau: float) -> bool:
        return predict_drop(*problem.parts(sol_at(tau).selection)) <= allowed

    if fits(hi):
        return sol_at(hi)
    best = sol_at(lo)
    a, b = math.log(max(lo, hi * 1e-12, 1e-300)), math.log(hi)
    for _ in range(steps):
        mid = math.exp((a + b) / 2)
        if fits(mid):
            a = math.log(mid)
            best = sol_at(mid) if sol_at(mid).gain >= best.gain else best
        else:
            b = math.log(mid)
    return best


def solve_to_bound(
    problem: Problem,
    evaluate: Callable[[dict], float],
    max_drop: float,
    predict_drop: Callable[[float, float], float],
    *,
    relative: bool = False,
    higher_is_better: bool = True,
    baseline: float,
    strategy: str = "ip",
    metric: str = "time",
    max_evals: int = 3,
    near: float = 0.5,
    **solve_kw,
) -> tuple[Solution, list[BisectionStep]]:
    """The plan with the most gain whose task metric stays within the allowed drop, in at most
    ``max_evals`` real evaluations (see the module docstring).

    ``predict_drop(V, M)``: the predicted drop of the task metric (in its own units, e.g.
    perplexity points) of a plan with summed variance terms V and mean shifts M. Each evaluation
    updates the correction ``c`` = measured / predicted drop of the plan just measured (a plan
    that measures no drop halves it), and the next plan is the one whose corrected prediction meets
    the bound. Stops at the first plan that meets the bound with at least ``near`` of the allowed
    drop used, or when the next plan would repeat one already measured. Returns the best plan
    measured within the bound (all-high when none was) and the steps.
    """
    allowed = max_drop * abs(baseline) if relative else max_drop
    drop_of, ok = _drop_check(baseline, allowed, higher_is_better)
    history: list[BisectionStep] = []
    seen: dict[str, float] = {}
    best: Solution | None = None
    c = 1.0
    for _ in range(max_evals):
        sol = predicted_tau(problem, lambda v, m, c=c: c * predict_drop(v, m), allowed, strategy, metric, **solve_kw)
        key = json.dumps(sol.plan["units"], sort_keys=True)
        if key in seen:
            break
        v = seen[key] = float(evaluate(sol.plan))
        pred = predict_drop(*problem.parts(sol.selection))
        good, measured = ok(v), drop_of(v)
        history.append(BisectionStep(sol.tau, v, good, sol.gain, sol.predicted_mse, c * pred))
        log.info("bound: tau=%.4g -> metric %.6g (%s; predicted drop %.4g, measured %.4g, allowed %.4g), gain %.4g",
                 sol.tau, v, "ok" if good else "too lossy", c * pred, measured, allowed, sol.gain)
        if good and (best is None or sol.gain > best.gain):
            best = sol
        if good and measured >= near * allowed:
            break
        c = _corrected(c, pred, measured, good)
    if best is None:
        log.warning("bound: no plan measured within the bound in %d evaluation(s); returning all-high", len(history))
        best = solve(problem, float("inf"), "uniform-high", metric)
    return best, history


def _corrected(c: float, pred: float, measured: float, good: bool) -> float:
    """The next correction factor: measured / predicted drop, kept within 1/8..8 of the last one, and
    at least doubled after a miss and at most halved after a hit (so the next plan moves)."""
    ratio = measured / pred if pred > 0 and measured > 0 else (c / 2 if good else c * 2)
    ratio = min(max(ratio, c / 8), c * 8)
    return max(ratio, 2 * c) if not good else min(ratio, c / 2)


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
