"""The subjects, their shared samples and the job files of the peer runners (main venv).

Every tool gets the same samples, drawn exactly as ``onnx-amp run SUBJECT`` draws them by default
(``runtime.stages``: ``subject_batch(name, n, split, seed=0)``, 128-token windows for SmolLM2) and
saved to ``DIR/<subject>/data/{calib,val,test}.npz``:

- ``calib``: calibration (SmolLM2 16 windows, MiniLM 64 sentences, EfficientNet 16 photos),
- ``val``: the held-out samples every accuracy-aware search checks its bound on (onnx-amp's bisection
  included: 8 windows, 64 sentences, 16 photos),
- ``test``: more held-out samples (``eval`` split, seed 1) that no search saw, for the table's second
  metric column (they may overlap ``val`` partly: the eval split is small).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SUBJECTS = ("smollm2", "minilm-sentiment", "effnet-lite0")
#: the task metric of each subject (``onnx_amp.runtime.evaluate.task_metric`` computes the same)
METRIC = {"smollm2": "perplexity", "minilm-sentiment": "accuracy", "effnet-lite0": "agreement"}
#: calibration, held-out (search) and test samples per subject
SIZES = {"smollm2": (16, 8, 16), "minilm-sentiment": (64, 64, 256), "effnet-lite0": (16, 16, 48)}
#: what ``--calibration_shapes`` / static export shapes use (batch 1)
SEQ_LEN = 128
DROP = 0.01


def _batch(subject: str, n: int, split: str, seed: int) -> dict[str, np.ndarray]:
    from onnx_amp.runtime import subjects as S

    kw = {"seq_len": SEQ_LEN} if subject == "smollm2" else {}
    b = S.subject_batch(subject, n, split, seed=seed, **kw)
    if subject == "smollm2":
        b = {"input_ids": b["input_ids"]}  # labels = input_ids: the runners shift them themselves
    return {k: np.asarray(v) for k, v in b.items()}


def prepare(subject: str, root: Path, seed: int = 0) -> dict:
    """fp32 ONNX path and the three .npz files of ``subject`` under ``root/<subject>/data``."""
    from onnx_amp.runtime.export import ensure_subject_onnx

    d = root / subject / "data"
    d.mkdir(parents=True, exist_ok=True)
    fp32 = str(ensure_subject_onnx(subject))
    n_cal, n_val, n_test = SIZES[subject]
    files = {}
    for name, n, split, s in (("calib", n_cal, "calib", seed), ("val", n_val, "eval", seed),
                              ("test", n_test, "eval", seed + 1)):
        p = d / f"{name}.npz"
        if not p.exists():
            np.savez(p, **_batch(subject, n, split, s))
        files[name] = str(p)
    return {"subject": subject, "fp32": fp32, **files, "metric": METRIC[subject], "drop": DROP,
            "seq_len": SEQ_LEN}


def write_job(info: dict, peer: str, root: Path, **extra) -> Path:
    out = root / info["subject"] / peer
    out.mkdir(parents=True, exist_ok=True)
    job = {**info, "out": str(out), "peer": peer, **extra}
    p = out / "job.json"
    p.write_text(json.dumps(job, indent=1) + "\n")
    return p


def load(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}
