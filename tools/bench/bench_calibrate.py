"""Cost of calibration: time of ``calibrate`` / time of one plain forward pass over the same data.

    python -m onnx_amp.tools.bench.bench_calibrate --subject minilm-sentiment --samples 32 --batch_size 8

The plain forward is the same ONNX graph run by the same interpreter (``TorchGraph``) under
``torch.no_grad`` over the same batches (and, for reference, ONNX Runtime). The floor is about 3x
(forward + backward, the backward costing about two forwards); per-sample weight products add to it.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subject", default="minilm-sentiment", help="smollm2 | minilm-sentiment | effnet-lite0")
    ap.add_argument("--model", default=None, help="ONNX path (default: the subject's cached export)")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--seq_len", type=int, default=128, help="SmolLM2 window length")
    ap.add_argument("--repeats", type=int, default=2, help="timing repeats (best of)")
    ap.add_argument("--json", default=None, help="write results here")
    args = ap.parse_args(argv)

    from onnx_amp.runtime.calibrate import calibrate, ensure_partitioned
    from onnx_amp.runtime.data import load_calibration_data
    from onnx_amp.runtime.export import ensure_subject_onnx
    from onnx_amp.core.onnx_io import load_model
    from onnx_amp.runtime.subjects import canonical, subject_batch
    from onnx_amp.runtime.torch_graph import TorchGraph

    name = canonical(args.subject)
    path = args.model or str(ensure_subject_onnx(name))
    model = load_model(path)
    ensure_partitioned(model)
    batch = subject_batch(name, args.samples, "calib", seq_len=args.seq_len)
    if name == "smollm2":
        batch.pop("labels", None)
    data = load_calibration_data(batch, model)
    tg = TorchGraph(model)
    batches = list(data.batches(args.batch_size))

    def plain():
        with torch.no_grad():
            for b in batches:
                tg({k: torch.from_numpy(v) for k, v in b.items() if k != "labels"})

    def ort_fwd(sess):
        for b in batches:
            sess.run(None, {k: v for k, v in b.items() if k != "labels"})

    import onnxruntime as ort
    so = ort.SessionOptions()
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    plain()  # warm-up
    ort_fwd(sess)
    t_fwd = min(_time(plain) for _ in range(args.repeats))
    t_ort = min(_time(lambda: ort_fwd(sess)) for _ in range(args.repeats))
    t_cal = min(_time(lambda: calibrate(model, data, batch_size=args.batch_size, progress=False, torch_graph=tg))
                for _ in range(args.repeats))
    res = {
        "subject": name, "model": path, "samples": data.num_samples, "batch_size": args.batch_size,
        "threads": torch.get_num_threads(), "forward_torch_s": t_fwd, "forward_ort_s": t_ort, "calibrate_s": t_cal,
        "ratio_vs_torch_forward": t_cal / t_fwd, "ratio_vs_ort_forward": t_cal / t_ort,
    }
    print(json.dumps(res, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    raise SystemExit(main())
