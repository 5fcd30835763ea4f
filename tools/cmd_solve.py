"""``onnx-amp solve IN.onnx --strategy ip --metric time|tt|memory (--tau X | --tau_relative R) -o OUT.onnx``.

IN must be partitioned, calibrated and profiled (``onnx_amp.regions``, ``onnx_amp.sens.*``,
``onnx_amp.gains``). ``pareto-greedy`` and ``ip-pairs`` measure their inputs (per-unit loss MSE,
neighbour pair terms) with ONNX Runtime on held-out samples given by ``--eval_data``
(``runtime.evaluate.PlanEvaluator``); without it ``pareto-greedy`` orders units by predicted
sensitivity. Writes OUT with ``onnx_amp.plan`` on the model and ``onnx_amp.precision`` on
every layer, ``plan.json`` (beside OUT unless ``--plan``), and with ``--pareto`` a PNG of the Pareto
sweep (predicted gain vs predicted loss MSE per strategy, chosen plan starred), all or nothing.
Every number and name is checked before the model loads. IN is never modified.
"""

from __future__ import annotations

import sys
from pathlib import Path

from onnx_amp.core.errors import OnnxAmpError
from onnx_amp.tools.cli import add_loss_flags, number


def register(subparsers) -> None:
    from onnx_amp.passes.solve import STRATEGIES

    p = subparsers.add_parser(
        "solve",
        help="pick the mixed-precision plan (integer program or a baseline) under a predicted loss MSE bound",
        description="Choose one configuration per region maximizing the gain (measured time, roofline time or "
        "memory) with predicted loss MSE <= tau; write the plan into the model and plan.json.",
    )
    p.add_argument("input", metavar="IN.onnx", help="a partitioned, calibrated and profiled model")
    p.add_argument("--strategy", default="ip", choices=list(STRATEGIES),
                   help="ip (default), ip-pairs (needs --eval_data), random, prefix, greedy, pareto-greedy, "
                   "uniform-high, uniform-low")
    p.add_argument("--metric", default="time", help="time (measured, falls back to roofline), tt (roofline) or memory")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--tau", type=number(float, 0), help="bound on the predicted loss MSE (absolute, finite, >= 0)")
    g.add_argument("--tau_relative", type=number(float, above=0),
                   help="bound as a fraction of the all-low-precision plan's predicted loss MSE, e.g. 0.1")
    p.add_argument("-o", "--output", metavar="OUT.onnx", help="output (default: IN.solved.onnx beside IN)")
    p.add_argument("--plan", metavar="plan.json", help="plan file (default: plan.json beside OUT)")
    p.add_argument("--pareto", metavar="pareto.png", help="also sweep tau and plot the Pareto curves")
    p.add_argument("--pareto_strategies", default="ip,greedy,prefix,random,uniform-high,uniform-low")
    p.add_argument("--samples", type=number(int, 1), default=200, help="random strategy: plans drawn (default 200)")
    p.add_argument("--seed", type=number(int, 0), default=0, help="seed of the random strategy (default 0)")
    e = p.add_argument_group("measured strategies (pareto-greedy, ip-pairs)")
    e.add_argument("--eval_data", metavar="DATA", help="held-out samples: .npz keyed by input name (extra key "
                   "'labels' allowed) or a .txt with --tokenizer; each plan is rewritten and run in ONNX Runtime")
    e.add_argument("--tokenizer", metavar="PATH", help="tokenizer.json or a Hugging Face tokenizer folder (text data)")
    e.add_argument("--eval_samples", type=number(int, 1), default=32, metavar="N", help="use at most N samples (default 32)")
    e.add_argument("--eval_seq_len", type=number(int, 2), default=128, metavar="T", help="tokens per window for text data")
    e.add_argument("--batch_size", type=number(int, 1), default=8, metavar="B")
    add_loss_flags(e)
    p.add_argument("--solver", default=None, help="HiGHS or CBC (default: the first of the two that mip can use here)")
    p.set_defaults(func=run)


def _measured_inputs(model, args, notes: list[str]):
    """(``solve`` keyword arguments with the measured inputs of pareto-greedy / ip-pairs, the
    evaluator or None); ``notes`` gets what is worth saying."""
    from onnx_amp.passes.solve import problem_from_model
    from onnx_amp.runtime.evaluate import MEASURED_STRATEGIES, PlanEvaluator

    strategy = args.strategy.lower().replace("_", "-")
    if strategy not in MEASURED_STRATEGIES:
        if args.eval_data:
            notes.append(f"--eval_data is only used by {' and '.join(MEASURED_STRATEGIES)}")
        return {}, None
    if not args.eval_data:
        if strategy == "ip-pairs":
            raise OnnxAmpError(f"{args.input}: --strategy ip-pairs measures neighbour pair terms on held-out samples; "
                               "give --eval_data DATA (.npz, or .txt with --tokenizer)")
        notes.append("pareto-greedy without --eval_data orders units by predicted sensitivity "
                     "(give --eval_data to measure each unit, AIMET's way)")
        return {}, None
    from onnx_amp.core import annotations as ann
    from onnx_amp.runtime.data import load_calibration_data
    from onnx_amp.runtime.normalize import check_runnable

    check_runnable(model, args.input)
    data = load_calibration_data(args.eval_data, model, args.tokenizer, args.eval_seq_len, args.eval_samples,
                                 flag="--eval_data")
    target = ann.get_json(model, ann.GAINS, {}).get("target")
    from onnx_amp.runtime.losses import calibrated_loss

    loss = calibrated_loss(model, args.loss, args.loss_output)  # the loss the model was calibrated with
    ev = PlanEvaluator(model, list(data.batches(args.batch_size)), loss, target)
    problem = problem_from_model(model)
    n = len(problem.unit_order) + (len(problem.neighbour_pairs()) if strategy == "ip-pairs" else 0)
    print(f"{strategy}: measuring on {data.num_samples} held-out samples (up to {n} ORT evaluations)", file=sys.stderr)
    return ev.strategy_kwargs(problem, strategy), ev


