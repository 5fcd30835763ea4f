"""Intel Neural Compressor's accuracy-aware tuning of an ONNX Runtime model (peer venvs ``inc``, ``inc2``).

``python runner_inc.py JOB.json`` (``_common`` for the job format):

- in ``inc`` (neural-compressor 3.10, as the brief names it) it tries INC's ONNX Runtime post-training
  API and records the exact error: the 3.x package no longer carries the ONNX Runtime adaptor
  (``neural_compressor.onnxrt`` / ``PostTrainingQuantConfig`` are gone);
- in ``inc2`` (neural-compressor 2.6, the last release with it) it runs the documented flow:
  ``PostTrainingQuantConfig(approach="static", quant_format="QDQ", accuracy_criterion=
  AccuracyCriterion(criterion="relative", tolerable_loss=0.01))`` and ``quantization.fit`` with the
  job's calibration samples and an ``eval_func`` on the held-out samples. INC's ``basic`` strategy
  tries the default INT8 config, then falls back op type by op type and op by op to FP32 until the
  bound holds (``evaluations`` counts ``eval_func`` calls). The result is a QDQ ONNX run on ORT.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import _common as C


class Loader:
    """INC 2.x calibration dataloader: ``batch_size`` and (inputs, label) pairs."""

    def __init__(self, block: dict, batch: int = 1):
        self.batch_size = batch
        self.items = C.samples(block, None, batch=batch)

    def __iter__(self):
        for f in self.items:
            yield f, 0


class EvalFunc:
    def __init__(self, job: dict):
        self.job = job
        self.ev = C.OrtEvaluator(job)

    def __call__(self, model) -> float:
        proto = getattr(model, "model", model)
        m = self.ev.metric(proto)
        return -m if self.job["metric"] == "perplexity" else m


class _ErrorLog:
    """The ERROR lines INC logs (``quantization.fit`` catches its exceptions, logs them, returns None)."""

    def __init__(self):
        import logging

        self.lines: list[str] = []
        outer = self

        class H(logging.Handler):
            def emit(self, record):
                if record.levelno >= logging.ERROR:
                    outer.lines.append(record.getMessage().splitlines()[0][:400])

        for name in ("neural_compressor", ""):
            logging.getLogger(name).addHandler(H())


def inc3(job: dict, res: C.Results) -> None:
    """What neural-compressor 3.10 offers for an ONNX Runtime model."""
    t0 = time.perf_counter()
    try:
        from neural_compressor import PostTrainingQuantConfig, quantization  # noqa: F401  (the 2.x API)

        res.add("inc3-ptq", error="neural-compressor 3.10 still exposes the 2.x API here; use inc2",
                evaluations=0, search_s=0.0)
    except Exception as e:  # noqa: BLE001
        msg = C.last_line(e)
        try:
            import neural_compressor.onnxrt  # noqa: F401
        except Exception as e2:  # noqa: BLE001
            msg += f"; also {C.last_line(e2)}"
        res.add("inc 3.10 (ONNX Runtime)", error=msg, evaluations=0, search_s=time.perf_counter() - t0)


def inc2(job: dict, res: C.Results, budget_s: int) -> None:
    from neural_compressor import PostTrainingQuantConfig, quantization
    from neural_compressor.config import AccuracyCriterion, TuningCriterion

    calib = C.load_npz(job["calib"])
    ev = EvalFunc(job)
    conf = PostTrainingQuantConfig(
        approach="static", quant_format="QDQ", device="cpu",
        calibration_sampling_size=[C.n_samples(calib)],
        accuracy_criterion=AccuracyCriterion(higher_is_better=True, criterion="relative", tolerable_loss=job["drop"]),
        tuning_criterion=TuningCriterion(strategy="basic", timeout=budget_s, max_trials=200))
    t0 = time.perf_counter()
    notes: list[str] = []
    try:
        errors = _ErrorLog()
        q = quantization.fit(job["fp32"], conf, calib_dataloader=Loader(calib), eval_func=ev)
        if q is None and errors.lines:  # the path of a model with external data: INC 2.6 fails on it
            notes.append(f"with the model path: {errors.lines[0]}; retried with the in-memory ModelProto")
            errors.lines.clear()  # the error reported at the end is the last attempt's
            import onnx

            t0 = time.perf_counter()
            q = quantization.fit(onnx.load(job["fp32"]), conf, calib_dataloader=Loader(calib), eval_func=ev)
        if q is None and any("ShapeInferenceError" in x for x in errors.lines):
            # INC 2.6 rewrites Gemm(transB=1) into MatMul+Add and then fails onnx shape inference on the
            # transposed weight (MiniLM's head: "(384) vs (2)"); keeping Gemm in fp32 does not avoid it (the
            # rewrite runs first): its documented recipe gemm_to_matmul=False does
            notes.append(f"with the ModelProto: {[x for x in errors.lines if 'ShapeInferenceError' in x][0]}; "
                         "retried with recipes={'gemm_to_matmul': False}")
            conf.recipes = {**(conf.recipes or {}), "gemm_to_matmul": False}
            errors.lines.clear()
            import onnx

            t0 = time.perf_counter()
            q = quantization.fit(onnx.load(job["fp32"]), conf, calib_dataloader=Loader(calib), eval_func=ev)
        secs = time.perf_counter() - t0
        if q is None:
            last = [x for x in errors.lines if "Unexpected exception" in x][-1:] or errors.lines[-1:]
            res.add("inc-tune", error=f"quantization.fit returned None after {ev.ev.count} evaluations / {secs:.0f} s"
                    + (f": {last[0]}" if last else f": no config within the bound (tuning timeout {budget_s} s, "
                       "max 200 trials)"), evaluations=ev.ev.count,
                    search_s=secs, notes=notes)
            return
        path = str(Path(job["out"]) / "inc_tuned.onnx")
        q.save(path)
        res.add("inc-tune", model=path, search_s=secs, evaluations=ev.ev.count, eval_s=ev.ev.seconds, notes=notes,
                format="int8 QDQ (INC defaults) + fp32 fallback", backend="ort_cpu")
    except Exception as e:  # noqa: BLE001
        res.add("inc-tune", error=C.last_line(e), search_s=time.perf_counter() - t0, evaluations=ev.ev.count)


def main() -> int:
    job = C.load_job()
    import neural_compressor

    res = C.Results(job, "inc", C.versions("neural_compressor", "onnxruntime", "onnx"))
    if neural_compressor.__version__.startswith("3"):
        inc3(job, res)
    else:
        inc2(job, res, int(os.environ.get("PEER_INC_BUDGET_S", 1800)))
    res.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
