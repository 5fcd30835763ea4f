"""Additivity check: do measured time gains add up across sequential regions (and across units)?

For each model (SmolLM2-135M, EfficientNet-Lite0 by default; the cached exports) on the ``cpu``
target (FP32 vs INT8, ONNX Runtime on this CPU) or, with ``--target openvino``, on OpenVINO's CPU
plugin (FP32, BF16, INT8; the backend's lowering and sessions, as the pipeline profiles and ships):

1. partition, then measure every region configuration (``runtime.profile.profile_model``);
2. draw random plans (each unit lowered with a per-plan probability drawn from U(0.1, 0.9), to a
   format drawn uniformly from the target's low formats: INT8 on ``cpu``, BF16 or INT8 on ``openvino``);
3. predicted end-to-end gain from **region sums**: sum over regions of the measured gain of the
   region configuration the plan induces; from **per-unit sums**: sum over lowered units of the
   measured gain of lowering that unit alone (its single-unit configuration);
4. measured end-to-end gain: the whole model rewritten with the plan (same lowering as the
   profile) timed against the FP32 model in paired rounds (median of per-round differences).

Writes ``additivity.json`` (figures: mean absolute relative error of each predictor vs measured,
also as % of the FP32 model time) and ``additivity.png`` (predicted vs measured, y = x) to
``--out``. Typical run (about 10 minutes on 2 cores):

    python -m onnx_amp.tools.bench.additivity --plans 20 --seq_len 64 --repeats 7 --out out/additivity
    python -m onnx_amp.tools.bench.additivity --target openvino --models smollm2 minilm effnet --out out/additivity_ov
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path

import numpy as np

#: the models measured by default: subjects, exported on first use into the export cache
DEFAULT_MODELS = ("smollm2", "effnet")


def _units_by_region(model) -> dict[str, list[str]]:
    from onnx_amp.core import annotations as ann
    from onnx_amp.passes.gains import region_units

    return {r["id"]: region_units(r) for r in ann.get_json(model, ann.REGIONS)["regions"]}


def random_plans(units: list[str], n: int, seed: int, formats=("int8",)) -> list[dict[str, tuple[str, str]]]:
    """Random plans: unit -> its (weight, activation) format, for the lowered units only."""
    rng = random.Random(seed)
    plans = []
    for _ in range(n):
        p = rng.uniform(0.1, 0.9)
        low = [u for u in units if rng.random() < p] or [rng.choice(units)]
        plans.append({u: (f, f) for u in low for f in [rng.choice(formats)]})
    return plans


def predict(plan_low: dict[str, tuple[str, str]], by_region: dict[str, list[str]], measured: dict,
            high=("fp32", "fp32")) -> tuple[float, float, bool]:
    """(region-sum prediction, per-unit-sum prediction, every region config was in the table)."""
    from onnx_amp.passes.gains import config_key

    region_sum, unit_sum, complete = 0.0, 0.0, True
    for rid, units in by_region.items():
        if not units:
            continue
        tab = measured[rid]
        cfg = {u: plan_low.get(u, high) for u in units}
        row = tab.get(config_key(cfg, units))
        if row is None:
            complete = False  # capped region: this configuration was not measured
        else:
            region_sum += row["time_gain_s"]
        for u in units:
            if u in plan_low:
                single = {v: (plan_low[u] if v == u else high) for v in units}
                unit_sum += tab[config_key(single, units)]["time_gain_s"]
    return region_sum, unit_sum, complete


def lower_full(model, plan_low: dict[str, tuple[str, str]], target):
    """The whole model with the plan's units lowered (same lowering as the profile)."""
    from onnx_amp.passes.plan import ApplyPlanPass, Plan
    from onnx_amp.runtime.evaluate import target_lowering
    from onnx_amp.runtime.profile import _rewrite

    plan = Plan(target=target.name, strategy="random", units=dict(plan_low))
    m = model.clone()
    ApplyPlanPass(plan, target=target)(m)
    if target.measured_backend == "ort_cpu":
        return _rewrite(m)
    from onnx_amp.passes.rewrite import rewrite

    return rewrite(m, "emulate", **target_lowering(target))[0]


