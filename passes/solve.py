"""Pick a mixed-precision plan and write it into the model: :class:`SolvePass`.

The pieces live in their own modules; this one composes them and keeps the names users import:

- ``passes.problem``: the plain-data :class:`Problem` (regions -> configurations) and
  :func:`problem_from_model`;
- ``passes.ip``: the integer program (:func:`solve_ip`) and its pair terms;
- ``passes.strategies``: the strategy registry (``ip``, ``ip-pairs``, ``random``, ``prefix``,
  ``greedy``, ``pareto-greedy``, ``uniform-high``, ``uniform-low``), :func:`solve` and the plan;
- ``passes.search``: the accuracy bound's bisection over tau, the Pareto sweep, relative tau;
- the Pareto plot moved to ``runtime.plots.plot_pareto`` (passes draw nothing).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import onnx_ir as ir

from onnx_amp.core import annotations as A
from onnx_amp.core.errors import OnnxAmpError
from onnx_amp.passes.base import AmpPassResult, AnnotationPass, PassPreconditionError, require_model_key
from onnx_amp.passes.ip import check_tau, measure_pairs, pair_mse, solve_ip  # noqa: F401
from onnx_amp.passes.problem import (  # noqa: F401
    METRIC_ALIASES, METRICS, Assignment, Config, Problem, Region, normalize_metric, problem_from_model,
    unit_loss_from_stats,
)
from onnx_amp.passes.search import (  # noqa: F401
    BisectionStep, ParetoPoint, bisect_tau, pareto_sweep, relative_tau, tau_grid,
)
from onnx_amp.passes.solver_backend import select_solver
from onnx_amp.passes.strategies import (  # noqa: F401
    STRATEGIES, Solution, Strategy, get_strategy, make_plan, measured_strategies, register_strategy, solve,
    solve_greedy, solve_pareto_greedy, solve_prefix, solve_random, strategy_names,
)


def solver_name_default() -> str:
    """The first solver ``mip`` can really use here (``passes.solver_backend.select_solver``)."""
    return select_solver().name


def plan_object(sol: Solution):
    """The ``passes.plan.Plan`` of a solution."""
    from onnx_amp.passes.plan import Plan

    return Plan.from_json(sol.plan, source=f"solve[{sol.strategy}]")


@dataclasses.dataclass
class SolveResult(AmpPassResult):
    plan: Any = None  # passes.plan.Plan
    solution: Solution | None = None
    problem: Problem | None = None


class SolvePass(AnnotationPass):
    """Pick the plan for an annotated model and write it (``onnx_amp.plan`` on the model,
    ``onnx_amp.precision`` on every layer, through ``passes.plan.ApplyPlanPass``).

    Give ``tau`` (absolute predicted loss MSE) or ``tau_relative`` (fraction of the all-low
    plan's predicted MSE). Returns a :class:`SolveResult` (``.plan``, ``.solution``, ``.problem``;
    also kept on the pass object for one release). Extra keyword arguments go to :func:`solve`
    (``pairs``, ``measure_unit``, ``samples``, ...).
    """

    result_type = SolveResult

    def __init__(self, strategy: str = "ip", tau: float | None = None, metric: str = "time",
                 tau_relative: float | None = None, unit_loss=None, **solve_kw):
        super().__init__()
        if (tau is None) == (tau_relative is None):
            raise OnnxAmpError("give exactly one of tau (absolute predicted loss MSE) or tau_relative")
        get_strategy(strategy)  # unknown names fail here, not after the work
        self.strategy, self.tau, self.tau_relative, self.metric = strategy, tau, tau_relative, metric
        self.unit_loss, self.solve_kw = unit_loss, solve_kw
        self.plan = self.solution = self.problem = None

    def requires(self, model: ir.Model) -> None:
        require_model_key(model, A.REGIONS, "SolvePass", "the partition pass (onnx-amp partition)")
        require_model_key(model, A.GAINS, "SolvePass", "the gains pass (onnx-amp profile)")
        if self.unit_loss is None and not any(A.SENS_A in n.metadata_props for n in A.layer_nodes(model.graph)):
            raise PassPreconditionError("SolvePass: the model has no sensitivity annotations (onnx_amp.sens.*); "
                                        "run onnx-amp calibrate first")

    def annotate(self, model: ir.Model) -> dict:
        from onnx_amp.passes.plan import ApplyPlanPass

        self.problem = problem_from_model(model, self.unit_loss)
        tau = self.tau if self.tau is not None else relative_tau(self.problem, self.tau_relative)
        self.solution = solve(self.problem, tau, self.strategy, self.metric, **self.solve_kw)
        self.plan = plan_object(self.solution)
        target = A.get_json(model, A.TARGET) or (self.problem.target if self.problem.target != "unknown" else None)
        ApplyPlanPass(self.plan, target=target)(model)
        return {"plan": self.plan, "solution": self.solution, "problem": self.problem}
