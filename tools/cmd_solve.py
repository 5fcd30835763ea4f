"""``onnx-amp solve IN.onnx --strategy ip --metric time|tt|memory (--tau X | --tau_relative R) -o OUT.onnx``.

IN must be partitioned, calibrated and profiled (``onnx_amp.regions``, ``onnx_amp.sens.*``,
``onnx_amp.gains``). Writes OUT with ``onnx_amp.plan`` on the model and ``onnx_amp.precision`` on
every layer, ``plan.json`` (beside OUT unless ``--plan``), and with ``--pareto`` a PNG of the Pareto
sweep (predicted gain vs predicted loss MSE per strategy, chosen plan starred). IN is never modified.
"""

from __future__ import annotations

import sys
from pathlib import Path

from onnx_amp.runtime.onnx_io import OnnxAmpError


def register(subparsers) -> None:
    from onnx_amp.passes.solve import STRATEGIES

    p = subparsers.add_parser(
        "solve",
        help="pick the mixed-precision plan (integer program or a baseline) under a predicted loss MSE bound",
        description="Choose one configuration per region maximizing the gain (measured time, roofline time or "
        "memory) with predicted loss MSE <= tau; write the plan into the model and plan.json.",
    )
    p.add_argument("input", metavar="IN.onnx", help="a partitioned, calibrated and profiled model")
    p.add_argument("--strategy", default="ip", choices=[s for s in STRATEGIES if s != "ip-pairs"],
                   help="ip (default), random, prefix, greedy, pareto-greedy, uniform-high, uniform-low "
                   "(ip-pairs needs measured pair terms: use the Python API)")
    p.add_argument("--metric", default="time", help="time (measured, falls back to roofline), tt (roofline) or memory")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--tau", type=float, help="bound on the predicted loss MSE (absolute)")
    g.add_argument("--tau_relative", type=float,
                   help="bound as a fraction of the all-low-precision plan's predicted loss MSE, e.g. 0.1")
    p.add_argument("-o", "--output", metavar="OUT.onnx", help="output (default: IN.solved.onnx beside IN)")
    p.add_argument("--plan", metavar="plan.json", help="plan file (default: plan.json beside OUT)")
    p.add_argument("--pareto", metavar="pareto.png", help="also sweep tau and plot the Pareto curves")
    p.add_argument("--pareto_strategies", default="ip,greedy,prefix,random,uniform-high,uniform-low")
    p.add_argument("--samples", type=int, default=200, help="random strategy: plans drawn (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--solver", default=None, help="HiGHS or CBC (default: HiGHS when installed)")
    p.set_defaults(func=run)


def _check_out(path: Path, what: str) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OnnxAmpError(f"{path}: {what} folder {parent} does not exist; create it or choose another path")
    if path.is_dir():
        raise OnnxAmpError(f"{path}: is a directory; give a file path")


def run(args) -> int:
    import os
    import tempfile

    from onnx_amp.passes.solve import SolvePass, pareto_sweep, plot_pareto, relative_tau
    from onnx_amp.runtime.onnx_io import load_model, save_model

    src = Path(args.input)
    out = Path(args.output) if args.output else src.with_name(src.name.removesuffix(".onnx") + ".solved.onnx")
    plan_path = Path(args.plan) if args.plan else out.with_name("plan.json")
    for pth, what in ((out, "output"), (plan_path, "--plan"), *(((Path(args.pareto), "--pareto"),) if args.pareto else ())):
        _check_out(pth, what)
    if src.exists() and out.exists() and out.resolve() == src.resolve():
        raise OnnxAmpError(f"{out}: is the input file; write the solved model to a new path")
    model = load_model(src)
    kw = {"samples": args.samples, "seed": args.seed, "solver_name": args.solver}
    sp = SolvePass(args.strategy, tau=args.tau, tau_relative=args.tau_relative, metric=args.metric, **kw)
    sp(model)
    sol, prob = sp.solution, sp.problem
    n_units = len(prob.unit_order)
    print(f"strategy {sol.strategy}, metric {sol.metric}, tau {sol.tau:.4g} "
          f"(all-low plan: {prob.all_low_mse():.4g}, smallest feasible: {prob.min_mse():.4g})")
    print(f"  {len(sol.plan['units'])}/{n_units} units lowered in {prob.n_regions} regions; predicted loss MSE "
          f"{sol.predicted_mse:.4g}{'' if sol.feasible else ' (over tau)'}; predicted gain " +
          ", ".join(f"{k}={v:.4g}" for k, v in sol.plan["predicted_gain"].items()) + f"; solved in {sol.seconds:.3f}s")
    png_tmp = None
    if args.pareto:
        strategies = [s.strip() for s in args.pareto_strategies.split(",") if s.strip()]
        pts = pareto_sweep(prob, strategies, sol.metric, **kw)
        fd, png_tmp = tempfile.mkstemp(suffix=".png", dir=Path(args.pareto).parent if str(Path(args.pareto).parent) else ".")
        os.close(fd)
        plot_pareto(pts, png_tmp, sol.metric, chosen=sol, title=f"{src.name}: Pareto sweep ({prob.target})")
    try:
        save_model(model, out)
        sp.plan.save(plan_path)
        if png_tmp:
            os.replace(png_tmp, args.pareto)
            png_tmp = None
    except BaseException:
        for f in (out, out.with_name(out.name + ".data")):
            f.unlink(missing_ok=True)
        raise
    finally:
        if png_tmp and os.path.exists(png_tmp):
            os.remove(png_tmp)
    print(f"wrote {out}, {plan_path}" + (f", {args.pareto}" if args.pareto else ""), file=sys.stderr)
    return 0