def _settled_note(model, metric: str) -> list[str]:
    """How many measured time gains were within their timing noise (counted as 0 by the problem)."""
    from onnx_amp.core import annotations as ann
    from onnx_amp.passes.problem import settle_summary

    if metric != "time":
        return []
    n, zeroed, res = settle_summary((ann.get_json(model, ann.GAINS) or {}).get("regions", {}))
    if not zeroed:
        return []
    return [f"{zeroed} of {n} measured time gains are within their timing noise and count as 0 (the others are "
            f"rounded to {res:.3g} s); profile again on a quieter machine or with more --repeats to resolve them"]


def _check_names(args) -> list[str]:
    """Metric, solver and the Pareto strategies, before any work; returns the Pareto strategies."""
    from onnx_amp.passes.problem import normalize_metric
    from onnx_amp.passes.solver_backend import canonical_solver
    from onnx_amp.passes.strategies import get_strategy

    normalize_metric(args.metric)
    if args.solver is not None:
        args.solver = canonical_solver(args.solver)
    strategies = [s.strip() for s in args.pareto_strategies.split(",") if s.strip()]
    if args.pareto:
        if not strategies:
            raise OnnxAmpError(f"--pareto_strategies {args.pareto_strategies!r}: name at least one strategy")
        for s in strategies:
            try:
                get_strategy(s)
            except OnnxAmpError as e:
                raise OnnxAmpError(f"--pareto_strategies: {e}") from None
    if args.eval_data:
        from onnx_amp.runtime.preflight import check_data_file

        check_data_file(args.eval_data, "--eval_data")
    return strategies


def run(args) -> int:
    from onnx_amp.core.onnx_io import Outputs
    from onnx_amp.passes.solve import SolvePass, pareto_sweep
    from onnx_amp.runtime.normalize import load_normalized

    src = Path(args.input)
    out = Path(args.output) if args.output else src.with_name(src.name.removesuffix(".onnx") + ".solved.onnx")
    plan_path = Path(args.plan) if args.plan else out.with_name("plan.json")
    strategies = _check_names(args)
    with Outputs(inputs=[src, args.eval_data]) as outs:
        outs.add(out, "-o", model=True)
        outs.add(plan_path, "--plan")
        if args.pareto:
            outs.add(args.pareto, "--pareto")
        model, notes = load_normalized(src)
        kw = {"samples": args.samples, "seed": args.seed, "solver_name": args.solver}
        measured_kw, evaluator = _measured_inputs(model, args, notes)
        sp = SolvePass(args.strategy, tau=args.tau, tau_relative=args.tau_relative, metric=args.metric, **kw,
                       **measured_kw)
        sp(model)
        if evaluator is not None:
            print(f"  {evaluator.n_runs} ORT evaluations in {evaluator.seconds:.1f} s", file=sys.stderr)
        sol, prob = sp.solution, sp.problem
        notes += sol.notes
        notes += _settled_note(model, sol.metric)
        n_units = len(prob.unit_order)
        print(f"strategy {sol.strategy}, metric {sol.metric}, tau {sol.tau:.4g} "
              f"(all-low plan: {prob.all_low_mse():.4g}, smallest feasible: {prob.min_mse():.4g})")
        print(f"  {len(sol.plan['units'])}/{n_units} units lowered in {prob.n_regions} regions; predicted loss MSE "
              f"{sol.predicted_mse:.4g}{'' if sol.feasible else ' (over tau)'}; predicted gain " +
              ", ".join(f"{k}={v:.4g}" for k, v in sol.plan["predicted_gain"].items()) + f"; solved in {sol.seconds:.3f}s")
        if args.pareto:
            from onnx_amp.runtime.plots import plot_pareto

            pts = pareto_sweep(prob, strategies, sol.metric, **kw)
            plot_pareto(pts, str(outs.path(args.pareto)), sol.metric, chosen=sol,
                        title=f"{src.name}: Pareto sweep ({prob.target})")
        outs.model(model, out)
        outs.json(sp.plan.to_json(), plan_path)
        outs.commit()
    for n in notes:  # after the outputs exist: a failure stays one line
        print(f"note: {n}", file=sys.stderr)
    print(f"wrote {out}, {plan_path}" + (f", {args.pareto}" if args.pareto else ""), file=sys.stderr)
    return 0
