"""Compare plan-selection strategies on real models (issue 5, item 5).

For each subject (SmolLM2-135M, MiniLM-sentiment) and target (``cpu``: {FP32, INT8} with gains
*measured* by ONNX Runtime on this CPU; ``gaudi2``: {BF16, FP8-E4M3} with *roofline* gains):

1. partition, calibrate (torch autograd, Taylor sensitivities), gain tables (measured / roofline);
2. every strategy (ip, greedy, prefix, random, pareto-greedy, uniform-*) swept over a log-spaced tau
   grid; each distinct plan is rewritten (emulate form) and run in ONNX Runtime on held-out data:
   measured loss MSE against the FP32 model and the task metric (perplexity / accuracy);
3. at equal *measured* loss MSE (the budgets are the IP plans' measured MSEs), the best gain each
   strategy reaches with a plan under that budget (every other strategy also gets ``--refine_steps``
   tau points bisected toward each budget, so a coarse grid does not favour the IP); the task metric
   of the plans chosen at the middle budget; with ``--e2e`` (cpu) the end-to-end time of those plans measured by ORT;
4. ``results.md`` (tables), ``results.json`` and one Pareto PNG per subject/target; plan evaluations
   are kept in ``evals.*.json`` in ``--out`` and reused by a re-run with the same settings.

    python -m onnx_amp.tools.bench.compare_strategies --out /tmp/cmp --small        # minutes, for development
    python -m onnx_amp.tools.bench.compare_strategies --out /tmp/cmp                # the full run (~25 min, 2 cores)

``pareto-greedy`` measures each unit's sensitivity (loss MSE with only that unit lowered) with real
ORT runs (AIMET's way; ``--no-measure_units``: the predicted one). ``ip-pairs`` measures
neighbouring-unit pair terms the same way (one more evaluation per pair), by default only on models
with at most ``--pairs_max_units`` units (``--pairs on|off``). Sensitivities use the measured
(actual rounding error) loss model unless ``--loss_model ideal``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

log = logging.getLogger("onnx_amp.compare")

DEFAULT_STRATEGIES = ("ip", "greedy", "prefix", "random", "pareto-greedy", "uniform-low")


# --------------------------------------------------------------------------------------------
# model preparation
# --------------------------------------------------------------------------------------------


def _low_formats(targets: str) -> list[str]:
    """The low formats of the compared targets (what the measured loss model covers)."""
    from onnx_amp.core.targets import load_target

    return sorted({f for t in targets.split(",") if t.strip() for f in load_target(t.strip()).low_formats})


def prepare(subject: str, target: str, n_calib: int, seq_len: int, workdir: Path, profile_repeats: int = 5,
            roofline_batch: int = 64, roofline_seq: int = 128, loss_model: str = "measured",
            formats: list[str] | None = None):
    """Partitioned + calibrated + profiled model (cached as ONNX in ``workdir``). ``loss_model``
    ``measured`` (as ``onnx-amp run``): a second calibration pass measures each operand's actual
    rounding error in ``formats``; ``ideal``: alpha * S only."""
    import onnx_ir as ir  # noqa: F401

    from onnx_amp.passes.gains import GainsPass
    from onnx_amp.passes.partition import PartitionPass
    from onnx_amp.passes.sensitivity import AnnotateSensitivityPass
    from onnx_amp.runtime.calibrate import calibrate
    from onnx_amp.runtime.format_errors import measure_format_errors
    from onnx_amp.runtime.export import ensure_subject_onnx
    from onnx_amp.core.onnx_io import load_model, save_model
    from onnx_amp.runtime.subjects import subject_batch

    lm = "" if loss_model == "ideal" else f".m-{'-'.join(formats or [])}"
    tag = f"{subject}.{target}.c{n_calib}.s{seq_len}{lm}" + ("" if target == "cpu" else f".b{roofline_batch}x{roofline_seq}")
    cached = workdir / f"{tag}.annotated.onnx"
    if cached.exists():
        return load_model(cached)
    src = ensure_subject_onnx(subject)
    calibrated = workdir / f"{subject}.c{n_calib}.s{seq_len}{lm}.calibrated.onnx"
    if calibrated.exists():
        m = load_model(calibrated)
    else:
        m = load_model(src)
        PartitionPass()(m)
        kw = {"seq_len": seq_len} if subject == "smollm2" else {"max_len": seq_len}
        data = subject_batch(subject, n_calib, "calib", seed=0, **kw)
        t0 = time.perf_counter()
        res = calibrate(m, data, batch_size=min(8, n_calib), progress=True)
        if loss_model == "measured" and formats:
            measure_format_errors(m, data, res, formats, batch_size=min(8, n_calib), progress=True)
        AnnotateSensitivityPass(res)(m)
        log.info("%s: calibrated on %d samples in %.1fs", subject, n_calib, time.perf_counter() - t0)
        save_model(m, calibrated)
        m = load_model(calibrated)
    measured = None
    if target == "cpu":
        from onnx_amp.runtime.profile import profile_model

        t0 = time.perf_counter()
        res = profile_model(m, "cpu", batch_size=1, seq_len=seq_len, repeats=profile_repeats, progress=True)
        measured = res.measured
        log.info("%s: profiled (%s) in %.1fs", subject, res.summary(), time.perf_counter() - t0)
    # cpu: measured at batch 1; roofline targets: a serving batch (at batch 1 the per-node boundary
    # cost of the target file makes FP8 a loss on every layer of these small models)
    if measured:
        GainsPass(target, measured=measured, batch_size=1, seq_len=seq_len)(m)
    else:
        GainsPass(target, batch_size=roofline_batch, seq_len=roofline_seq)(m)
    save_model(m, cached)
    return load_model(cached)


class PlanEvaluator:
    """``runtime.evaluate.PlanEvaluator`` on a subject's held-out batch: {measured_mse, metric} per plan."""

    def __init__(self, subject: str, annotated, batch: dict, target: str, batch_size: int = 8,
                 cache_file: Path | None = None):
        from onnx_amp.runtime.evaluate import PlanEvaluator as Evaluator

        n = len(batch["labels"])
        batches = [{k: v[i:i + batch_size] for k, v in batch.items()} for i in range(0, n, batch_size)]
        self.ev = Evaluator(annotated, batches, "causal_lm" if subject == "smollm2" else "classification", target)
        self.metric_name = self.ev.metric_name
        self.ref_metric = self.ev.reference_metric["before"]
        self.cache_file = cache_file
        if cache_file is not None and cache_file.exists():  # evaluations of an earlier run (same model + data)
            self.ev.cache.update(json.loads(cache_file.read_text()))
            log.info("%s: %d plan evaluations reused from %s", subject, len(self.ev.cache), cache_file.name)

    def save(self) -> None:
        if self.cache_file is not None:
            tmp = self.cache_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.ev.cache))
            os.replace(tmp, self.cache_file)

    def evaluate(self, units: dict) -> dict:
        r = self.ev.evaluate(units)
        return {"measured_mse": r["measured_mse"], "metric": r["metric"]["after"]}

    @property
    def n_runs(self) -> int:
        return self.ev.n_runs

    @property
    def seconds(self) -> float:
        return self.ev.seconds


