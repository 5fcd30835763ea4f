"""The integer program of METHOD.md section 4: binary z[g, c], one configuration per region,
maximize sum T z subject to sum D z <= tau (``mip``, on the solver ``passes.solver_backend`` finds
usable here), optionally with Schaefer-style pair terms for neighbouring units.

Under the ``shift`` loss model the predicted MSE is ``V + M^2`` with ``V = sum D z`` and
``M = sum mu z`` (``passes.lossmodel``): not linear, but convex in ``M``. The program solved is
exact all the same: ``V + s <= tau`` with ``s >= M^2`` kept by tangent cuts
``s >= 2 m M - m^2`` (outer approximation: a grid of cuts first, then a cut at the ``M`` of each
solution that violates ``s >= M^2``, re-solved until none does). The cuts only relax ``s >= M^2``,
so the final plan is optimal for the true constraint, and each added cut removes the solution that
violated it, so it ends.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from onnx_amp.core.errors import OnnxAmpError
from onnx_amp.passes.problem import Problem, normalize_metric
from onnx_amp.passes.solver_backend import select_solver

log = logging.getLogger("onnx_amp.solve")


def _pareto_filter(T: np.ndarray, D: np.ndarray) -> list[int]:
    """Indices of configurations not dominated (lower-or-equal D and higher-or-equal gain)."""
    order = np.lexsort((np.arange(len(T)), -T, D))
    Ts = T[order]
    prev = np.maximum.accumulate(np.concatenate([[-np.inf], Ts[:-1]]))
    return [int(i) for i in order[Ts > prev]]


def _dominance_filter(T: np.ndarray, D: np.ndarray, S: np.ndarray) -> list[int]:
    """Indices of configurations not dominated in (gain up, D down, |mu| down): exact pruning
    under ``V + M^2`` when every ``mu`` has the same sign (then a smaller ``|mu|`` never hurts)."""
    A = np.abs(S)
    idx = np.arange(len(T))
    keep = []
    for i in range(len(T)):
        # j dominates i: at least as good in all three, and strictly better somewhere or equal with a lower index
        geq = (T >= T[i]) & (D <= D[i]) & (A <= A[i]) & (idx != i)
        better = (T > T[i]) | (D < D[i]) | (A < A[i]) | (idx < i)
        if not np.any(geq & better):
            keep.append(i)
    return keep


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


def _warm_start(problem: Problem, arrays, cand: list[list[int]], tau: float, metric: str) -> list[int] | None:
    """A feasible start: the hull greedy under tau, under a smaller budget while its plan's
    ``V + M^2`` exceeds tau (the greedy counts only ``V``), else the least-loss plan."""
    budget = tau
    for _ in range(30):
        sel = _hull_greedy(arrays, cand, budget)
        if problem.totals(sel, metric)[1] <= tau:
            return sel
        budget /= 2
    least = problem.least_loss_selection()
    ok = all(i in c for i, c in zip(least, cand)) and problem.totals(least, metric)[1] <= tau
    return least if ok else None


def check_tau(problem: Problem, tau: float) -> None:
    lo = problem.min_mse()
    if not (tau >= lo * (1 - 1e-12)):
        raise OnnxAmpError(
            f"tau={tau:.6g} is infeasible: the smallest feasible tau is {lo:.6g} (every region at its "
            f"least-loss configuration); raise --tau or use --tau_relative"
        )


@dataclass
class _IP:
    """One integer program: candidate configurations per region, scaled gains and losses."""

    problem: Problem
    arrays: list[tuple[np.ndarray, np.ndarray]]
    cand: list[list[int]]
    pairs: dict[tuple[str, str], float]
    tau: float
    solver_name: str
    max_gap: float
    time_limit: float
    start: list[int] | None = None
    shifts: list[np.ndarray] | None = None  # per region mu of each configuration (the shift model)

    def __post_init__(self):
        #: the M/sqrt(tau) points where the tangent cuts of s >= (M/sqrt(tau))^2 touch (kept across solves)
        self.cuts: list[float] = list(np.linspace(-1.0, 1.0, 21)) if self.shifts is not None else []
        arrays, cand = self.arrays, self.cand
        self.tscale = max((float(np.abs(T[c]).max()) for (T, _), c in zip(arrays, cand) if c), default=1.0) or 1.0
        self.dscale = self.tau if self.tau > 0 else (max(float(D[c].max()) for (_, D), c in zip(arrays, cand)) or 1.0)

    def _model(self):
        import mip

        m = mip.Model(sense=mip.MAXIMIZE, solver_name=self.solver_name)
        m.verbose = 0
        m.max_mip_gap = self.max_gap
        m.max_mip_gap_abs = 1e-9
        try:
            m.threads = 1
        except Exception:  # noqa: BLE001 (a solver without a thread setting)
            pass
        return m

    def _pair_terms(self, m, z, kvars, kcoefs) -> None:
        """y >= x1 + x2 - 1, y <= x1, y <= x2 for each pair (x_u = unit u lowered); y costs the pair term."""
        import mip

        p = self.problem
        for (u1, u2), pen in self.pairs.items():
            xs = []
            for u in (u1, u2):
                g = p.unit_region[u]
                vs = [v for v, i in zip(z[g], self.cand[g]) if tuple(p.regions[g].configs[i].assign[u]) != tuple(p.high)]
                xs.append(mip.LinExpr(vs, [1.0] * len(vs)))
            y = m.add_var(var_type=mip.BINARY)
            m.add_constr(y >= xs[0] + xs[1] - 1)
            m.add_constr(y <= xs[0])
            m.add_constr(y <= xs[1])
            kvars.append(y)
            kcoefs.append(pen / self.dscale)

    def _shift_rows(self, m, z, kvars, kcoefs) -> tuple[Any, Any] | None:
        """The shift model's rows: ``s`` (``M^2 / tau``, into the budget) and ``M / sqrt(tau)`` as a
        linear expression, bounded to [-1, 1] (``M^2 <= tau``), with the tangent cuts so far."""
        if self.shifts is None:
            return None
        root = math.sqrt(self.tau) if self.tau > 0 else 1.0
        mexpr = self._mexpr(z, root)
        s = m.add_var(lb=0.0)
        m.add_constr(mexpr <= 1.0)
        m.add_constr(mexpr >= -1.0)
        for k in self.cuts:
            m.add_constr(s >= 2.0 * k * mexpr - k * k)
        kvars.append(s)
        kcoefs.append(root * root / self.dscale)
        return s, root

    def _optimize(self, m, z, shift_rows) -> list[int]:
        """Optimize; under the shift model add a tangent cut at each solution's ``M`` that violates
        ``s >= (M/sqrt(tau))^2`` and re-solve (see the module docstring)."""
        import mip

        for _ in range(200):
            status = m.optimize(max_seconds=self.time_limit)
            if status not in (mip.OptimizationStatus.OPTIMAL, mip.OptimizationStatus.FEASIBLE):
                self._fail(status)
            sel = [c[int(np.argmax([v.x or 0.0 for v in z[g]]))] for g, c in enumerate(self.cand)]
            if shift_rows is None:
                return sel
            s, root = shift_rows
            k = sum(float(self.shifts[g][i]) for g, i in enumerate(sel)) / root
            # met, or violated only within the solver's feasibility tolerance at a cut already in
            # (solve_ip checks the plan against tau itself and tightens the budget if needed)
            if (s.x or 0.0) >= k * k - 1e-9 or any(abs(k - c) <= 1e-7 for c in self.cuts):
                return sel
            self.cuts.append(k)
            m.add_constr(s >= 2.0 * k * self._mexpr(z, root) - k * k)
        raise OnnxAmpError(f"integer program: the shift cuts did not converge (tau={self.tau:.6g})")

    def _mexpr(self, z, root: float):
        """``M / root`` as a linear expression of the binaries."""
        import mip

        vs, cs = [], []
        for g, c in enumerate(self.cand):
            for v, i in zip(z[g], c):
                if self.shifts[g][i]:
                    vs.append(v)
                    cs.append(float(self.shifts[g][i]) / root)
        return mip.LinExpr(vs, cs)

    def _fail(self, status) -> None:
        import mip

        if status == mip.OptimizationStatus.INFEASIBLE:
            lo = self.problem.min_mse() + min(0.0, sum(min(0.0, p) for p in self.pairs.values()))
            raise OnnxAmpError(f"tau={self.tau:.6g} is infeasible with the pair terms; the smallest feasible tau "
                               f"is at least {lo:.6g}")
        raise OnnxAmpError(f"integer program ended with status {status.name} (solver {self.solver_name}, "
                           f"tau={self.tau:.6g})")

    def solve(self, shrink: float) -> list[int]:
        import mip

        m = self._model()
        z: list[list[Any]] = []
        kvars, kcoefs = [], []
        for g, c in enumerate(self.cand):
            T, D = self.arrays[g]
            zs = [m.add_var(var_type=mip.BINARY, obj=float(T[i]) / self.tscale) for i in c]
            z.append(zs)
            m.add_constr(mip.LinExpr(zs, [1.0] * len(zs)) == 1)
            for v, i in zip(zs, c):
                if D[i]:
                    kvars.append(v)
                    kcoefs.append(float(D[i]) / self.dscale)
        self._pair_terms(m, z, kvars, kcoefs)
        shift_rows = self._shift_rows(m, z, kvars, kcoefs)
        if kvars:
            m.add_constr(mip.LinExpr(kvars, kcoefs) <= self.tau / self.dscale * (1 - shrink))
        if self.start is not None:  # after every row is in: HiGHS drops a solution set before rows are added
            m.start = [(z[g][self.cand[g].index(i)], 1.0) for g, i in enumerate(self.start)]
        return self._optimize(m, z, shift_rows)


def _candidates(problem: Problem, arrays, tau: float, pairs: dict, prune: bool) -> list[list[int]]:
    """Configurations each region may take: undominated ones (exact without pair terms), and only
    those whose extra loss over the region's minimum fits the slack (which also keeps the
    coefficients D/tau bounded, as HiGHS needs: it rejects |a| >= 1e15)."""
    shifts = problem.shift_arrays() if problem.has_shift else None
    one_sign = shifts is None or all((S >= 0).all() for S in shifts) or all((S <= 0).all() for S in shifts)
    if prune and not pairs and shifts is None:
        cand = [_pareto_filter(T, D) for T, D in arrays]
    elif prune and not pairs and one_sign:
        cand = [_dominance_filter(T, D, S) for (T, D), S in zip(arrays, shifts)]
    else:
        cand = [list(range(len(T))) for T, _ in arrays]
    # V + M^2 <= tau: each region's extra D over its least fits the slack of V; with one-signed mu
    # each region's extra |mu| over its least fits the slack of |M|
    v_least = sum(float(D.min()) for _, D in arrays)
    slack = tau - v_least - sum(p for p in pairs.values() if p < 0)
    m_slack = None
    if shifts is not None and one_sign and not pairs:
        m_slack = math.sqrt(max(tau - v_least, 0.0)) - sum(float(np.abs(S).min()) for S in shifts)
    least = problem.least_loss_selection()
    out = []
    for g, ((_, D), c) in enumerate(zip(arrays, cand)):
        keep = [i for i in c if D[i] - D.min() <= slack * (1 + 1e-9) + 1e-300]
        if m_slack is not None:
            S = np.abs(shifts[g])
            keep = [i for i in keep if S[i] - S.min() <= m_slack * (1 + 1e-9) + 1e-300]
        out.append(keep or [least[g]])
    return out


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
    metric = normalize_metric(metric)
    check_tau(problem, tau)
    pairs = {k: v for k, v in (pairs or {}).items() if v != 0.0}
    arrays = problem.arrays(metric)
    cand = _candidates(problem, arrays, tau, pairs, prune)
    if not pairs:
        # trivial case: every region's best-gain candidate fits
        best = [max(c, key=lambda i: (T[i], -D[i])) for (T, D), c in zip(arrays, cand)]
        if problem.totals(best, metric)[1] <= tau:
            return best
    ip = _IP(problem, arrays, cand, pairs, tau, select_solver(solver_name).name, max_gap, time_limit,
             start=None if pairs else _warm_start(problem, arrays, cand, tau, metric),
             shifts=problem.shift_arrays() if problem.has_shift else None)

    def total_d(sel):
        return problem.totals(sel, metric)[1] + pair_mse(problem, sel, pairs)

    # solver feasibility tolerances (~1e-6 relative) can admit a plan a hair over tau: tighten and
    # re-solve until the plan meets tau exactly; the warm start is always feasible as a last resort
    shrink = 1e-9
    for _ in range(4):
        sel = ip.solve(shrink)
        over = total_d(sel) - tau
        if over <= 0:
            return sel
        shrink += over / max(tau, 1e-300) + 1e-7
        log.debug("IP plan exceeds tau by %.3g (solver tolerance); re-solving with rhs shrunk by %.3g", over, shrink)
    if ip.start is not None and total_d(ip.start) <= tau:
        return ip.start
    raise OnnxAmpError(f"integer program could not meet tau={tau:.6g} within solver tolerances; raise tau slightly")


def pair_mse(problem: Problem, selection: Sequence[int], pairs: dict[tuple[str, str], float] | None) -> float:
    if not pairs:
        return 0.0
    low = set()
    for g, ci in enumerate(selection):
        low |= problem.lowered(g, ci)
    return float(sum(p for (a, b), p in pairs.items() if a in low and b in low))


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
