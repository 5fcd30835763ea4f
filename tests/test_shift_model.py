"""The ``shift`` loss model (issue 12): predicted MSE ``V + M^2``, the integer program that solves it
exactly (against brute force), the curvature probe behind ``M``, the INT8 output-Q term, and the
accuracy bound met with at most 3 evaluations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from onnx_amp.passes.ip import solve_ip
from onnx_amp.passes.lossmodel import LayerStats, loss_model_of, plan_predicted_mse, predicted_mse, predicted_shift
from onnx_amp.passes.problem import Config, Problem, Region
from onnx_amp.passes.search import predicted_tau, solve_to_bound
from onnx_amp.passes.strategies import solve
from onnx_amp.tools.synthetic import random_problem
from test_solve import brute_force  # noqa: E402  (the exhaustive reference of the solver tests)

HI, LO = ("fp32", "fp32"), ("int8", "int8")


def with_shift(p: Problem, seed: int, scale: float) -> Problem:
    """``p`` with a mean shift per unit (lognormal), summed per configuration like the loss model does."""
    rng = np.random.default_rng(seed)
    regions = []
    for r in p.regions:
        mu = {u: float(rng.lognormal(0.0, 1.0)) * scale for u in r.units}
        configs = [Config(c.assign, c.gains, c.mse, sum(mu[u] for u, a in c.assign.items() if tuple(a) != tuple(p.high)))
                   for c in r.configs]
        regions.append(Region(r.id, r.units, configs))
    return Problem(regions, p.high, p.target)


def _solver_usable(name: str) -> bool:
    from onnx_amp.passes.solver_backend import probe_solver

    return probe_solver(name) is None


@pytest.mark.parametrize("solver", ["HiGHS", "CBC"])
def test_ip_with_shift_is_optimal_vs_brute_force(solver):
    if not _solver_usable(solver):
        pytest.skip(f"{solver} not usable by mip here (test_solve checks the fallback)")
    binding = 0
    for seed in range(10):
        p = with_shift(random_problem(4, 4, seed=seed), seed, 1e-2)
        assert p.has_shift
        for frac in (0.05, 0.3, 0.7):
            tau = max(frac * p.all_low_mse(), p.min_mse())
            bg, _ = brute_force(p, tau)
            sel = solve_ip(p, tau, "time", solver_name=solver, max_gap=0.0)
            g, d = p.totals(sel, "time")
            v, m = p.parts(sel)
            assert d == pytest.approx(v + m * m) and d <= tau * (1 + 1e-9)
            assert g == pytest.approx(bg, rel=1e-7, abs=1e-9), (seed, frac)
            # the additive problem (shift ignored) would choose more: the square of the sum binds
            additive = max((p.totals(s, "time")[0] for s in itertools.product(*[range(len(r.configs)) for r in p.regions])
                            if p.parts(s)[0] <= tau), default=-math.inf)
            binding += additive > bg + 1e-9
    assert binding >= 10


def test_shift_problem_strategies_stay_under_tau_and_ip_wins():
    p = with_shift(random_problem(12, 8, seed=5), 5, 2e-2)
    for frac in (0.02, 0.2, 0.8):
        tau = max(frac * p.all_low_mse(), p.min_mse())
        ip = solve(p, tau, "ip")
        v, m = p.parts(ip.selection)
        assert ip.feasible and ip.predicted_mse == pytest.approx(v + m * m)
        for s in ("random", "prefix", "greedy", "pareto-greedy"):
            b = solve(p, tau, s, seed=1)
            assert b.predicted_mse <= tau * (1 + 1e-9)
            assert ip.gain >= b.gain - 1e-4 * abs(b.gain) - 1e-12, (frac, s)


def test_negative_or_mixed_shifts_still_exact():
    p = with_shift(random_problem(3, 4, seed=2), 2, 1e-2)
    rng = np.random.default_rng(0)
    for r in p.regions:
        for c in r.configs:
            c.shift *= float(rng.choice([-1.0, 1.0]))
    p = Problem(p.regions, p.high, p.target)
    for frac in (0.1, 0.5):
        tau = max(frac * p.all_low_mse(), p.min_mse())
        assert p.totals(solve_ip(p, tau, max_gap=0.0), "time")[0] == pytest.approx(brute_force(p, tau)[0], abs=1e-9)


def _stats():
    a = LayerStats("L0", node="conv0", kind="weight", unit="U0", s_a=1.0, s_w=1.0, gsq_a=1.0, amax_a=1.0,
                   gsq_w=np.array([1.0]), amax_w=np.array([1.0]))
    a.extra = {"a": {"int8": 2.0, "bf16": 0.1}, "w": {"int8": 3.0, "bf16": 0.2}, "y": {"int8": 5.0},
               "shift": {"a": {"int8": 0.5, "bf16": 0.01}, "w": {"int8": 0.25}, "y": {"int8": 1.0}}}
    b = LayerStats("L1", node="mm1", kind="weight", unit="U1", s_a=1.0, s_w=1.0, gsq_a=1.0, amax_a=1.0,
                   gsq_w=np.array([1.0]), amax_w=np.array([1.0]))
    b.extra = {"a": {"int8": 1.0}, "w": {"int8": 1.0}, "shift": {"a": {"int8": 0.5}, "w": {"int8": 0.5}}}
    return {"L0": a, "L1": b}


def test_shift_model_terms_and_plan_mse():
    st = _stats()
    assert loss_model_of(st) == "shift"
    # the INT8 output Q term counts only when both operands are INT8
    assert predicted_mse(st["L0"], "int8", "int8") == pytest.approx(2 + 3 + 5)
    assert predicted_mse(st["L0"], "int8", "bf16") == pytest.approx(0.1 + 3)
    assert predicted_shift(st["L0"], "int8", "int8") == pytest.approx(0.5 + 0.25 + 1.0)
    assert predicted_shift(st["L0"], "bf16", "bf16") == pytest.approx(0.01)  # no bf16 weight shift measured
    # V + M^2: the shifts of different layers add before squaring
    plan = {"U0": ("int8", "int8"), "U1": ("int8", "int8")}
    assert plan_predicted_mse(st, plan, default=None) == pytest.approx(10 + 2 + (1.75 + 1.0) ** 2)
    for s in st.values():
        s.extra = {k: v for k, v in s.extra.items() if k != "shift"}
    assert loss_model_of(st) == "measured"
    assert plan_predicted_mse(st, plan, default=None) == pytest.approx(12)


def test_curvature_probe_gives_the_gauss_newton_shift():
    """E[(g'.dz)^2] over the probe's draws = mean_t dz_t^T (diag p - p p^T) dz_t, and half of it is
    the second-order mean change of the per-sample cross-entropy under a small logit perturbation."""
    from onnx_amp.runtime.format_errors import curvature_probe
    from onnx_amp.runtime.losses import LossSpec, causal_lm_loss

    torch.manual_seed(0)
    B, T, V = 2, 6, 5
    z = torch.randn(B, T, V, dtype=torch.float64)
    ids = torch.randint(0, V, (B, T))
    dz = 1e-2 * torch.randn(B, T, V, dtype=torch.float64)
    spec = LossSpec("causal_lm", "logits", lambda o, b: causal_lm_loss(o, b["input_ids"]))
    gen = torch.Generator().manual_seed(0)
    acc = torch.zeros(B, dtype=torch.float64)
    draws = 3000
    for _ in range(draws):
        zz = z.clone().requires_grad_(True)
        probe = curvature_probe(spec, {"logits": zz}, {"input_ids": ids}, gen)
        (g,) = torch.autograd.grad(probe.sum(), zz)
        acc += ((g * dz).sum((1, 2))) ** 2
    p = torch.softmax(z[:, :-1], -1)
    d = dz[:, :-1]
    quad = ((p * d * d).sum(-1) - (p * d).sum(-1) ** 2).mean(1)  # mean_t dz^T H dz
    assert (acc / draws).numpy() == pytest.approx(quad.numpy(), rel=0.1)
    # the true mean loss change of isotropic noise e (antithetic pairs cancel the first order):
    # 1/2 E[e^T H e] = 1/2 s^2 mean_t tr(H_t) = 1/2 s^2 mean_t (1 - ||p_t||^2)

    def ce(x):  # causal_lm_loss in float64
        lp = torch.log_softmax(x[:, :-1], -1)
        return -lp.gather(-1, ids[:, 1:, None]).squeeze(-1).mean(1)

    shifts = []
    for _ in range(400):
        e = 1e-2 * torch.randn(B, T, V, dtype=torch.float64)
        shifts.append(0.5 * (ce(z + e) + ce(z - e)) - ce(z))
    expected = 0.5 * 1e-4 * (1 - (p ** 2).sum(-1)).mean(1)
    assert torch.stack(shifts).mean(0).numpy() == pytest.approx(expected.numpy(), rel=0.1)


def test_solve_to_bound_meets_a_perplexity_bound_in_few_evaluations():
    """A perplexity-like metric exp(M_true) with M_true = k * M (the loss model off by k): one
    evaluation when k = 1, at most 3 otherwise, and the plan is within the bound."""
    p = with_shift(random_problem(15, 8, seed=3), 3, 1e-3)
    base = 20.0

    def predict(v, m):
        return base * (math.exp(m) - 1)

    for k in (1.0, 1.6, 0.6):
        calls = []

        def evaluate(plan, k=k, calls=calls):
            sel = [plan["regions"][r.id] for r in p.regions]
            calls.append(sel)
            return base * math.exp(k * p.parts(sel)[1])

        sol, hist = solve_to_bound(p, evaluate, 0.01, predict, relative=True, higher_is_better=False, baseline=base)
        assert len(calls) <= 3 and len(hist) == len(calls)
        assert base * math.exp(k * p.parts(sol.selection)[1]) <= base * 1.01 + 1e-9
        assert sol.gain > 0
        if k == 1.0:
            assert len(calls) == 1
    # the plan predicted at the bound is the best plan under it: no tau with more gain fits
    best = predicted_tau(p, predict, 0.01 * base)
    assert predict(*p.parts(best.selection)) <= 0.01 * base


def _tiny_model(tiny_models):
    from onnx_amp.passes.modules import AnnotateModulesPass
    from onnx_amp.passes.partition import PartitionPass

    module, args = tiny_models.tiny_mlp()
    model = torch.onnx.export(module, args, dynamo=True, opset_version=21, dynamic_shapes=({0: "batch"},)).model
    AnnotateModulesPass()(model)
    PartitionPass()(model)
    return model


def test_pipeline_meets_the_accuracy_bound_in_at_most_3_evaluations(tmp_path, monkeypatch, tiny_models):
    """``loss_model="shift"`` + ``accuracy_drop``: the plan predicted to meet the bound, verified
    (and corrected) with at most 3 real evaluations; the calibration carries the shift terms."""
    import json

    from onnx_amp.passes.lossmodel import layer_stats_from_model
    from onnx_amp.runtime import evaluate as E
    from onnx_amp.runtime.pipeline import optimize

    calls: list[str] = []
    original = E.PlanEvaluator.evaluate

    def counting(self, units):
        calls.append(json.dumps(units, sort_keys=True))
        return original(self, units)

    monkeypatch.setattr(E.PlanEvaluator, "evaluate", counting)
    rng = np.random.default_rng(0)
    res = optimize(_tiny_model(tiny_models), calibration_data={"x": rng.standard_normal((40, 16)).astype(np.float32)},
                   validation_samples=16, accuracy_drop=0.05, target="cpu", metric="memory", measure=False,
                   pareto=False, output_dir=tmp_path, name="tiny", progress=False, verbose=False, report=False,
                   loss_model="shift")
    assert 1 <= len(set(calls)) <= 3
    assert res.task["after"] >= 0.95 - 1e-9
    assert len(res.plan["units"]) >= 1  # memory gain: the bound let something be lowered
    stats = layer_stats_from_model(res.model)
    assert loss_model_of(stats) == "shift"
    assert all(st.extra["shift"]["a"]["int8"] > 0 for st in stats.values())


class _TinyConvNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 5)

    def forward(self, x):
        h = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.head(h.mean((2, 3)))


def test_int8_output_q_term_predicts_the_lowering_it_models():
    """The CPU lowering's INT8 output Q after a Conv (``int8_output_q="conv"``) is error the operand
    terms do not see: the ``y`` term measures it, and operands + ``y`` predict the emulated plan."""
    from onnx_amp.core import annotations as A
    from onnx_amp.passes.partition import PartitionPass
    from onnx_amp.passes.sensitivity import AnnotateSensitivityPass
    from onnx_amp.runtime.calibrate import calibrate
    from onnx_amp.runtime.format_errors import measure_format_errors
    from onnx_amp.runtime.fakequant import emulate_plan_hooks
    from onnx_amp.runtime.losses import classification_loss
    from onnx_amp.runtime.torch_graph import TorchGraph

    torch.manual_seed(0)
    net = _TinyConvNet().eval()
    x = torch.randn(32, 3, 8, 8)
    model = torch.onnx.export(net, (x[:2],), dynamo=True, opset_version=21, dynamic_shapes=({0: "batch"},)).model
    PartitionPass()(model)
    feeds = {model.graph.inputs[0].name: x.numpy()}
    res = calibrate(model, feeds, batch_size=16, progress=False)
    measure_format_errors(model, feeds, res, ["int8"], batch_size=16, progress=False, int8_output_q="conv")
    AnnotateSensitivityPass(res)(model)
    convs = {lid: st for lid, st in res.layers.items() if "y" in st.extra}
    assert len(convs) == 2 and all(st.extra["y"]["int8"] > 0 for st in convs.values())
    tg = TorchGraph(model)
    out = model.graph.outputs[0].name
    with torch.no_grad():
        ref = tg({model.graph.inputs[0].name: x})[out]
    L0 = classification_loss(ref).double()
    for lid, st in convs.items():
        for n in A.layer_nodes(model.graph):
            n.metadata_props[A.PRECISION] = "w=int8,a=int8" if n.name == st.node else "w=fp32,a=fp32"
        op_hook, out_hook = emulate_plan_hooks(model, int8_output_q="conv")
        with torch.no_grad():
            L = classification_loss(tg({model.graph.inputs[0].name: x}, operand_hook=op_hook,
                                       output_hook=out_hook)[out], ref.argmax(-1)).double()
        measured = float(((L - L0) ** 2).mean())
        assert predicted_mse(st, "int8", "int8") == pytest.approx(measured, rel=0.35), lid
        without_y = predicted_mse(st, "int8", "int8") - st.extra["y"]["int8"]
        assert abs(math.log(measured / without_y)) > abs(math.log(measured / predicted_mse(st, "int8", "int8")))