# --------------------------------------------------------------------------------------------
# one subject x target
# --------------------------------------------------------------------------------------------


def _pair_terms(prob, ev, args, subject, target):
    """(pair terms or None, a note when skipped): ip-pairs' measured neighbour terms."""
    from onnx_amp.passes.solve import measure_pairs

    if args.pairs == "auto" and len(prob.unit_order) > args.pairs_max_units:
        note = (f"ip-pairs skipped: {len(prob.unit_order)} units > --pairs_max_units {args.pairs_max_units} "
                f"({len(prob.neighbour_pairs())} pair evaluations); --pairs on forces it")
        log.info("%s/%s: %s", subject, target, note)
        return None, note
    if args.pairs == "off":
        return None, None
    pairs = measure_pairs(prob, ev.ev.pair_measure(prob))
    ev.save()
    return pairs, None


def _refine_near_budgets(rows, strategies, budgets, point, args) -> None:
    """Every strategy but the IP gets points near each budget: log-space bisection of its tau
    between its last point under and its first point over the budget."""
    for s in [x for x in strategies if x != "ip" and not x.startswith("uniform")]:
        for b in budgets:
            for _ in range(args.refine_steps):
                pts = sorted((r["tau"], r["measured_mse"]) for r in rows if r["strategy"] == s)
                under = [t for t, m in pts if m <= b * (1 + 1e-9)]
                if not under:
                    break
                over = [t for t, m in pts if m > b * (1 + 1e-9) and t > max(under)]
                if not over or min(over) / max(under) < 1.02:
                    break
                point(s, math.sqrt(max(under) * min(over)), refined=True)


