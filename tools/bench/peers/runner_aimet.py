"""Qualcomm AIMET for ONNX (peer venv ``aimet``): uniform W8A8 and its mixed-precision search (AMP).

``python runner_aimet.py JOB.json [--no-amp]`` (``_common`` for the job format) writes:

- ``aimet-w8a8``: ``QuantizationSimModel(model, param_type=int8, activation_type=int8)`` with the
  default config (every op output quantized, Conv+Relu/Clip supergroups; the export came out with
  per-channel int8 weights on the subjects),
  ``compute_encodings`` on the calibration samples, exported with ``to_onnx_qdq(prequantize_constants
  =True)``: standard QuantizeLinear/DequantizeLinear, int8 weights stored;
- ``aimet-amp``: ``choose_mixed_precision`` with candidates W8A8, W8A16, W16A16 (int) and FP16
  (AIMET's AMP: phase 1 measures every quantizer group at each candidate, phase 2 walks the Pareto
  front), bound = 1 % of the FP32 task metric (absolute, as AIMET takes it), phase-1 callback on a
  quarter of the held-out samples, phase 2 on all; exported the same way.

The AMP search is given ``--amp_budget_s`` (default 1800 s): past that the runner reports it as not
finished (the phase-1 sweep costs one evaluation per quantizer group and candidate).
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path

import numpy as np
import onnx

import _common as C


NOTES: list[str] = []


class _Timeout(Exception):
    pass


def _save(model: onnx.ModelProto, path: str) -> str:
    big = model.ByteSize() > 1_500_000_000 if hasattr(model, "ByteSize") else True
    onnx.save(model, path, save_as_external_data=big, all_tensors_to_one_file=True,
              location=Path(path).name + ".data")
    return path


def _qdq(sim) -> onnx.ModelProto:
    try:
        return sim.to_onnx_qdq(prequantize_constants=True)
    except TypeError:
        return sim.to_onnx_qdq()


class Scorer:
    """The task metric of an AIMET sim session (higher is better: -perplexity for SmolLM2)."""

    def __init__(self, job: dict, block: dict):
        self.kind, self.block = job["metric"], block
        self.labels = block.get(C.LABELS)
        self.count = 0

    def __call__(self, sess, *_args) -> float:
        names = [i.name for i in sess.get_inputs()]
        per = [C.sample_losses(self.kind, sess.run(None, f)[0], f) for f in C.samples(self.block, names, batch=8)]
        self.count += 1
        m = C.metric_from(self.kind, np.concatenate(per), self.labels)
        return -m if self.kind == "perplexity" else m


def make_sim(job: dict, calib_items: list, **kw):
    from aimet_onnx.quantsim import QuantizationSimModel

    model = onnx.load(job["fp32"])
    try:
        sim = QuantizationSimModel(model, param_type="int8", activation_type="int8",
                                   providers=["CPUExecutionProvider"], **kw)
    except Exception as e:  # noqa: BLE001  (tied embeddings: what AIMET's own error asks for)
        if "duplicate_shared_initializers" not in str(e):
            raise
        from aimet_onnx.utils import duplicate_shared_initializers

        model = onnx.load(job["fp32"])
        duplicate_shared_initializers(model.graph)
        sim = QuantizationSimModel(model, param_type="int8", activation_type="int8",
                                   providers=["CPUExecutionProvider"], **kw)
        NOTES.append(f"first attempt: {C.last_line(e)}; called duplicate_shared_initializers as it asks")
    sim.compute_encodings(calib_items)
    return sim


def uniform(job: dict, res: C.Results, calib_items: list, ev: C.OrtEvaluator, out: Path) -> None:
    t0 = time.perf_counter()
    try:
        sim = make_sim(job, calib_items)
        p = _save(_qdq(sim), str(out / "aimet_w8a8.onnx"))
        res.add("aimet-w8a8", model=p, search_s=time.perf_counter() - t0, evaluations=0, notes=list(NOTES),
                format="int8 QDQ (W8A8, AIMET default config)", backend="ort_cpu")
    except Exception as e:  # noqa: BLE001
        res.add("aimet-w8a8", error=C.last_line(e), search_s=time.perf_counter() - t0, evaluations=0)


def amp(job: dict, res: C.Results, calib_items: list, out: Path, budget_s: float) -> None:
    from aimet_onnx.common.defs import CallbackFunc
    from aimet_onnx.common.defs import QuantizationDataType as DT
    from aimet_onnx.mixed_precision import choose_mixed_precision

    val = C.load_npz(job["val"])
    n = C.n_samples(val)
    p1 = Scorer(job, {k: v[:max(1, n // 4)] for k, v in val.items()})
    p2 = Scorer(job, val)
    cands = [((8, DT.int), (8, DT.int)), ((16, DT.int), (8, DT.int)), ((16, DT.int), (16, DT.int)),
             ((16, DT.float), (16, DT.float))]
    t0 = time.perf_counter()
    log = _InfoLog()
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(_Timeout(f"AMP search past {budget_s:.0f} s")))
    signal.alarm(int(budget_s))
    try:
        sim = make_sim(job, calib_items)
        fp32 = abs(p2(_fp32_session(job)))
        pareto = choose_mixed_precision(sim, cands, p1, p2, allowed_accuracy_drop=job["drop"] * fp32,
                                        results_dir=str(out / "amp"), clean_start=True,
                                        forward_pass_callback=CallbackFunc(_forward, calib_items))
        signal.alarm(0)
        secs = time.perf_counter() - t0
        if not pareto:  # AIMET gives up when even its best candidate misses the bound (it logs why)
            why = [x for x in log.lines if "allowed accuracy drop" in x][-1:] or ["no Pareto point"]
            res.add("aimet-amp", error=f"choose_mixed_precision returned no plan: {why[0]}", search_s=secs,
                    evaluations=p1.count + p2.count)
            return
        p = _save(_qdq(sim), str(out / "aimet_amp.onnx"))
        res.add("aimet-amp", model=p, search_s=secs, evaluations=p1.count + p2.count,
                evaluations_detail={"phase1 (quarter of held-out)": p1.count, "phase2 (all held-out)": p2.count},
                pareto_points=len(pareto or []), format="int8/int16/fp16 QDQ (AIMET AMP)", backend="ort_cpu",
                notes=["the FP32 reference is one extra evaluation, counted in phase 2"])
    except Exception as e:  # noqa: BLE001
        signal.alarm(0)
        res.add("aimet-amp", error=C.last_line(e), search_s=time.perf_counter() - t0,
                evaluations=p1.count + p2.count)


class _InfoLog:
    """The log lines AIMET writes while it runs (it reports why its AMP stops through logging)."""

    def __init__(self):
        import logging

        self.lines: list[str] = []
        outer = self

        class H(logging.Handler):
            def emit(self, record):
                outer.lines.append(record.getMessage().strip()[:400])

        h = H(logging.INFO)
        for name in ("", "MixedPrecision", "AimetLogger"):
            logging.getLogger(name).addHandler(h)


def _forward(sess, items) -> None:
    for f in items:
        sess.run(None, f)


def _fp32_session(job: dict):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(job["fp32"], so, providers=["CPUExecutionProvider"])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("job")
    ap.add_argument("--no-amp", action="store_true")
    ap.add_argument("--amp_budget_s", type=float, default=float(os.environ.get("PEER_AMP_BUDGET_S", 1800)))
    args = ap.parse_args()
    job = C.load_job([args.job])
    res = C.Results(job, "aimet", C.versions("aimet_onnx", "onnxruntime", "onnx"))
    calib = C.load_npz(job["calib"])
    calib_items = C.samples(calib, None, batch=1)
    out = Path(job["out"])
    uniform(job, res, calib_items, C.OrtEvaluator(job), out)
    if not args.no_amp:
        amp(job, res, calib_items, out, args.amp_budget_s)
    res.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
