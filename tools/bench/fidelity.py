"""Fidelity of the loss model: predicted vs measured loss MSE over many plans (issue 3, item 9).

    python -m onnx_amp.tools.bench.fidelity --subject minilm-sentiment --out /tmp/fid
    python -m onnx_amp.tools.bench.fidelity --subject effnet-lite0 --out /tmp/fid
    python -m onnx_amp.tools.bench.fidelity --subject smollm2 --out /tmp/fid --calib 8 --eval 8 --seq_len 64

Per model: calibrate on the ``calib`` split, then on held-out (``eval``) samples measure
``mean_n (L_n(plan) - L_n(fp32))^2`` for (a) every single-unit FP8-E4M3 plan, (b) ``--random``
random plans over {BF16, FP8-E4M3}, (c) ``--random`` random plans over {FP32, INT8}, and compare
with ``plan_predicted_mse``. Figures: R^2 of log10(measured) against the line y = x (not a fitted
line), the same after a fitted offset, and Spearman's rank correlation; a log-log scatter PNG.

``--engine torch`` (default) measures with the torch fake-quant emulation of the rewrite pass
(``runtime.fakequant.emulate_plan_hooks`` through ``TorchGraph``: one forward per plan, no session
build); ``--engine ort`` rewrites each plan (``RewritePass('emulate')``) and measures in ONNX
Runtime (``runtime.ort_session.measured_loss_mse``), slower per plan. ``--check_ort K`` measures K
plans with both engines to show they agree.
``--variant measured`` also predicts with each operand's *actual* rounding error (a second
calibration pass, ``calibrate.measure_format_errors``) instead of the ideal ``alpha``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch


def r2_identity(pred: np.ndarray, meas: np.ndarray) -> float:
    """R^2 of log10(measured) explained by the line log10(measured) = log10(predicted)."""
    lp, lm = np.log10(pred), np.log10(meas)
    ss_res = float(np.sum((lm - lp) ** 2))
    ss_tot = float(np.sum((lm - lm.mean()) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


def r2_offset(pred: np.ndarray, meas: np.ndarray) -> tuple[float, float]:
    """(R^2, offset) of log10(measured) = log10(predicted) + offset (slope 1, offset fitted)."""
    lp, lm = np.log10(pred), np.log10(meas)
    off = float(np.mean(lm - lp))
    ss_res = float(np.sum((lm - lp - off) ** 2))
    ss_tot = float(np.sum((lm - lm.mean()) ** 2))
    return (1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")), off


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if len(a) > 2 else float("nan")


def figures(rows: list[dict], key: str = "predicted") -> dict:
    out = {}
    groups = sorted({r["group"] for r in rows}) + ["all"]
    for g in groups:
        sel = [r for r in rows if (g == "all" or r["group"] == g) and r["measured"] > 0 and r[key] > 0]
        if len(sel) < 3:
            continue
        p = np.array([r[key] for r in sel])
        m = np.array([r["measured"] for r in sel])
        r2o, off = r2_offset(p, m)
        out[g] = {"n": len(sel), "r2_log_identity": r2_identity(p, m), "r2_log_offset": r2o,
                  "log10_offset": off, "spearman": spearman(p, m),
                  "median_ratio_measured_over_predicted": float(np.median(m / p))}
    return out


def plot(rows: list[dict], path: Path, title: str, key: str = "predicted") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"single_fp8": "tab:blue", "random_bf16_fp8": "tab:orange", "random_fp32_int8": "tab:green"}
    fig, ax = plt.subplots(figsize=(6, 6))
    vals = []
    for g, c in colors.items():
        sel = [r for r in rows if r["group"] == g and r["measured"] > 0 and r[key] > 0]
        if sel:
            x = [r[key] for r in sel]
            y = [r["measured"] for r in sel]
            vals += x + y
            ax.scatter(x, y, s=12, alpha=0.7, c=c, label=f"{g} ({len(sel)})")
    if vals:
        lo, hi = min(vals) / 2, max(vals) * 2
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"predicted loss MSE ({key})")
    ax.set_ylabel("measured loss MSE (held-out)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="predicted vs measured loss MSE (loss-model fidelity)")
    ap.add_argument("--subject", required=True, help="smollm2 | minilm-sentiment | effnet-lite0")
    ap.add_argument("--model", default=None, help="ONNX path (default: the subject's cached export)")
    ap.add_argument("--calib", type=int, default=32, help="calibration samples")
    ap.add_argument("--eval", type=int, default=32, help="held-out samples for the measured MSE")
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--seq_len", type=int, default=64, help="SmolLM2 window length")
    ap.add_argument("--max_len", type=int, default=48, help="MiniLM sentence length (tokens, padded)")
    ap.add_argument("--random", type=int, default=50, help="random plans per format pair")
    ap.add_argument("--max_single", type=int, default=None, help="at most this many single-unit plans (evenly spaced)")
    ap.add_argument("--engine", choices=["torch", "ort"], default="torch")
    ap.add_argument("--check_ort", type=int, default=0, help="also measure this many plans in ORT (rewrite pass)")
    ap.add_argument("--variant", choices=["ideal", "measured"], default="ideal")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="output folder (JSON + PNG)")
    args = ap.parse_args(argv)

    from tqdm.auto import tqdm

    from onnx_amp.core import annotations as A
    from onnx_amp.passes.sensitivity import AnnotateSensitivityPass
    from onnx_amp.runtime.calibrate import calibrate, ensure_partitioned
    from onnx_amp.runtime.data import load_calibration_data
    from onnx_amp.runtime.export import ensure_subject_onnx
    from onnx_amp.runtime.fakequant import emulate_plan_hooks
    from onnx_amp.passes.lossmodel import plan_predicted_mse
    from onnx_amp.core.onnx_io import load_model
    from onnx_amp.runtime.subjects import canonical, subject_batch
    from onnx_amp.runtime.torch_graph import TorchGraph

    t_start = time.perf_counter()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = canonical(args.subject)
    path = args.model or str(ensure_subject_onnx(name))
    model = load_model(path)
    ensure_partitioned(model)
    cal = subject_batch(name, args.calib, "calib", seq_len=args.seq_len, max_len=args.max_len)
    ev = subject_batch(name, args.eval, "eval", seq_len=args.seq_len, max_len=args.max_len)
    if name == "smollm2":
        cal.pop("labels", None)
        ev.pop("labels", None)
    tg = TorchGraph(model)
    res = calibrate(model, cal, batch_size=args.batch_size, progress=True, torch_graph=tg)
    AnnotateSensitivityPass(res)(model)
    stats = res.layers
    if args.variant == "measured":
        from onnx_amp.runtime.calibrate import measure_format_errors

        measure_format_errors(model, cal, res, ["bf16", "fp8_e4m3", "int8"], batch_size=args.batch_size, torch_graph=tg)
        AnnotateSensitivityPass(res)(model)
    t_cal = time.perf_counter() - t_start
    from onnx_amp.runtime.losses import resolve_loss
    spec = resolve_loss(None, model)
    ev_data = load_calibration_data(ev, model)
    ev_batches = list(ev_data.batches(args.batch_size))
    tb_batches = [{k: torch.from_numpy(v) for k, v in b.items()} for b in ev_batches]

    def losses(op_hook=None, out_hook=None, ref=None):
        outs, ls = [], []
        with torch.no_grad():
            for i, tb in enumerate(tb_batches):
                feeds = {k: v for k, v in tb.items() if k != "labels"}
                o = tg(feeds, operand_hook=op_hook, output_hook=out_hook)
                b = dict(tb)
                if ref is not None and "labels" not in b:
                    b["reference_logits"] = ref[i]
                ls.append(spec(o, b).double())
                outs.append(o[spec.output])
        return torch.cat(ls), outs

    L_ref, ref_out = losses()
    layer_nodes = {n.metadata_props[A.LAYER]: n for n in model.graph if A.LAYER in n.metadata_props}
    units: dict[str, list[str]] = {}
    for lid, st in stats.items():
        units.setdefault(st.unit, []).append(lid)
    unit_ids = sorted(units, key=lambda u: int(u[1:]))

    def apply(plan: dict[str, tuple[str, str]]):
        for lid, node in layer_nodes.items():
            w, a = plan.get(node.metadata_props.get(A.UNIT), ("fp32", "fp32"))
            node.metadata_props[A.PRECISION] = A.format_precision(w, a)

    def measure_torch(plan):
        apply(plan)
        op_hook, out_hook = emulate_plan_hooks(model)
        L, _ = losses(op_hook, out_hook, ref_out)
        return float(((L - L_ref) ** 2).mean())

    def measure_ort(plan):
        from onnx_amp.passes.rewrite import RewritePass
        from onnx_amp.runtime.ort_session import measured_loss_mse
        apply(plan)
        rewritten = RewritePass("emulate")(model).model
        mse, _ = measured_loss_mse(model, rewritten, ev_batches, loss_fn=spec, progress=False)
        return mse

    rng = random.Random(args.seed)
    plans: list[tuple[str, dict]] = []
    singles = unit_ids
    if args.max_single and len(singles) > args.max_single:
        idx = np.linspace(0, len(singles) - 1, args.max_single).round().astype(int)
        singles = [singles[i] for i in sorted(set(idx))]
    for u in singles:
        plans.append(("single_fp8", {u: ("fp8_e4m3", "fp8_e4m3")}))
    for _ in range(args.random):
        plans.append(("random_bf16_fp8", {u: (f, f) for u in unit_ids for f in [rng.choice(["bf16", "fp8_e4m3"])]}))
    for _ in range(args.random):
        plans.append(("random_fp32_int8", {u: (f, f) for u in unit_ids for f in [rng.choice(["fp32", "int8"])]}))
    measure = measure_torch if args.engine == "torch" else measure_ort
    rows = []
    for group, plan in tqdm(plans, desc=f"fidelity {name}", unit="plan"):
        row = {"group": group, "plan": {u: v[0] for u, v in plan.items()} if group == "single_fp8" else None,
               "predicted": plan_predicted_mse(stats, plan, default=None),
               "measured": measure(plan)}
        if args.variant == "measured":
            row["predicted_measured_err"] = row["predicted"]
            ideal = {lid: st for lid, st in stats.items()}
            saved = {lid: st.extra for lid, st in ideal.items()}
            for st in ideal.values():
                st.extra = {}
            row["predicted"] = plan_predicted_mse(ideal, plan, default=None)
            for lid, st in ideal.items():
                st.extra = saved[lid]
        rows.append(row)
    checks = []
    if args.check_ort:
        for group, plan in [p for p in plans if p[0] != "single_fp8"][: args.check_ort]:
            t_m = measure_torch(plan)
            o_m = measure_ort(plan)
            checks.append({"group": group, "torch": t_m, "ort": o_m})
    fig = {"ideal": figures(rows, "predicted")}
    if args.variant == "measured":
        fig["measured_err"] = figures(rows, "predicted_measured_err")
    summary = {
        "subject": name, "model": path, "calib_samples": res.samples, "eval_samples": int(L_ref.shape[0]),
        "batch_size": args.batch_size, "seq_len": args.seq_len if name == "smollm2" else None,
        "engine": args.engine, "layers": len(stats), "units": len(unit_ids), "unmatched": res.unmatched,
        "mean_eval_loss": float(L_ref.mean()), "calibration_s": t_cal,
        "total_s": time.perf_counter() - t_start, "figures": fig, "ort_checks": checks,
    }
    stem = out_dir / f"fidelity_{name}"
    with open(f"{stem}.json", "w") as f:
        json.dump({"summary": summary, "rows": rows}, f, indent=1)
    a = fig["ideal"].get("all", {})
    title = (f"{name}: {len(rows)} plans, {summary['eval_samples']} held-out samples ({args.engine})\n"
             f"R2(log, y=x)={a.get('r2_log_identity', float('nan')):.3f}  "
             f"R2(log, +offset)={a.get('r2_log_offset', float('nan')):.3f}  Spearman={a.get('spearman', float('nan')):.3f}")
    plot(rows, Path(f"{stem}.png"), title)
    if args.variant == "measured":
        b = fig["measured_err"].get("all", {})
        plot(rows, Path(f"{stem}_measured_err.png"),
             f"{name} (actual rounding error variant)\nR2(log, y=x)={b.get('r2_log_identity', float('nan')):.3f}  "
             f"Spearman={b.get('spearman', float('nan')):.3f}", key="predicted_measured_err")
    print(json.dumps(summary, indent=1))
    print(f"wrote {stem}.json and {stem}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