def _bisection(prob, ev, args, metric):
    if args.max_drop is None:
        return None
    from onnx_amp.passes.solve import bisect_tau

    higher = ev.metric_name == "accuracy"
    sol, hist = bisect_tau(prob, lambda plan: ev.evaluate(plan["units"])["metric"], args.max_drop,
                           relative=not higher, higher_is_better=higher, baseline=ev.ref_metric,
                           metric=metric, steps=args.bisect_steps)
    return {"max_drop": args.max_drop, "relative": not higher, "tau": sol.tau, "gain": sol.gain,
            "n_low": len(sol.plan["units"]), "metric": ev.evaluate(sol.plan["units"])["metric"],
            "steps": [vars(h) for h in hist]}


def _budgets(rows) -> list[float]:
    """Equal measured loss MSE: the budgets are the measured MSEs of the IP's plans (at most 4)."""
    ip_m = sorted({r["measured_mse"] for r in rows if r["strategy"] == "ip" and r["n_low"] > 0})
    if len(ip_m) <= 4:
        return ip_m
    return [ip_m[i] for i in np.unique(np.linspace(0, len(ip_m) - 1, 4).round().astype(int))]


def _sweep(prob, ev, strategies, pairs, args, metric, subject, target) -> list[dict]:
    from onnx_amp.passes.solve import solve, tau_grid

    solve_kw = {"measure_unit": ev.ev.unit_measure(prob)} if args.measure_units else {}
    taus = tau_grid(prob, args.n_tau)
    rows: list[dict] = []

    def point(s, t, refined=False):
        sol = solve(prob, t, s, metric, pairs=pairs if s == "ip-pairs" else None, samples=args.samples, **(
            solve_kw if s == "pareto-greedy" else {}))
        m = ev.evaluate(sol.plan["units"])
        rows.append({"strategy": s, "tau": t, "gain": sol.gain, "predicted_mse": sol.predicted_mse,
                     "measured_mse": m["measured_mse"], "metric": m["metric"], "n_low": len(sol.plan["units"]),
                     "units": sol.plan["units"], "feasible": sol.feasible, "refined": refined})

    for s in strategies:
        for t in ([taus[-1]] if s.startswith("uniform") else taus):
            point(s, t)
        log.info("%s/%s: %s done (%d ORT evaluations so far, %.0fs)", subject, target, s, ev.n_runs, ev.seconds)
    ev.save()
    _refine_near_budgets(rows, strategies, _budgets(rows), point, args)
    ev.save()
    hi = solve(prob, math.inf, "uniform-high", metric)
    rows.append({"strategy": "uniform-high", "tau": math.inf, "gain": hi.gain, "predicted_mse": hi.predicted_mse,
                 **ev.evaluate(hi.plan["units"]), "n_low": 0, "units": {}, "feasible": True})
    return rows


