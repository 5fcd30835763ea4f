"""Fidelity of the loss models: predicted vs measured loss MSE over families of plans (issues 3, 12).

    python -m onnx_amp.tools.bench.fidelity --subject minilm-sentiment --out /tmp/fid
    python -m onnx_amp.tools.bench.fidelity --subject effnet-lite0 --out /tmp/fid
    python -m onnx_amp.tools.bench.fidelity --subject smollm2 --out /tmp/fid --calib 16 --eval 8 --seq_len 64 \\
        --max_single 24 --random 20

Per model: one calibration on the ``calib`` split (the first pass and the second, measured-error
pass with the curvature probe, for BF16, FP8-E4M3 and INT8, with the INT8 output Q of ``--target``'s
lowering), then on held-out (``eval``) samples the measured loss MSE ``mean_n (L_n(plan) -
L_n(fp32))^2`` of four families of plans, all fixed by ``--seed`` (no timing enters them):

- ``single``: one unit lowered (INT8, and FP8-E4M3), for every unit (``--max_single``: evenly spaced);
- ``random_bf16_fp8``: every unit FP8-E4M3 with probability p, else BF16, p uniform per plan;
- ``random_int8``: every unit INT8 with probability p, else FP32, p uniform per plan;
- ``solver``: the integer program's plans across a Pareto sweep of ``--sweep`` taus, on the
  target's roofline gains (deterministic), one sweep per loss model compared.

Every plan is predicted by every loss model from the same calibration: ``ideal`` (alpha),
``measured_v1`` (the actual-error model as it was before issue 12: operands only), ``measured``
(plus the lowering's INT8 output Q) and ``shift`` (plus the squared sum of mean shifts). Figures per
family and model: R^2 of log10(measured) on the line y = x (not a fitted line), Spearman's rank
correlation, the share of plans with measured/predicted in [0.5, 2], and, to test the loss-MSE
decomposition, the share of the measured MSE that the mean of dL explains (``mean(dL)^2 / MSE``).
PNG: predicted vs measured, old (``measured_v1``) and new (``shift``) side by side.

``--engine torch`` (default) measures with the torch emulation of the rewrite (with the target's
INT8 output Q); ``--engine ort`` rewrites each plan with the target's lowering and runs it in
ONNX Runtime (exact Q/DQ sessions), slower per plan. ``--check_ort K`` measures K plans both ways.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

FAMILIES = ("single", "random_bf16_fp8", "random_int8", "solver")
MODELS = ("ideal", "measured_v1", "measured", "shift")
FORMATS = ("bf16", "fp8_e4m3", "int8")


def r2_identity(pred: np.ndarray, meas: np.ndarray) -> float:
    """R^2 of log10(measured) explained by the line log10(measured) = log10(predicted)."""
    lp, lm = np.log10(pred), np.log10(meas)
    ss_res = float(np.sum((lm - lp) ** 2))
    ss_tot = float(np.sum((lm - lm.mean()) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if len(a) > 2 else float("nan")


def figures(rows: list[dict], model: str) -> dict:
    """Per family (and ``all``, and ``multi``: plans lowering more than one unit) for one loss model."""
    out = {}
    for g in (*FAMILIES, "multi", "all"):
        sel = [r for r in rows if (g == "all" or r["family"] == g or (g == "multi" and r["n_units"] > 1))
               and r["measured"] > 0 and r["pred"][model] > 0]
        if len(sel) < 3:
            continue
        p = np.array([r["pred"][model] for r in sel])
        m = np.array([r["measured"] for r in sel])
        ratio = m / p
        out[g] = {"n": len(sel), "r2_log_identity": r2_identity(p, m), "spearman": spearman(p, m),
                  "within_0.5_2": float(np.mean((ratio >= 0.5) & (ratio <= 2.0))),
                  "median_ratio_measured_over_predicted": float(np.median(ratio)),
                  "mean_dl_sq_share": float(np.median([r["mean_dl"] ** 2 / r["measured"] for r in sel]))}
        ms = [r["mean_dl"] / r["pred_shift_M"] for r in sel if r.get("pred_shift_M", 0) > 0]
        if ms:  # the shift model's M against the measured mean of dL
            out[g]["median_mean_dl_over_M"] = float(np.median(ms))
    return out


def variant_stats(stats: dict, model: str) -> dict:
    """The calibration figures as each loss model reads them (the annotations select the model)."""
    out = {}
    for lid, st in stats.items():
        s = copy.copy(st)
        if model == "ideal":
            s.extra = {}
        elif model == "measured_v1":
            s.extra = {k: v for k, v in st.extra.items() if k in ("a", "w", "b")}
        elif model == "measured":
            s.extra = {k: v for k, v in st.extra.items() if k != "shift"}
        out[lid] = s
    return out


def bootstrap_ci(dl: np.ndarray, seed: int = 0, n: int = 400) -> list[float]:
    """90 % bootstrap interval of the measured loss MSE over the held-out samples (its noise)."""
    rng = np.random.default_rng(seed)
    boots = (dl[rng.integers(0, len(dl), size=(n, len(dl)))] ** 2).mean(1)
    return [float(np.percentile(boots, 5)), float(np.percentile(boots, 95))]


def shift_of(stats: dict, plan: dict) -> float:
    """The shift model's M (summed mean loss changes) of a plan: what mean(dL) should be."""
    from onnx_amp.passes.lossmodel import predicted_shift

    return float(sum(predicted_shift(st, *plan[st.unit]) for st in stats.values() if st.unit in plan))


