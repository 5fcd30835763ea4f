"""NNCF's INT8 with accuracy control (peer venv ``nncf``), on both backends NNCF supports.

``python runner_nncf.py JOB.json`` (``_common`` for the job format) writes:

- ``nncf-qwac-ov``: ``nncf.quantize_with_accuracy_control`` on the FP32 ONNX read by OpenVINO
  (OpenVINO's standard flow), ``max_drop=0.01``, ``DropType.RELATIVE``, the job's calibration samples
  and held-out samples as the validation set, ``ModelType.TRANSFORMER`` for the transformers; the
  result is OpenVINO IR (``.xml``/``.bin``), run on OpenVINO;
- ``nncf-qwac-onnx``: the same call on the ONNX model (NNCF's ONNX backend): a QDQ ONNX run on ORT.

NNCF first quantizes everything, then (when the drop exceeds the bound) ranks the quantized layers
and reverts them to float one group at a time until the bound holds. The metric NNCF sees is higher
is better (``-perplexity`` for SmolLM2). ``evaluations`` counts full passes over the validation set.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

import _common as C

TRANSFORMERS = ("smollm2", "minilm-sentiment")
#: ORT graph transformers to turn off, in this order, when ORT's default session cannot load NNCF's ONNX output
#: (ORT 1.32 on MiniLM: QDQS8ToU8Transformer + QDQPropagationTransformer make a QuantizeLinear "view_q" whose
#: output_dtype INT8 contradicts its UINT8 zero point; turning off the propagation was the faster of the two)
ORT_FALLBACKS = ((), ("QDQPropagationTransformer",), ("QDQS8ToU8Transformer",))


class Validator:
    """``validation_fn(model, items)``: the task metric (higher is better) on OpenVINO or ORT."""

    def __init__(self, job: dict, backend: str):
        self.kind, self.backend = job["metric"], backend
        self.count = 0
        self.seconds = 0.0
        self.fallback = 0  # index into ORT_FALLBACKS: the first that loaded (kept for the later models)
        self.notes: list[str] = []

    def _runner(self, model):
        if self.backend == "ov":
            import openvino as ov

            # NNCF hands validation_fn an already compiled model (ov.CompiledModel)
            compiled = model if isinstance(model, ov.CompiledModel) else ov.Core().compile_model(
                model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            return lambda feed: compiled(feed)[0]

        sess = self._ort_session(model.SerializeToString())
        names = {i.name for i in sess.get_inputs()}
        return lambda feed: sess.run(None, {k: v for k, v in feed.items() if k in names})[0]

    @property
    def disabled(self) -> list[str]:
        return list(ORT_FALLBACKS[self.fallback])

    def _ort_session(self, src: bytes):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        while True:
            try:
                return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"],
                                            disabled_optimizers=self.disabled)
            except Exception as e:  # noqa: BLE001
                if self.fallback + 1 >= len(ORT_FALLBACKS):
                    raise
                self.notes.append(f"ORT (disabled_optimizers={self.disabled}) cannot load NNCF's model: "
                                  f"{C.last_line(e)}; retried with {list(ORT_FALLBACKS[self.fallback + 1])} off")
                self.fallback += 1

    def __call__(self, model, items) -> float:
        t0 = time.perf_counter()
        run = self._runner(model)
        per, labels = [], []
        for feed, lab in items:
            per.append(C.sample_losses(self.kind, np.asarray(run(feed)), feed))
            labels.append(lab)
        self.count += 1
        self.seconds += time.perf_counter() - t0
        m = C.metric_from(self.kind, np.concatenate(per), None if labels[0] is None else np.concatenate(labels))
        return -m if self.kind == "perplexity" else m


def _items(block: dict, batch: int) -> list:
    feeds = C.samples(block, None, batch=batch)
    lab = block.get(C.LABELS)
    return [(f, None if lab is None else lab[i * batch:(i + 1) * batch]) for i, f in enumerate(feeds)]


def run_backend(job: dict, res: C.Results, backend: str) -> None:
    import nncf

    name = f"nncf-qwac-{backend}"
    calib = C.load_npz(job["calib"])
    cal_items = C.samples(calib, None, batch=1)
    val_items = _items(C.load_npz(job["val"]), 8)
    out = Path(job["out"])
    v = Validator(job, backend)
    kw = {"model_type": nncf.ModelType.TRANSFORMER} if job["subject"] in TRANSFORMERS else {}
    t0 = time.perf_counter()
    try:
        if backend == "ov":
            import openvino as ov

            model = ov.Core().read_model(job["fp32"])
        else:
            import onnx

            model = onnx.load(job["fp32"])
        q = nncf.quantize_with_accuracy_control(
            model, nncf.Dataset(cal_items), nncf.Dataset(val_items), v, max_drop=job["drop"],
            drop_type=nncf.DropType.RELATIVE, subset_size=len(cal_items), **kw)
        secs = time.perf_counter() - t0
        if backend == "ov":
            import openvino as ov

            path = str(out / "nncf_qwac.xml")
            ov.save_model(q, path, compress_to_fp16=False)
            fmt, be = "OpenVINO IR, int8 FakeQuantize + fp32", "openvino_cpu"
        else:
            import onnx

            path = str(out / "nncf_qwac.onnx")
            big = q.ByteSize() > 1_500_000_000
            onnx.save(q, path, save_as_external_data=big, all_tensors_to_one_file=True, location="nncf_qwac.onnx.data")
            fmt, be = "int8 QDQ ONNX + fp32", "ort_cpu"
        extra = {"disabled_optimizers": v.disabled} if v.disabled else {}
        res.add(name, model=path, search_s=secs, evaluations=v.count, eval_s=v.seconds, format=fmt, backend=be,
                notes=[f"preset default, {kw or 'no model_type'}"] + v.notes, **extra)
    except Exception as e:  # noqa: BLE001
        res.add(name, error=C.last_line(e), search_s=time.perf_counter() - t0, evaluations=v.count, notes=v.notes)


def main() -> int:
    job = C.load_job()
    res = C.Results(job, "nncf", C.versions("nncf", "openvino", "onnxruntime", "onnx"))
    for backend in os.environ.get("PEER_NNCF_BACKENDS", "ov,onnx").split(","):
        run_backend(job, res, backend)
    res.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