def compare_one(subject: str, target: str, args, workdir: Path) -> dict:
    from onnx_amp.passes.solve import problem_from_model
    from onnx_amp.runtime.subjects import subject_batch

    t_start = time.perf_counter()
    seq_len = args.seq_len if subject == "smollm2" else args.max_len
    model = prepare(subject, target, args.n_calib, seq_len, workdir, args.profile_repeats, args.roofline_batch,
                    args.roofline_seq, args.loss_model, _low_formats(args.targets))
    prob = problem_from_model(model)
    kw = {"seq_len": seq_len} if subject == "smollm2" else {"max_len": seq_len}
    cache = workdir / f"evals.{subject}.{target}.c{args.n_calib}.s{seq_len}.e{args.n_eval}.{args.loss_model}.json"
    ev = PlanEvaluator(subject, model, subject_batch(subject, args.n_eval, "eval", seed=1, **kw), target, cache_file=cache)
    metric = "time"  # measured for cpu (profile), roofline for gaudi2 (gains falls back to tt)
    log.info("%s/%s: %d regions, %d units; reference %s %.4f", subject, target, prob.n_regions,
             len(prob.unit_order), ev.metric_name, ev.ref_metric)
    pairs, pairs_note = _pair_terms(prob, ev, args, subject, target)
    strategies = list(args.strategies) + (["ip-pairs"] if pairs is not None else [])
    rows = _sweep(prob, ev, strategies, pairs, args, metric, subject, target)
    budgets = _budgets(rows)
    names = list(dict.fromkeys(r["strategy"] for r in rows))

    def best_under(s, b):
        c = [r for r in rows if r["strategy"] == s and r["measured_mse"] <= b * (1 + 1e-9)]
        return max(c, key=lambda r: (r["gain"], -r["measured_mse"])) if c else None

    table = [{"budget": b, **{s: (best_under(s, b) or {}).get("gain") for s in names}} for b in budgets]
    mid = budgets[len(budgets) // 2] if budgets else None
    chosen = {s: best_under(s, mid) for s in names} if mid is not None else {}
    e2e = measure_e2e(model, chosen, seq_len, args) if args.e2e and target == "cpu" and chosen else {}
    out_png = workdir / f"pareto_{subject}_{target}.png"
    plot(rows, out_png, f"{subject} / {target} ({'measured' if target == 'cpu' else 'roofline'} time gain)",
         chosen.get("ip"), ev.metric_name)
    return {"subject": subject, "target": target, "loss_model": args.loss_model, "metric_name": ev.metric_name,
            "reference_metric": ev.ref_metric, "n_regions": prob.n_regions, "n_units": len(prob.unit_order),
            "all_low_predicted_mse": prob.all_low_mse(), "rows": rows, "budgets": budgets, "table": table,
            "mid_budget": mid,
            "chosen": {s: ({k: v for k, v in r.items() if k != "units"} if r else None) for s, r in chosen.items()},
            "e2e": e2e, "bisection": _bisection(prob, ev, args, metric), "png": out_png.name,
            "ort_evaluations": ev.n_runs, "seconds": time.perf_counter() - t_start,
            "pairs": {f"{a},{b}": v for (a, b), v in (pairs or {}).items()}, "pairs_note": pairs_note}


def measure_e2e(model, chosen: dict, seq_len: int, args) -> dict:
    """End-to-end ORT time of each strategy's chosen plan vs all-high (cpu), paired rounds."""
    from onnx_amp.passes.plan import ApplyPlanPass, Plan
    from onnx_amp.passes.rewrite import ORT_CPU_LOWERING, rewrite
    from onnx_amp.runtime.profile import sample_feeds, time_model

    names = [s for s, r in chosen.items() if r is not None]
    models = []
    for s in ["uniform-high"] + names:
        units = {} if s == "uniform-high" else chosen[s]["units"]
        ApplyPlanPass(Plan.from_json({"version": 1, "units": units}), target="cpu", validate=False)(model)
        models.append(rewrite(model, "emulate", **ORT_CPU_LOWERING)[0])  # what the profile timed
    feeds = sample_feeds(model, 1, seq_len, 0)
    timing = time_model(models, feeds, warmup=2, repeats=args.e2e_repeats)
    base = timing.summary(0)["time_s"]
    out = {}
    for i, s in enumerate(names, start=1):
        t = timing.summary(i)["time_s"]
        out[s] = {"time_s": t, "gain_s": base - t, "speedup": base / t}
    out["uniform-high"] = {"time_s": base, "gain_s": 0.0, "speedup": 1.0}
    return out


def plot(rows, path, title, chosen, metric_name):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    names = list(dict.fromkeys(r["strategy"] for r in rows))
    for i, s in enumerate(names):
        rs = [r for r in rows if r["strategy"] == s]
        for ax, key in zip(axs, ("predicted_mse", "measured_mse")):
            pts = sorted(((max(r[key], 1e-12), r["gain"]) for r in rs))
            mk = "os^vDPX*"[i % 8]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=mk, ls=("-", "--", ":", "-.")[i % 4] if len(pts) > 1 else "",
                    color=f"C{i}", ms=9 - i, lw=1.2, alpha=0.8, label=s, mfc="none" if i % 2 else None)
    if chosen:
        axs[1].plot([max(chosen["measured_mse"], 1e-12)], [chosen["gain"]], "*", color="k", ms=14, label="chosen (ip)")
        axs[0].plot([max(chosen["predicted_mse"], 1e-12)], [chosen["gain"]], "*", color="k", ms=14)
    for ax, lab in zip(axs, ("predicted loss MSE", "measured loss MSE (ORT, held-out)")):
        ax.set_xscale("log")
        ax.set_xlabel(lab)
        ax.grid(True, which="both", alpha=0.3)
    axs[0].set_ylabel("predicted time gain [s] (sum of region gains)")
    axs[0].set_title("predicted")
    axs[1].set_title("measured in ONNX Runtime")
    axs[1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(x, unit=1e3):
    return "-" if x is None else f"{x * unit:.3f}"


def markdown(results: list[dict]) -> str:
    lines = ["# Strategy comparison", ""]
    for res in results:
        names = [k for k in res["table"][0] if k != "budget"] if res["table"] else []
        lines += [f"## {res['subject']} / {res['target']}",
                  f"{res['n_regions']} regions, {res['n_units']} units; {res.get('loss_model', 'ideal')} loss model; "
                  f"reference {res['metric_name']} "
                  f"{res['reference_metric']:.4f}; {res['ort_evaluations']} ORT evaluations, {res['seconds']:.0f}s. "
                  f"![pareto]({res['png']})", "",
                  "Best predicted time gain [ms] (sum of region gains) with measured loss MSE <= budget:", "",
                  "| measured MSE budget | " + " | ".join(names) + " |",
                  "|---|" + "---|" * len(names)]
        if not res["table"]:
            lines.append("| (the IP lowers no unit at any tau: no configuration has a positive gain) |")
        for row in res["table"]:
            lines.append(f"| {row['budget']:.3g} | " + " | ".join(_fmt(row[s]) for s in names) + " |")
        lines += ["", f"Plans chosen at budget {res['mid_budget']:.3g}:" if res["mid_budget"] else "", "",
                  f"| strategy | units low | predicted gain [ms] | predicted MSE | measured MSE | {res['metric_name']} |"
                  + (" e2e time [ms] | e2e speedup |" if res["e2e"] else ""),
                  "|---|---|---|---|---|---|" + ("---|---|" if res["e2e"] else "")]
        for s, r in res["chosen"].items():
            if r is None:
                lines.append(f"| {s} | (no plan under the budget) | | | | |")
                continue
            e = res["e2e"].get(s)
            lines.append(f"| {s} | {r['n_low']} | {_fmt(r['gain'])} | {r['predicted_mse']:.3g} | {r['measured_mse']:.3g} | "
                         f"{r['metric']:.4f} |" + (f" {e['time_s'] * 1e3:.2f} | {e['speedup']:.3f} |" if e else ""))
        if res.get("pairs_note"):
            lines += ["", res["pairs_note"] + "."]
        b = res.get("bisection")
        if b:
            lines += ["", f"Bisection over tau to an allowed {res['metric_name']} drop of {b['max_drop']}"
                      f"{' (relative)' if b['relative'] else ''}: tau {b['tau']:.3g}, {b['n_low']} units low, "
                      f"predicted gain {_fmt(b['gain'])} ms, {res['metric_name']} {b['metric']:.4f}; steps: "
                      + ", ".join(f"tau {h['tau']:.2g} -> {h['metric_value']:.4f} ({'ok' if h['ok'] else 'no'})"
                                  for h in b["steps"])]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder (results.md, results.json, PNGs, cached models)")
    ap.add_argument("--subjects", default="minilm-sentiment,smollm2")
    ap.add_argument("--targets", default="cpu,gaudi2")
    ap.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES))
    ap.add_argument("--n_tau", type=int, default=None, help="tau values per strategy, log-spaced (default: "
                    "MiniLM 8, SmolLM2 4)")
    ap.add_argument("--n_calib", type=int, default=None, help="calibration samples (default: MiniLM 16, SmolLM2 8)")
    ap.add_argument("--n_eval", type=int, default=None, help="held-out samples (default: MiniLM 64, SmolLM2 8)")
    ap.add_argument("--seq_len", type=int, default=128, help="SmolLM2 window length")
    ap.add_argument("--max_len", type=int, default=64, help="MiniLM sentence length")
    ap.add_argument("--samples", type=int, default=200, help="random strategy: plans drawn per tau")
    ap.add_argument("--profile_repeats", type=int, default=5)
    ap.add_argument("--roofline_batch", type=int, default=64, help="batch size for roofline gains (gaudi2)")
    ap.add_argument("--roofline_seq", type=int, default=128, help="sequence length for roofline gains (gaudi2)")
    ap.add_argument("--loss_model", choices=("measured", "ideal"), default="measured",
                    help="predicted loss MSE: measured (actual rounding error, the pipeline's default) or ideal (alpha)")
    ap.add_argument("--measure_units", action=argparse.BooleanOptionalAction, default=True,
                    help="pareto-greedy: measured per-unit sensitivity, AIMET's way (default on)")
    ap.add_argument("--pairs", choices=("auto", "on", "off"), default="auto",
                    help="ip-pairs with measured neighbour pair terms; auto (default): when the model has at most "
                    "--pairs_max_units units (each pair costs an ORT evaluation)")
    ap.add_argument("--pairs_max_units", type=int, default=64)
    ap.add_argument("--e2e", action=argparse.BooleanOptionalAction, default=True,
                    help="cpu: time the chosen plans end to end with ORT (default on)")
    ap.add_argument("--e2e_repeats", type=int, default=30)
    ap.add_argument("--refine_steps", type=int, default=3,
                    help="extra tau points per baseline and budget, bisected toward the budget (default 3)")
    ap.add_argument("--max_drop", type=float, default=None,
                    help="also bisect tau to this allowed task-metric drop (accuracy: absolute; perplexity: relative)")
    ap.add_argument("--bisect_steps", type=int, default=6)
    ap.add_argument("--small", action="store_true", help="development settings: MiniLM only, 4 taus, small data")
    a = ap.parse_args(argv)
    if a.small:
        a.subjects, a.max_len, a.seq_len = "minilm-sentiment", 32, 64
        a.n_tau, a.n_calib, a.n_eval = a.n_tau or 4, a.n_calib or 8, a.n_eval or 16
        a.profile_repeats = 3
    a.strategies = [s.strip() for s in a.strategies.split(",") if s.strip()]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    defaults = {"n_tau": {"smollm2": 4}, "n_calib": {"smollm2": 8}, "n_eval": {"smollm2": 8}}
    fallback = {"n_tau": 8, "n_calib": 16, "n_eval": 64}
    explicit = {k: getattr(a, k) for k in fallback}
    for subject in [s.strip() for s in a.subjects.split(",") if s.strip()]:
        for k in fallback:
            setattr(a, k, explicit[k] if explicit[k] is not None else defaults[k].get(subject, fallback[k]))
        for target in [t.strip() for t in a.targets.split(",") if t.strip()]:
            results.append(compare_one(subject, target, a, out))
            (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
            (out / "results.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
