"""Uniform INT8 through onnx-amp's lowerings against ONNX Runtime's own ``quantize_static``, timed
side by side in one process (ORT CPU, 1 thread, batch 1), with what ORT fused each into and the
accuracy of each (against FP32, on held-out samples):

- ``per-layer``: each INT8 layer with its own Q/DQ (``ORT_CPU_LOWERING`` without ``int8_chains``);
- ``chains``: the CPU target's lowering (``passes.rewrite.ORT_CPU_LOWERING``: tensors stay quantized
  between INT8 layers, ``passes.int8_chains``; ranges from ``runtime.ranges``);
- ``quantize_static``: ORT's QDQ quantizer, per-channel weights, the same calibration samples.

    python -m onnx_amp.tools.bench.int8_lowering [--subjects effnet-lite0 minilm-sentiment smollm2] [--out DIR]

Prints a table and writes ``DIR/int8_lowering.json`` / ``.md``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import onnx

SUBJECTS = {"effnet-lite0": {}, "minilm-sentiment": {"max_len": 128}, "smollm2": {"seq_len": 128}}


def _calibrated(name: str, n_cal: int):
    from onnx_amp.core.onnx_io import load_model
    from onnx_amp.passes.partition import PartitionPass
    from onnx_amp.passes.sensitivity import AnnotateSensitivityPass
    from onnx_amp.runtime.calibrate import calibrate
    from onnx_amp.runtime.export import ensure_subject_onnx
    from onnx_amp.runtime.ranges import record_ranges
    from onnx_amp.runtime.subjects import subject_batch

    model = load_model(ensure_subject_onnx(name))
    PartitionPass()(model)
    cal = subject_batch(name, n_cal, "calib", **SUBJECTS[name])
    AnnotateSensitivityPass(calibrate(model, cal, batch_size=4, progress=False))(model)
    batches = [{k: v[i:i + 4] for k, v in cal.items() if k != "labels"} for i in range(0, n_cal, 4)]
    record_ranges(model, batches)
    return model, cal


def _quantize_static(path: Path, cal: dict, out: Path) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            n = len(next(iter(cal.values())))
            self.items = iter([{k: v[i:i + 1] for k, v in cal.items() if k != "labels"} for i in range(n)])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def _fused(model_or_path, tmp: Path, name: str) -> dict[str, int]:
    from onnx_amp.runtime.ort_session import make_session

    opt = tmp / f"{name}.opt.onnx"
    make_session(model_or_path, optimized_model_filepath=str(opt))
    counts: dict[str, int] = {}
    for n in onnx.load(str(opt), load_external_data=False).graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return {k: v for k, v in counts.items() if k.startswith(("QLinear", "MatMulInteger", "QGemm", "DynamicQuant"))
            or k in ("Conv", "FusedConv", "MatMul", "Gemm", "Add", "FusedMatMul")}


def run_subject(name: str, n_cal: int, repeats: int, tmp: Path) -> dict:
    from onnx_amp.core.onnx_io import save_model
    from onnx_amp.passes.plan import ApplyPlanPass, uniform_plan
    from onnx_amp.passes.rewrite import ORT_CPU_LOWERING, rewrite
    from onnx_amp.runtime.evaluate import evaluate_models
    from onnx_amp.runtime.profile import time_model
    from onnx_amp.runtime.subjects import subject_batch

    model, cal = _calibrated(name, n_cal)
    ApplyPlanPass(uniform_plan(model, "int8", "int8"))(model)
    per_layer, _ = rewrite(model, "emulate", **dict(ORT_CPU_LOWERING, int8_chains=False))
    chains, rep = rewrite(model, "emulate", **dict(ORT_CPU_LOWERING, int8_chains=True))
    fp32 = tmp / f"{name}.fp32.onnx"
    save_model(model, fp32)
    qs = _quantize_static(fp32, cal, tmp / f"{name}.qs.onnx")
    from onnx_amp.core.onnx_io import load_model

    candidates = {"per-layer": per_layer, "chains": chains, "quantize_static": load_model(qs)}
    val = subject_batch(name, 16, "eval", **SUBJECTS[name])
    batches = [{k: v[i:i + 4] for k, v in val.items()} for i in range(0, 16, 4)]
    first = {k: v[:1] for k, v in val.items() if k != "labels"}
    tm = time_model([model] + list(candidates.values()), first, repeats=repeats, threads=1)
    rows = {"fp32": {"time_ms": tm.summary(0)["time_s"] * 1e3}}
    for i, (k, m) in enumerate(candidates.items(), start=1):
        mse, task = evaluate_models(model, m, batches)
        rows[k] = {"time_ms": tm.summary(i)["time_s"] * 1e3, "speedup": tm.summary(0)["time_s"] / tm.summary(i)["time_s"],
                   "measured_mse": mse, "task": task, "fused": _fused(m, tmp, f"{name}.{k}")}
    return {"subject": name, "rows": rows, "chains_note": [n for n in rep.notes if n.startswith("int8 chains")]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", nargs="+", default=["effnet-lite0", "minilm-sentiment"])
    ap.add_argument("--calibration_samples", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", default="out/int8_lowering")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        for s in args.subjects:
            results.append(run_subject(s, args.calibration_samples, args.repeats, Path(d)))
            r = results[-1]["rows"]
            print(f"{s}: fp32 {r['fp32']['time_ms']:.2f} ms; " + "; ".join(
                f"{k} {v['speedup']:.2f}x ({v['task']['name']} {v['task']['after']:.4g})"
                for k, v in r.items() if k != "fp32"), flush=True)
    lines = ["| subject | lowering | time (ms) | speedup over FP32 | task metric | measured loss MSE | ORT kernels |",
             "|---|---|---|---|---|---|---|"]
    for res in results:
        for k, v in res["rows"].items():
            if k == "fp32":
                lines.append(f"| {res['subject']} | FP32 | {v['time_ms']:.2f} | 1.00x | | | |")
                continue
            fused = ", ".join(f"{op} {c}" for op, c in sorted(v["fused"].items()))
            lines.append(f"| {res['subject']} | {k} | {v['time_ms']:.2f} | {v['speedup']:.2f}x | "
                         f"{v['task']['after']:.4g} | {v['measured_mse']:.3g} | {fused} |")
    (out / "int8_lowering.md").write_text("\n".join(lines) + "\n")
    (out / "int8_lowering.json").write_text(json.dumps({"args": vars(args), "results": results,
                                                        "seconds": time.perf_counter() - t0}, indent=1, default=str))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