def _time_plans(name, model, plans, by_region, measured, scaled, target, feeds, backend, args):
    """(rows, FP32 times): each random plan's predictions and its measured end-to-end gain."""
    from tqdm import tqdm

    from onnx_amp.runtime.profile import time_paired, timing_runner

    all_units = [u for us in by_region.values() for u in us]
    _, base = timing_runner(model.clone(), feeds, backend, args.threads, args.disabled)
    rows, base_times = [], []
    for i, low in enumerate(tqdm(plans, desc=f"{name} plans")):
        pr, pu, complete = predict(low, by_region, measured)
        sess, run = timing_runner(lower_full(model, low, target), feeds, backend, args.threads, args.disabled)
        tm = time_paired([base, run], warmup=2, repeats=args.repeats, seed=args.seed + i)
        s = tm.summary(1)
        base_times.append(statistics.median(tm.times[0]))
        rows.append({"plan": i, "units_low": len(low), "units": len(all_units), "pred_region_s": pr,
                     "formats": {f: sum(1 for a in low.values() if a[0] == f) for f in target.low_formats},
                     "pred_unit_s": pu, "measured_s": s["time_gain_s"], "measured_iqr": s["gain_iqr"],
                     "measured_noisy": s["noisy"], "complete": complete})
        if scaled is not None:
            rows[-1]["pred_region_scaled_s"] = predict(low, by_region, scaled)[0]
        del sess
    return rows, base_times


def _stats(rows: list[dict], base_t: float) -> dict:
    def mare(key):
        errs = [abs(r[key] - r["measured_s"]) / abs(r["measured_s"]) for r in rows if abs(r["measured_s"]) > 0]
        return float(np.mean(errs)) if errs else float("nan")

    def err_pct_of_base(key):
        return float(np.mean([abs(r[key] - r["measured_s"]) for r in rows]) / base_t * 100)

    def spearman(key):
        if len(rows) < 3:
            return float("nan")
        a = np.argsort(np.argsort([r[key] for r in rows]))
        b = np.argsort(np.argsort([r["measured_s"] for r in rows]))
        return float(np.corrcoef(a, b)[0, 1])

    def ratio(key):  # sum of predictions over sum of measured gains (1.0: additive on average)
        m = sum(r["measured_s"] for r in rows)
        return float(sum(r[key] for r in rows) / m) if m else float("nan")

    keys = ["pred_region_s", "pred_unit_s"] + (["pred_region_scaled_s"] if rows and "pred_region_scaled_s" in rows[0] else [])
    out = {}
    for k in keys:
        tag = {"pred_region_s": "region_sum", "pred_unit_s": "unit_sum"}.get(k, "region_scaled")
        out.update({f"mare_{tag}": mare(k), f"abs_err_pct_of_fp32_time_{tag}": err_pct_of_base(k),
                    f"spearman_{tag}": spearman(k), f"pred_over_measured_{tag}": ratio(k)})
    return out


