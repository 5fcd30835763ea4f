"""NVIDIA ModelOpt (peer venv ``modelopt``): its ONNX PTQ and its torch mixed-precision search.

``python runner_modelopt.py JOB.json`` (``_common`` for the job format) writes:

- ``modelopt-onnx-int8``: ``python -m modelopt.onnx.quantization --onnx_path FP32 --quantize_mode int8
  --calibration_data_path calib.npz --calibration_shapes ... --calibration_eps cpu`` (uniform INT8 QDQ,
  its default op selection), run on ORT;
- ``modelopt-autoquant``: ``modelopt.torch.quantization.auto_quantize`` on the subject's torch model
  (CPU), INT8 (``INT8_DEFAULT_CFG``) as the candidate format, the subject's loss for its gradient
  scores; its constraint is ``effective_bits``, not a task metric, so the runner does what a user must:
  bisects ``effective_bits`` in [8, 16] (``--steps`` searches; the gradient scores are computed once and
  restored from auto_quantize's ``checkpoint`` after that; each plan evaluated on the held-out samples in
  torch, fake-quant) for the lowest one within the bound, then exports the chosen
  model with ``torch.onnx.export`` (the INT8 quantizers become QuantizeLinear/DequantizeLinear).

The torch models come from onnx-amp's subject registry (``onnx_amp.runtime.subjects``, found through
``ONNX_AMP_SRC``, default the repository this file is in); the venv carries the subject packages.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import _common as C


def onnx_ptq(job: dict, res: C.Results) -> None:
    out = Path(job["out"])
    calib = {k: v for k, v in C.load_npz(job["calib"]).items() if k != C.LABELS}
    cpath = out / "calib_inputs.npz"
    np.savez(cpath, **calib)
    shapes = ",".join(f"{k}:{'x'.join(str(d) for d in v.shape)}" for k, v in calib.items())
    path = str(out / "modelopt_int8.onnx")
    cmd = [sys.executable, "-m", "modelopt.onnx.quantization", "--onnx_path", job["fp32"], "--quantize_mode", "int8",
           "--calibration_data_path", str(cpath), "--calibration_shapes", shapes, "--calibration_eps", "cpu",
           "--output_path", path]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    secs = time.perf_counter() - t0
    (out / "onnx_ptq.log").write_text(p.stdout + "\n" + p.stderr)
    if p.returncode != 0 or not Path(path).exists():
        lines = [x for x in (p.stderr or p.stdout).splitlines() if x.strip()]
        res.add("modelopt-onnx-int8", error=(lines[-1] if lines else f"exit {p.returncode}"), search_s=secs,
                evaluations=0, cmd=" ".join(cmd))
        return
    res.add("modelopt-onnx-int8", model=path, search_s=secs, evaluations=0, cmd=" ".join(cmd),
            format="int8 QDQ (ModelOpt ONNX PTQ defaults)", backend="ort_cpu")


def _subject_model(job: dict):
    if "onnx_amp" not in sys.modules:
        src = Path(os.environ.get("ONNX_AMP_SRC", Path(__file__).resolve().parents[3]))
        shim = Path(tempfile.mkdtemp(prefix="onnx_amp_shim_"))
        (shim / "onnx_amp").symlink_to(src)
        sys.path.insert(0, str(shim))
    import importlib

    mod, fn = {"smollm2": ("smollm2", "load_smollm2"), "minilm-sentiment": ("minilm", "load_minilm_sentiment"),
               "effnet-lite0": ("effnet", "load_effnet_lite0")}[job["subject"]]
    return getattr(importlib.import_module(f"onnx_amp.runtime.subjects.{mod}"), fn)().eval()


def _torch_loss(job: dict):
    import torch.nn.functional as F

    if job["metric"] == "perplexity":
        def loss(out, batch):
            lg = out[:, :-1].float()
            return F.cross_entropy(lg.reshape(-1, lg.shape[-1]), batch["input_ids"][:, 1:].reshape(-1))
    else:
        def loss(out, batch):
            return F.cross_entropy(out.float(), batch["labels"])
    return loss


def _torch_batches(block: dict, batch: int) -> list[dict]:
    import torch

    n = C.n_samples(block)
    return [{k: torch.from_numpy(np.ascontiguousarray(v[i:i + batch])) for k, v in block.items()}
            for i in range(0, n, batch)]


def _feed(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != C.LABELS}


def _torch_metric(job: dict, model, batches: list[dict]) -> float:
    import torch

    per, labels = [], []
    with torch.inference_mode():
        for b in batches:
            out = model(**_feed(b)).float().numpy()
            per.append(C.sample_losses(job["metric"], out, {k: v.numpy() for k, v in b.items()}))
            if C.LABELS in b:
                labels.append(b[C.LABELS].numpy())
    return C.metric_from(job["metric"], np.concatenate(per), np.concatenate(labels) if labels else None)


def _search(job: dict, bits: float, calib: list[dict]):
    import modelopt.torch.quantization as mtq

    model = _subject_model(job)
    loss = _torch_loss(job)
    model, state = mtq.auto_quantize(
        model, constraints={"effective_bits": bits}, quantization_formats=[mtq.INT8_DEFAULT_CFG],
        data_loader=calib, forward_step=lambda m, b: m(**_feed(b)), loss_func=loss,
        num_calib_steps=len(calib), num_score_steps=len(calib), verbose=False,
        checkpoint=str(Path(job["out"]) / "autoquant_search.pth"))  # scores reused across the bisection
    return model, state


def autoquant(job: dict, res: C.Results, steps: int) -> None:
    calib = _torch_batches(C.load_npz(job["calib"]), 4 if job["metric"] != "agreement" else 2)
    val = _torch_batches(C.load_npz(job["val"]), 8)
    t0 = time.perf_counter()
    hist, count = [], 0
    try:
        ref = _torch_metric(job, _subject_model(job), val)
        count += 1
        lo, hi, best = 8.0, 16.0, None
        for _ in range(steps):
            bits = lo if best is None and not hist else (lo + hi) / 2
            model, _ = _search(job, bits, calib)
            m = _torch_metric(job, model, val)
            count += 1
            ok = C.within(job["metric"], ref, m, job["drop"])
            hist.append({"effective_bits": bits, "metric": m, "within": ok})
            if ok:
                best, hi = (bits, model), bits
                if bits == 8.0:
                    break
            else:
                lo = bits
        secs = time.perf_counter() - t0
        if best is None:
            res.add("modelopt-autoquant", error=f"no effective_bits in [8, 16] within the bound after {steps} searches",
                    search_s=secs, evaluations=count, history=hist)
            return
        path = export(job, best[1], val[0])
        res.add("modelopt-autoquant", model=path, search_s=secs, evaluations=count, history=hist,
                reference_metric_torch=ref, chosen_effective_bits=best[0],
                format="int8 QDQ (ModelOpt auto_quantize, torch.onnx.export)", backend="ort_cpu")
    except Exception as e:  # noqa: BLE001
        res.add("modelopt-autoquant", error=C.last_line(e), search_s=time.perf_counter() - t0, evaluations=count,
                history=hist)


def export(job: dict, model, example: dict) -> str:
    import torch

    path = str(Path(job["out"]) / "modelopt_autoquant.onnx")
    feed = _feed(example)
    names = list(feed)
    dyn = {k: {0: "batch", **({1: "seq"} if v.ndim == 2 else {})} for k, v in feed.items()}
    with torch.inference_mode():
        torch.onnx.export(model, (), path, kwargs=feed, input_names=names, output_names=["logits"],
                          dynamic_axes=dyn, opset_version=17, dynamo=False)
    return path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("job")
    ap.add_argument("--steps", type=int, default=int(os.environ.get("PEER_MODELOPT_STEPS", 4)))
    ap.add_argument("--skip", nargs="*", default=os.environ.get("PEER_MODELOPT_SKIP", "").split(","))
    args = ap.parse_args()
    job = C.load_job([args.job])
    res = C.Results(job, "modelopt", C.versions("modelopt", "torch", "onnxruntime", "onnx"))
    if "onnx" not in args.skip:
        onnx_ptq(job, res)
    if "torch" not in args.skip:
        autoquant(job, res, args.steps)
    res.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