def plot(rows: list[dict], path: Path, title: str, models=("measured_v1", "shift")) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"single": "tab:blue", "random_bf16_fp8": "tab:orange", "random_int8": "tab:green", "solver": "tab:red"}
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 5.5))
    for ax, model in zip(np.atleast_1d(axes), models):
        vals = []
        for g, c in colors.items():
            sel = [r for r in rows if r["family"] == g and r["measured"] > 0 and r["pred"][model] > 0]
            if sel:
                x, y = [r["pred"][model] for r in sel], [r["measured"] for r in sel]
                vals += x + y
                ax.scatter(x, y, s=12, alpha=0.7, c=c, label=f"{g} ({len(sel)})")
        if vals:
            lo, hi = min(vals) / 2, max(vals) * 2
            ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
            ax.fill_between([lo, hi], [lo / 2, hi / 2], [lo * 2, hi * 2], color="0.85", alpha=0.5, label="x0.5..x2")
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
        a = figures(rows, model).get("all", {})
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"predicted loss MSE ({model})")
        ax.set_ylabel("measured loss MSE (held-out)")
        ax.set_title(f"{title}\n{model}: R2(log, y=x) {a.get('r2_log_identity', float('nan')):.3f}, "
                     f"within x2 {a.get('within_0.5_2', float('nan')):.2f}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class Bench:
    """One subject: its calibrated model, held-out batches and the plan measurement."""

    def __init__(self, args):
        from onnx_amp.core.onnx_io import load_model
        from onnx_amp.core.targets import load_target
        from onnx_amp.runtime.calibrate import ensure_partitioned
        from onnx_amp.runtime.evaluate import target_lowering
        from onnx_amp.runtime.export import ensure_subject_onnx
        from onnx_amp.runtime.subjects import canonical
        from onnx_amp.runtime.torch_graph import TorchGraph

        self.args = args
        self.name = canonical(args.subject)
        self.path = args.model or str(ensure_subject_onnx(self.name))
        self.model = ensure_partitioned(load_model(self.path))
        self.target = load_target(args.target)
        self.lowering = target_lowering(self.target)
        self.tg = TorchGraph(self.model, fallback=True)

    def data(self, n: int, split: str) -> dict:
        from onnx_amp.runtime.subjects import subject_batch

        a = self.args
        d = subject_batch(self.name, n, split, seed=a.seed, seq_len=a.seq_len, max_len=a.max_len)
        if self.name == "smollm2":
            d.pop("labels", None)  # the causal LM loss reads input_ids
        return d

    def calibrate(self) -> None:
        from onnx_amp.passes.sensitivity import AnnotateSensitivityPass
        from onnx_amp.runtime.calibrate import calibrate
        from onnx_amp.runtime.format_errors import measure_format_errors

        a, t0 = self.args, time.perf_counter()
        cal = self.data(a.calib, "calib")
        self.res = calibrate(self.model, cal, batch_size=a.batch_size, progress=False, torch_graph=self.tg)
        measure_format_errors(self.model, cal, self.res, list(FORMATS), batch_size=a.batch_size, torch_graph=self.tg,
                              progress=False, int8_output_q=self.lowering.get("int8_output_q", False), shift=True,
                              seed=a.seed)
        AnnotateSensitivityPass(self.res)(self.model)
        self.calibration_s = time.perf_counter() - t0
        self.stats = {m: variant_stats(self.res.layers, m) for m in MODELS}

    def prepare_eval(self) -> None:
        from onnx_amp.core import annotations as A
        from onnx_amp.runtime.data import load_calibration_data

        ev = self.data(self.args.eval, "eval")
        self.spec = self.res.spec  # the loss the calibration resolved: the same on both sides
        self.ev_batches = list(load_calibration_data(ev, self.model).batches(self.args.batch_size))
        self.tb = [{k: torch.from_numpy(v) for k, v in b.items()} for b in self.ev_batches]
        self.layer_nodes = {n.metadata_props[A.LAYER]: n for n in self.model.graph if A.LAYER in n.metadata_props}
        self.L_ref, self.ref_out = self.losses()

    def losses(self, hooks=(None, None)):
        outs, ls = [], []
        with torch.no_grad():
            for i, tb in enumerate(self.tb):
                o = self.tg({k: v for k, v in tb.items() if k != "labels"}, operand_hook=hooks[0], output_hook=hooks[1])
                b = dict(tb)
                if getattr(self, "ref_out", None) is not None and "labels" not in b:
                    b["reference_logits"] = self.ref_out[i]  # unlabeled: CE against the fp32 prediction
                ls.append(self.spec(o, b).double())
                outs.append(o[self.spec.output])
        return torch.cat(ls), outs

    def apply(self, plan: dict) -> None:
        from onnx_amp.core import annotations as A

        for node in self.layer_nodes.values():
            w, a = plan.get(node.metadata_props.get(A.UNIT), ("fp32", "fp32"))
            node.metadata_props[A.PRECISION] = A.format_precision(w, a)

    def measure(self, plan: dict, engine: str) -> np.ndarray:
        """Per-sample dL of a plan on the held-out samples."""
        self.apply(plan)
        if engine == "torch":
            from onnx_amp.runtime.fakequant import emulate_plan_hooks

            L, _ = self.losses(emulate_plan_hooks(self.model, int8_output_q=self.lowering.get("int8_output_q", False)))
            return (L - self.L_ref).numpy()
        from onnx_amp.passes.rewrite import RewritePass
        from onnx_amp.runtime.ort_session import measured_loss_mse

        rewritten = RewritePass("emulate", **self.lowering)(self.model).model
        _, deltas = measured_loss_mse(self.model, rewritten, self.ev_batches, loss_fn=self.spec, progress=False)
        return np.asarray(deltas, dtype=np.float64)


def random_plans(units: list[str], n: int, low: tuple[str, ...], rng: random.Random) -> list[dict]:
    """``n`` plans: each unit ``low[1]`` with probability p (uniform per plan), else ``low[0]``."""
    out = []
    for _ in range(n):
        p = rng.random()
        out.append({u: (f, f) for u in units for f in [low[1] if rng.random() < p else low[0]]})
    return out


def solver_plans(bench: Bench, n: int) -> list[dict]:
    """The IP's plans across a Pareto sweep of ``n`` taus (roofline gains, metric tt), per loss model."""
    from onnx_amp.core import annotations as A
    from onnx_amp.passes.gains import GainsPass
    from onnx_amp.passes.problem import problem_from_model, unit_loss_from_stats, unit_shift_from_stats
    from onnx_amp.passes.search import pareto_sweep, tau_grid

    if A.get_json(bench.model, A.GAINS) is None:
        GainsPass(bench.target, None, 64, bench.args.seq_len)(bench.model)
    unit_layers: dict[str, list[str]] = {}
    for lid, st in bench.res.layers.items():
        unit_layers.setdefault(st.unit, []).append(lid)
    plans, seen = [], set()
    for model in ("measured_v1", "shift"):
        stats = bench.stats[model]
        prob = problem_from_model(bench.model, unit_loss_from_stats(stats, unit_layers),
                                  unit_shift_from_stats(stats, unit_layers))
        for pt in pareto_sweep(prob, ("ip",), "tt", taus=tau_grid(prob, n)):
            units = {u: (a["weight"], a["activation"]) for u, a in pt.plan["units"].items()}
            key = json.dumps(units, sort_keys=True)
            if units and key not in seen:
                seen.add(key)
                plans.append(units)
    return plans


def build_plans(bench: Bench, units: list[str]) -> list[tuple[str, dict]]:
    a = bench.args
    rng = random.Random(a.seed)
    singles = units
    if a.max_single and len(singles) > a.max_single:
        idx = np.linspace(0, len(singles) - 1, a.max_single).round().astype(int)
        singles = [singles[i] for i in sorted(set(idx))]
    plans = [("single", {u: (f, f)}) for f in ("int8", "fp8_e4m3") for u in singles]
    plans += [("random_bf16_fp8", p) for p in random_plans(units, a.random, ("bf16", "fp8_e4m3"), rng)]
    plans += [("random_int8", p) for p in random_plans(units, a.random, ("fp32", "int8"), rng)]
    plans += [("solver", p) for p in solver_plans(bench, a.sweep)] if a.sweep else []
    return plans


def table(fig: dict) -> str:
    lines = ["| family | n | " + " | ".join(f"{m}: R2 / Spearman / x2" for m in MODELS) + " | mean(dL)^2/MSE |",
             "|---|---|" + "---|" * (len(MODELS) + 1)]
    for g in (*FAMILIES, "multi", "all"):
        if g not in fig["shift"]:
            continue
        cells = [f"{fig[m][g]['r2_log_identity']:.3f} / {fig[m][g]['spearman']:.3f} / {fig[m][g]['within_0.5_2']:.2f}"
                 for m in MODELS]
        lines.append(f"| {g} | {fig['shift'][g]['n']} | " + " | ".join(cells)
                     + f" | {fig['shift'][g]['mean_dl_sq_share']:.3f} |")
    return "\n".join(lines)


def paired_table(fig: dict, old: str = "measured", new: str = "shift") -> str:
    """Two loss models side by side on the same plans: R2 / Spearman / share in [0.5, 2] / median
    measured/predicted, and the measured mean(dL) against the shift model's M (issue 12)."""
    head = "R2 / Spearman / in [0.5,2] / median meas/pred"
    lines = [f"| family | n | {old}: {head} | {new}: {head} | median mean(dL)^2/MSE | median mean(dL)/M |",
             "|---|---|---|---|---|---|"]
    for g in (*FAMILIES, "multi", "all"):
        if g not in fig[new] or g not in fig[old]:
            continue
        cells = [f"{f['r2_log_identity']:.3f} / {f['spearman']:.3f} / {f['within_0.5_2']:.2f} / "
                 f"{f['median_ratio_measured_over_predicted']:.2f}" for f in (fig[old][g], fig[new][g])]
        f = fig[new][g]
        lines.append(f"| {g} | {f['n']} | {cells[0]} | {cells[1]} | {f['mean_dl_sq_share']:.3f} | "
                     f"{f.get('median_mean_dl_over_M', float('nan')):.3g} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="predicted vs measured loss MSE (loss-model fidelity)")
    ap.add_argument("--subject", required=True, help="smollm2 | minilm-sentiment | effnet-lite0")
    ap.add_argument("--model", default=None, help="ONNX path (default: the subject's cached export)")
    ap.add_argument("--target", default="cpu", help="whose lowering (INT8 output Q) and roofline gains to use")
    ap.add_argument("--calib", type=int, default=32, help="calibration samples")
    ap.add_argument("--eval", type=int, default=32, help="held-out samples for the measured MSE")
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--seq_len", type=int, default=64, help="SmolLM2 window length")
    ap.add_argument("--max_len", type=int, default=48, help="MiniLM sentence length (tokens, padded)")
    ap.add_argument("--random", type=int, default=30, help="random plans per format pair")
    ap.add_argument("--max_single", type=int, default=None, help="at most this many units for single-unit plans")
    ap.add_argument("--sweep", type=int, default=8, help="taus of the solver's Pareto sweep per loss model (0: none)")
    ap.add_argument("--engine", choices=["torch", "ort"], default="torch")
    ap.add_argument("--check_ort", type=int, default=0, help="also measure this many plans in ORT (rewrite pass)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="output folder (JSON + PNG)")
    args = ap.parse_args(argv)

    from tqdm.auto import tqdm

    from onnx_amp.passes.lossmodel import plan_predicted_mse

    t_start = time.perf_counter()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    bench = Bench(args)
    bench.calibrate()
    bench.prepare_eval()
    units = sorted({st.unit for st in bench.res.layers.values() if st.unit}, key=lambda u: int(u[1:]))
    plans = build_plans(bench, units)
    rows = []
    for family, plan in tqdm(plans, desc=f"fidelity {bench.name}", unit="plan"):
        dl = bench.measure(plan, args.engine)
        rows.append({"family": family, "n_units": sum(1 for v in plan.values() if v != ("fp32", "fp32")),
                     "plan": {u: v[0] for u, v in plan.items()} if len(plan) <= 2 else None,
                     "measured": float(np.mean(dl ** 2)), "mean_dl": float(np.mean(dl)),
                     "dl": [float(x) for x in dl], "measured_ci90": bootstrap_ci(dl, args.seed),
                     "pred": {m: plan_predicted_mse(bench.stats[m], plan, default=None) for m in MODELS},
                     "pred_shift_M": shift_of(bench.stats["shift"], plan)})
    checks = [{"family": f, "torch": float(np.mean(bench.measure(p, "torch") ** 2)),
               "ort": float(np.mean(bench.measure(p, "ort") ** 2))}
              for f, p in [p for p in plans if p[0] != "single"][: args.check_ort]]
    fig = {m: figures(rows, m) for m in MODELS}
    summary = {
        "subject": bench.name, "model": bench.path, "target": bench.target.name, "lowering": bench.lowering,
        "calib_samples": bench.res.samples, "eval_samples": int(bench.L_ref.shape[0]),
        "seq_len": args.seq_len if bench.name == "smollm2" else None, "engine": args.engine,
        "layers": len(bench.res.layers), "units": len(units), "plans": len(rows), "seed": args.seed,
        "loss": bench.res.loss, "mean_eval_loss": float(bench.L_ref.mean()), "calibration_s": bench.calibration_s,
        "total_s": time.perf_counter() - t_start, "figures": fig, "ort_checks": checks,
    }
    stem = out_dir / f"fidelity_{bench.name}"
    with open(f"{stem}.json", "w") as f:
        json.dump({"summary": summary, "rows": rows}, f, indent=1)
    with open(f"{stem}.md", "w") as f:
        f.write(f"# {bench.name}: {len(rows)} plans, {summary['eval_samples']} held-out samples, target "
                f"{bench.target.name}\n\n{table(fig)}\n\n## measured vs shift, paired\n\n{paired_table(fig)}\n")
    plot(rows, Path(f"{stem}.png"), f"{bench.name}: {len(rows)} plans, {summary['eval_samples']} held-out ({args.engine})")
    print(table(fig))
    print(paired_table(fig))
    print(f"calibration {bench.calibration_s:.0f} s, total {summary['total_s']:.0f} s; wrote {stem}.json/.md/.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
