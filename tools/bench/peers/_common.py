"""What every peer runner shares: the job file, the data, the task metric (numpy + ONNX Runtime only).

Runners run inside their own peer venv (``setup.sh``), which has no onnx-amp: this module imports
nothing of ours and needs only numpy (ONNX Runtime where a runner evaluates ONNX models). The
driver (``python -m onnx_amp.tools.bench.peers``) writes ``job.json`` for each (subject, peer):

- ``fp32``: the subject's FP32 ONNX (``onnx_amp.runtime.export.ensure_subject_onnx``),
- ``calib`` / ``val``: ``.npz`` files keyed by input name (+ ``labels``), the same for every tool,
- ``metric``: ``perplexity`` (lower is better), ``accuracy`` or ``agreement`` (labels = the FP32
  model's own top-1), ``drop``: the relative bound (0.01),
- ``out``: the folder the runner writes its models and ``result.json`` to.

A runner writes ``result.json``: ``{"variants": [{"name", "model", "format", "backend",
"search_s", "evaluations", "notes", "error"}], ...}``; a failed variant carries ``error``, the
exact last line of the exception, and no model.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

LABELS = "labels"


def load_job(argv=None) -> dict:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        raise SystemExit("usage: python runner_<peer>.py JOB.json")
    job = json.loads(Path(args[0]).read_text())
    Path(job["out"]).mkdir(parents=True, exist_ok=True)
    return job


def load_npz(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def n_samples(block: dict) -> int:
    return len(next(iter(block.values())))


def samples(block: dict, inputs: list[str] | None = None, batch: int = 1) -> list[dict]:
    """The block as a list of feed dicts of ``batch`` samples (inputs only, unless ``inputs`` is None)."""
    n = n_samples(block)
    keys = [k for k in block if k != LABELS] if inputs is None else [k for k in inputs if k in block]
    return [{k: np.ascontiguousarray(block[k][i:i + batch]) for k in keys} for i in range(0, n, batch)]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def sample_losses(kind: str, logits: np.ndarray, feed: dict) -> np.ndarray:
    """Per-sample loss: mean next-token cross-entropy (perplexity) or the predicted class (others)."""
    if kind == "perplexity":
        lp = _log_softmax(logits[:, :-1])
        tgt = feed["input_ids"][:, 1:]
        ce = -np.take_along_axis(lp, tgt[..., None], -1)[..., 0]
        return ce.mean(1)
    return logits.reshape(logits.shape[0], -1).argmax(-1)


def metric_from(kind: str, per_sample: np.ndarray, labels: np.ndarray | None) -> float:
    if kind == "perplexity":
        return float(np.exp(per_sample.mean()))
    return float((per_sample == labels).mean())


def higher_is_better(kind: str) -> bool:
    return kind != "perplexity"


def within(kind: str, before: float, after: float, drop: float) -> bool:
    if higher_is_better(kind):
        return after >= before * (1 - drop) - 1e-12
    return after <= before * (1 + drop) + 1e-12


class OrtEvaluator:
    """Task metric of ONNX models on the held-out block with ONNX Runtime CPU (default options),
    counting full-model evaluations."""

    def __init__(self, job: dict, threads: int = 0):
        self.kind = job["metric"]
        self.val = load_npz(job["val"])
        self.labels = self.val.get(LABELS)
        self.threads = threads
        self.count = 0
        self.seconds = 0.0

    def session(self, model):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        if self.threads:
            so.intra_op_num_threads = self.threads
        src = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
        return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])

    def metric_of_session(self, sess) -> float:
        t0 = time.perf_counter()
        names = [i.name for i in sess.get_inputs()]
        per = [sample_losses(self.kind, sess.run(None, f)[0], f) for f in samples(self.val, names, batch=8)]
        self.count += 1
        self.seconds += time.perf_counter() - t0
        return metric_from(self.kind, np.concatenate(per), self.labels)

    def metric(self, model) -> float:
        return self.metric_of_session(self.session(model))


def last_line(e: BaseException) -> str:
    s = "".join(traceback.format_exception_only(type(e), e)).strip().splitlines()
    return s[-1] if s else type(e).__name__


class Results:
    """The runner's ``result.json`` (rewritten after every variant, so a crash keeps what was done)."""

    def __init__(self, job: dict, peer: str, versions: dict | None = None):
        self.job, self.path = job, Path(job["out"]) / "result.json"
        self.data = {"peer": peer, "subject": job["subject"], "versions": versions or {}, "variants": [],
                     "python": sys.executable, "pid": os.getpid()}
        self.write()

    def add(self, name: str, **kw) -> dict:
        if kw.get("error") and sys.exc_info()[0] is not None:
            traceback.print_exc()  # the full traceback goes to the runner's log
        v = {"name": name, **kw}
        self.data["variants"].append(v)
        self.write()
        print(f"[{self.data['peer']}] {self.job['subject']} {name}: "
              f"{'FAILED ' + v['error'] if v.get('error') else v.get('model')}", flush=True)
        return v

    def finish(self) -> None:
        self.data["done"] = True
        self.write()

    def write(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=1, default=str) + "\n")


def versions(*mods: str) -> dict:
    import importlib

    out = {}
    for m in mods:
        try:
            out[m] = getattr(importlib.import_module(m), "__version__", "?")
        except Exception as e:  # noqa: BLE001
            out[m] = f"not importable: {last_line(e)}"
    return out
