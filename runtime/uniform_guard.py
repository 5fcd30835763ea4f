"""The plan against the uniform formats, end to end, before it ships (every measured backend).

The solver adds region gains. A format's end-to-end gain differs from the sum of its region gains
(OpenVINO fuses kernels across region boundaries, and so does ORT once INT8 tensors stay quantized
between regions, ``passes.int8_chains``; region timings on a loaded machine are noisy),
so the solver's mixed plan can be slower than a uniform format that also meets the accuracy bound
(SmolLM2: plan 1.59x, uniform BF16 1.71x over FP32, both within 1 % perplexity; measured). Before
the rewrite, :func:`uniform_guard` evaluates each uniform low format (every unit in it, as far as the
gain table allows; when that misses the bound, the same trimmed to the solver's predicted budget,
:func:`trimmed_uniform`) with the run's plan evaluator (the accuracy bound, exact sessions), times the
plan and the uniform plans that meet the bound side by side on the target's backend, and keeps the
plan unless a uniform one is faster by more than ``MARGIN``.
"""

from __future__ import annotations

from typing import Any

MARGIN = 0.03


def uniform_solution(problem, fmt: str, like) -> Any | None:
    """The solver's Solution for "every unit in ``fmt``" (units the table keeps high stay high);
    None when a region has no such configuration."""
    from onnx_amp.passes.strategies import Solution, make_plan

    high = tuple(problem.high)
    sel = []
    for r in problem.regions:
        best, n_best = None, -1
        for i, cfg in enumerate(r.configs):
            a = [tuple(x) for x in cfg.assign.values()]
            if all(x in ((fmt, fmt), high) for x in a) and sum(x == (fmt, fmt) for x in a) > n_best:
                best, n_best = i, sum(x == (fmt, fmt) for x in a)
        if best is None:
            return None
        sel.append(best)
    g, d = problem.totals(sel, like.metric)
    sol = Solution(f"uniform-{fmt}", like.metric, like.tau, sel, g, d, True, 0.0)
    sol.plan = make_plan(problem, sol)
    return sol


def trimmed_uniform(problem, fmt: str, like) -> Any | None:
    """"As uniform as the budget allows": every unit in ``fmt``, then the units with the largest
    predicted loss (each one's own, lowered alone) put back to high precision one by one until the
    plan's predicted loss MSE is no more than the solver's plan's (``like.predicted_mse``, the level
    the accuracy search verified; its tau can be far looser when gains, not the budget, limited it).
    Neighbouring units stay lowered together far more than in the solver's plan, whose region gains
    cannot see what a runtime wins by fusing across region boundaries (INT8 and BF16 chains). None
    when no such configuration exists."""
    from onnx_amp.passes.strategies import Solution, make_plan

    high = tuple(problem.high)

    def config_for(gi: int, low: set[str]) -> int | None:
        want = {u: ((fmt, fmt) if u in low else high) for u in problem.regions[gi].units}
        return next((i for i, c in enumerate(problem.regions[gi].configs)
                     if all(tuple(c.assign[u]) == a for u, a in want.items())), None)

    low = {gi: set(r.units) for gi, r in enumerate(problem.regions)}
    sel = [config_for(gi, low[gi]) for gi in range(len(problem.regions))]
    if any(i is None for i in sel):
        return None
    budget = min(like.tau, like.predicted_mse)
    order = sorted((u for r in problem.regions for u in r.units), key=lambda u: -problem.unit_delta(u, like.metric)[1])
    for u in order:
        if problem.totals(sel, like.metric)[1] <= budget:
            break
        gi = problem.unit_region[u]
        i = config_for(gi, low[gi] - {u})
        if i is None:
            continue
        low[gi].discard(u)
        sel[gi] = i
    g, d = problem.totals(sel, like.metric)
    if d > budget or not any(low.values()):
        return None
    sol = Solution(f"trimmed-uniform-{fmt}", like.metric, like.tau, sel, g, d, True, 0.0)
    sol.plan = make_plan(problem, sol)
    return sol


def _within(metric_after: float, ref: dict, drop: float) -> bool:
    before = ref["before"]
    lost = (before - metric_after) if ref["higher_is_better"] else (metric_after - before)
    return lost <= drop * abs(before) + 1e-12


def uniform_guard(st) -> str | None:
    """Replace ``st.solution`` (and the plan on ``st.model``) by the fastest uniform plan within the
    accuracy bound when it beats the plan end to end; returns a note saying what was measured."""
    from onnx_amp.passes.plan import ApplyPlanPass
    from onnx_amp.passes.rewrite import rewrite
    from onnx_amp.passes.solve import plan_object
    from onnx_amp.runtime.timing import backend_of, time_model

    c, ev = st.config, st.evaluator
    cands, outside = [], []
    for f in st.target.low_formats:
        # uniform in f; when that misses the bound, uniform in f trimmed to the solver's budget
        for make in (uniform_solution, trimmed_uniform):
            sol = make(st.problem, f, st.solution)
            if sol is None or sol.plan["units"] == st.solution.plan.get("units"):
                continue
            after = ev.evaluate(sol.plan["units"])["metric"]["after"]
            if _within(after, ev.reference_metric, c.accuracy_drop):
                cands.append((sol, after))
                break
            outside.append(f"{sol.strategy} ({ev.metric_name} {after:.4g})")
    if not cands:
        return (f"kept the solver's plan: the uniform plan(s) {', '.join(outside)} miss the accuracy bound"
                if outside else None)
    models = [rewrite(st.model, "emulate", **st.lowering)[0]]
    for sol, _ in cands:
        m = st.model.clone()
        ApplyPlanPass(plan_object(sol), target=st.target)(m)
        models.append(rewrite(m, "emulate", **st.lowering)[0])
    first = {k: v[:1] for k, v in st.val.items()}
    feeds = {i.name: first[i.name] for i in st.model.graph.inputs if i.name in first}
    tm = time_model(models, feeds, repeats=max(5, c.profile_repeats), seed=c.seed, backend=backend_of(st.target),
                    min_round_s=0.05)
    times = [tm.summary(i)["time_s"] for i in range(len(models))]
    best = min(range(1, len(models)), key=lambda i: times[i])
    what = ", ".join(f"{s.strategy} {times[i + 1] * 1e3:.3f} ms ({ev.metric_name} {a:.4g})"
                     for i, (s, a) in enumerate(cands))
    if times[best] < times[0] * (1 - MARGIN):
        sol = cands[best - 1][0]
        ApplyPlanPass(plan_object(sol), target=st.target)(st.model)
        st.solution = sol
        return (f"shipped {sol.strategy}: within the accuracy bound and faster end to end than the solver's plan "
                f"({times[0] * 1e3:.3f} ms): {what}")
    return f"kept the solver's plan ({times[0] * 1e3:.3f} ms end to end) against the uniform plans within the bound: {what}"
