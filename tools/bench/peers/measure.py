"""One subject's variants measured side by side (see ``evaluate.py`` for what and how)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from onnx_amp.tools.bench.peers import _common as C
from onnx_amp.tools.bench.peers import data as D
from onnx_amp.tools.bench.peers import evaluate as E


def wait_for_quiet(max_load: float, wait_s: int) -> dict:
    """Wait (up to ``wait_s``) until the 1-minute load average is below ``max_load``."""
    t0 = time.time()
    while True:
        load = os.getloadavg()
        if load[0] < max_load or time.time() - t0 >= wait_s:
            return {"load_at_start": list(load), "waited_s": time.time() - t0, "quiet": load[0] < max_load}
        print(f"[peers] load {load[0]:.1f} >= {max_load}: waiting to time ...", flush=True)
        time.sleep(30)


def _reference_variants(info: dict, variants: list[dict]) -> list[dict]:
    refs = [{"tool": "fp32", "name": "fp32 (ORT)", "model": info["fp32"], "backend": "ort_cpu",
             "format": "fp32", "search_s": 0.0, "evaluations": 0}]
    if any(v.get("backend") == "openvino_cpu" and not v.get("error") for v in variants):
        refs.append({"tool": "fp32", "name": "fp32 (OpenVINO)", "model": info["fp32"], "backend": "openvino_cpu",
                     "format": "fp32", "search_s": 0.0, "evaluations": 0})
    return refs


def _static(v: dict, root: Path) -> None:
    """Size, standard ONNX, Q/DQ layout and ORT's fused kernels of one model (``v`` updated)."""
    v["size_mb"] = E.size_bytes(v["model"]) / 2**20
    v["standard_onnx"], v["standard_why"] = E.standard_onnx(v["model"])
    if v["model"].endswith(".onnx") and v.get("session") != "onnx-amp":
        v["qdq_layout"] = E.qdq_layout(v["model"])
        if v["backend"] == "ort_cpu":
            v["ort_fused"] = E.fused_ops(v["model"], root, E.disabled_optimizers(v))


def _accuracy(v: dict, run, blocks: dict, kind: str) -> None:
    for split, block in blocks.items():
        t0 = time.perf_counter()
        v[f"metric_{split}"] = E.metric(run, block, kind)
        v[f"metric_{split}_s"] = time.perf_counter() - t0


def measure_subject(info: dict, variants: list[dict], root: Path, args) -> dict:
    from onnx_amp.runtime.timing import time_paired

    subject, kind = info["subject"], info["metric"]
    blocks = {"val": D.load(info["val"]), "test": D.load(info["test"])}
    rows = _reference_variants(info, variants) + [dict(v) for v in variants]
    runners = {}
    for v in rows:
        if v.get("error") or not v.get("model"):
            continue
        try:
            run = E.runner(v, args.threads)
            _static(v, root)
            _accuracy(v, run, blocks, kind)
            runners[v["name"]] = run
        except Exception as e:  # noqa: BLE001
            v["error"] = f"measuring: {C.last_line(e)}"
            print(f"[peers] {subject} {v['name']}: {v['error']}", flush=True)
    ref = {r["backend"]: r for r in rows if r["tool"] == "fp32" and "metric_val" in r}
    for v in rows:
        r = ref.get(v.get("backend"))
        if r is not None and "metric_val" in v:
            for split in blocks:
                v[f"within_{split}"] = C.within(kind, r[f"metric_{split}"], v[f"metric_{split}"], info["drop"])
    timing = {"skipped": True}
    if not args.no_timing and runners:
        feed = {k: a[:1] for k, a in blocks["val"].items() if k != C.LABELS}
        timing = wait_for_quiet(args.max_load, args.wait_s)
        if not timing["quiet"] and not args.time_anyway:
            timing.update({"skipped": True, "why": f"1-min load {timing['load_at_start'][0]:.1f} >= {args.max_load} "
                           f"after waiting {timing['waited_s']:.0f} s (--time_anyway to time regardless)"})
            return _result(info, rows, timing, blocks)
        names = list(runners)
        t0 = time.perf_counter()
        tm = time_paired([lambda r=runners[n]: r(feed) for n in names], warmup=3, repeats=args.rounds,
                         seed=0, min_round_s=0.05)
        timing.update({"load_at_end": list(os.getloadavg()), "seconds": time.perf_counter() - t0,
                       "rounds": args.rounds, "threads": args.threads, "feed": {k: list(a.shape) for k, a in feed.items()}})
        med = {n: tm.summary(i)["time_s"] for i, n in enumerate(names)}
        mm = {n: tm.summary(i)["time_minmax"] for i, n in enumerate(names)}
        for v in rows:
            if v["name"] in med:
                v["time_ms"] = med[v["name"]] * 1e3
                v["time_minmax_ms"] = [x * 1e3 for x in mm[v["name"]]]
                v["speedup_vs_fp32_ort"] = med.get("fp32 (ORT)", float("nan")) / med[v["name"]]
                base = "fp32 (OpenVINO)" if v["backend"] == "openvino_cpu" else "fp32 (ORT)"
                v["speedup_vs_fp32_same_backend"] = med.get(base, float("nan")) / med[v["name"]]
    return _result(info, rows, timing, blocks)


def _result(info: dict, rows: list, timing: dict, blocks: dict) -> dict:
    return {"subject": info["subject"], "metric": info["metric"], "drop": info["drop"], "rows": rows, "timing": timing,
            "samples": {k: C.n_samples(b) for k, b in blocks.items()}}