def run_model(name: str, path: str, args, target) -> dict:
    import copy

    from onnx_amp.core import annotations as ann
    from onnx_amp.core.onnx_io import load_model
    from onnx_amp.passes.partition import PartitionPass
    from onnx_amp.runtime.profile import (
        annotate_amax_from_run, fold_weight_constants, profile_model, run_with_values, sample_feeds,
    )

    t0 = time.perf_counter()
    model = load_model(path)
    PartitionPass()(model)
    feeds = sample_feeds(model, args.batch_size, args.seq_len, seed=args.seed)
    prof = profile_model(model, target, feeds=feeds, batch_size=args.batch_size, seq_len=args.seq_len,
                         repeats=args.repeats, warmup=2, progress=True, seed=args.seed, threads=args.threads,
                         disabled_optimizers=args.disabled)
    print(f"[{name}] {prof.summary()}")
    # amax for the whole model from one run (the profile did the same per region)
    names = [v.name for n in model.graph if ann.get_str(n, ann.LAYER)
             for v in list(n.inputs[:2]) + [n.outputs[0]] if v is not None]
    annotate_amax_from_run(model, run_with_values(model, feeds, names))
    fold_weight_constants(model)
    by_region = _units_by_region(model)
    factors, scaled = None, None
    if args.scale and prof.backend != "ort_cpu":  # the pipeline's per-format end-to-end scaling
        from onnx_amp.runtime.evaluate import target_lowering
        from onnx_amp.runtime.gain_scaling import format_gain_factors, scale_gains

        factors = format_gain_factors(model, target, prof.measured, feeds, prof.backend, target_lowering(target),
                                      repeats=args.repeats, threads=args.threads, seed=args.seed)
        scaled = copy.deepcopy(prof.measured)
        scale_gains(scaled, factors, target)
        print(f"[{name}] format factors: {json.dumps(factors)}")
    plans = random_plans([u for us in by_region.values() for u in us], args.plans, args.seed, target.low_formats)
    rows, base_times = _time_plans(name, model, plans, by_region, prof.measured, scaled, target, feeds,
                                   prof.backend, args)
    base_t = statistics.median(base_times)
    return {
        "model": name, "path": path, "target": target.name, "backend": prof.backend, "threads": args.threads,
        "batch_size": args.batch_size, "seq_len": args.seq_len,
        "regions": prof.n_regions, "distinct_structures": prof.n_unique, "units": rows[0]["units"] if rows else 0,
        "fp32_model_time_s": base_t,
        "sum_of_fp32_region_times_s": sum(tab[next(iter(tab))]["time_s"] for tab in prof.measured.values()),
        **_stats(rows, base_t), "format_factors": factors,
        "noisy_plans": sum(r["measured_noisy"] for r in rows), "load_avg": os.getloadavg(),
        "seconds": time.perf_counter() - t0, "plans": rows,
    }


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4.6), squeeze=False)
    for ax, res in zip(axes[0], results):
        meas = np.array([r["measured_s"] for r in res["plans"]]) * 1e3
        iqr = np.array([r["measured_iqr"] for r in res["plans"]]) * 1e3
        for key, mk, lab in (("pred_region_s", "o", "region sums"), ("pred_unit_s", "x", "per-unit sums")):
            pred = np.array([r[key] for r in res["plans"]]) * 1e3
            m = res["mare_region_sum" if key == "pred_region_s" else "mare_unit_sum"]
            ax.errorbar(meas, pred, xerr=[meas - iqr[:, 0], iqr[:, 1] - meas] if len(iqr) else None,
                        fmt=mk, alpha=0.75, capsize=2, label=f"{lab} (MARE {m * 100:.1f}%)")
        lo = min(0.0, float(np.min(meas)) if len(meas) else 0.0)
        hi = max(float(np.max(meas)) if len(meas) else 1.0,
                 max(max(r["pred_region_s"], r["pred_unit_s"]) for r in res["plans"]) * 1e3)
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
        ax.set_xlabel("measured end-to-end gain (ms), IQR bars")
        ax.set_ylabel("predicted gain (ms)")
        ax.set_title(f"{res['model']} ({res.get('backend', 'ort_cpu')}): {res['regions']} regions, "
                     f"FP32 {res['fp32_model_time_s'] * 1e3:.1f} ms")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    from onnx_amp.core.targets import load_target

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="names (smollm2, effnet) or name=path")
    ap.add_argument("--plans", type=int, default=20)
    ap.add_argument("--batch_size", type=int, default=1)
    ap.add_argument("--seq_len", type=int, default=64, help="sequence length for the language model")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="out/additivity")
    ap.add_argument("--disable_optimizers", default="", metavar="NAME,NAME",
                    help="ORT optimizers to disable in every timing session (an experiment: NchwcTransformer keeps "
                    "FP32 convolutions in NCHW, so region boundaries cost no layout reorders)")
    ap.add_argument("--target", default="cpu", help="cpu (ONNX Runtime) or openvino (OpenVINO's CPU plugin)")
    ap.add_argument("--threads", type=int, default=0, help="threads of every timing session (0: the runtime's default)")
    ap.add_argument("--scale", action="store_true", help="also predict with the region gains scaled to each format's "
                    "end-to-end gain (runtime.gain_scaling, what the pipeline does on OpenVINO)")
    args = ap.parse_args(argv)
    args.disabled = [x for x in args.disable_optimizers.split(",") if x]
    args.threads = args.threads or None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target = load_target(args.target)
    results = []
    for spec in args.models:
        name, _, path = spec.partition("=")
        if not path:
            from onnx_amp.runtime.export import ensure_subject_onnx

            path = str(ensure_subject_onnx(name))
        res = run_model(name, path, args, target)
        results.append(res)
        print(json.dumps({k: v for k, v in res.items() if k != "plans"}, indent=1))
        (out / "additivity.json").write_text(json.dumps({"command": vars(args), "results": results}, indent=1) + "\n")
        plot(results, out / "additivity.png")
    print(f"wrote {out / 'additivity.json'} and {out / 'additivity.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
