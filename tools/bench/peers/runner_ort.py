"""ONNX Runtime's own static quantization, as a user would run it (peer venv ``ort``).

``python runner_ort.py JOB.json`` writes three QDQ models (``_common`` for the job format):

- ``ort-int8``: ``quant_pre_process`` then ``quantize_static`` (QDQ, u8 activations, s8 per-channel
  weights, MinMax calibration on the job's calibration samples), every op type ORT quantizes;
- ``ort-int8 -first/last``: the same with the first and the last weight layer in ``nodes_to_exclude``;
- ``ort-int8 +debug``: ``nodes_to_exclude`` from ORT's debugging tools
  (``onnxruntime.quantization.qdq_loss_debug``): the weight layers ranked by the worst SQNR of their
  weight and of their input activation (QDQ vs float), the k worst excluded for k = 1, 2, 4, ...
  until the task metric on the held-out samples is within the bound (one evaluation per k).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import onnx

import _common as C

WEIGHT_OPS = ("Conv", "MatMul", "Gemm", "ConvTranspose")


class Reader:
    """A ``CalibrationDataReader`` over the calibration samples, one at a time."""

    def __init__(self, block: dict, inputs: list[str]):
        self.items = C.samples(block, inputs, batch=1)
        self.i = 0

    def get_next(self):
        if self.i >= len(self.items):
            return None
        self.i += 1
        return self.items[self.i - 1]

    def rewind(self):
        self.i = 0

    def __iter__(self):  # qdq_loss_debug.collect_activations iterates the reader
        return iter(self.items)


def _inputs(path: str) -> list[str]:
    m = onnx.load(path, load_external_data=False)
    init = {i.name for i in m.graph.initializer}
    return [i.name for i in m.graph.input if i.name not in init]


def _large(path: str) -> bool:
    p = Path(path)
    return sum(f.stat().st_size for f in p.parent.glob(p.name + "*")) > 1_500_000_000


def preprocess(job: dict, notes: list) -> str:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = str(Path(job["out"]) / "fp32.pre.onnx")
    kw = {"save_as_external_data": True, "all_tensors_to_one_file": True,
          "external_data_location": "fp32.pre.onnx.data"}
    try:
        quant_pre_process(job["fp32"], out, **kw)
        return out
    except Exception as e:  # noqa: BLE001
        notes.append(f"quant_pre_process failed ({C.last_line(e)})")
    try:  # what its error suggests: without the symbolic shape inference
        quant_pre_process(job["fp32"], out, skip_symbolic_shape=True, **kw)
        notes.append("quant_pre_process(skip_symbolic_shape=True) used instead")
        return out
    except Exception as e:  # noqa: BLE001
        notes.append(f"quant_pre_process(skip_symbolic_shape=True) failed too ({C.last_line(e)}); "
                     "quantized the model as exported")
        return job["fp32"]


def quantize(src: str, out: str, calib: dict, exclude: list[str]) -> float:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    t0 = time.perf_counter()
    quantize_static(src, out, Reader(calib, _inputs(src)), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=list(exclude),
                    use_external_data_format=_large(src))
    return time.perf_counter() - t0


def weight_nodes(path: str) -> list[onnx.NodeProto]:
    m = onnx.load(path, load_external_data=False)
    init = {i.name for i in m.graph.initializer}
    consts = {o for n in m.graph.node if n.op_type == "Constant" for o in n.output}
    return [n for n in m.graph.node if n.op_type in WEIGHT_OPS and any(x in init or x in consts for x in n.input[1:2])]


def _sqnr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    noise = float(((a - b) ** 2).sum())
    return float("inf") if noise == 0 else 10 * np.log10(max(float((a ** 2).sum()), 1e-30) / noise)


def debug_ranking(src: str, qdq: str, calib: dict, workdir: Path, n: int = 4) -> list[tuple[str, float]]:
    """Weight layers, most affected first: min(SQNR of the weight, SQNR of its quantized input
    activation) from ``qdq_loss_debug`` on ``n`` calibration samples."""
    from onnxruntime.quantization.qdq_loss_debug import (collect_activations, create_activation_matching,
                                                         create_weight_matching,
                                                         modify_model_output_intermediate_tensors)

    inputs = _inputs(src)
    few = {k: v[:n] for k, v in calib.items()}
    aug_q = str(workdir / "debug_qdq_aug.onnx")
    modify_model_output_intermediate_tensors(qdq, aug_q, save_as_external_data=_large(qdq))
    q_acts = collect_activations(aug_q, Reader(few, inputs))
    act = create_activation_matching(q_acts)  # tensor -> {pre_qdq, post_qdq}: the local Q/DQ error
    err_act = {t: _sqnr(np.concatenate(d["pre_qdq"]), np.concatenate(d["post_qdq"])) for t, d in act.items()
               if "pre_qdq" in d and "post_qdq" in d}
    err_w = {t: _sqnr(d["float"], d["dequantized"]) for t, d in create_weight_matching(src, qdq).items()}
    rank = []
    for node in weight_nodes(src):
        s = [err_act.get(node.input[0], float("inf")), err_w.get(node.input[1], float("inf"))]
        rank.append((node.name, float(min(s))))
    rank.sort(key=lambda x: x[1])
    return rank


def main() -> int:
    job = C.load_job()
    import onnxruntime

    res = C.Results(job, "ort", C.versions("onnxruntime", "onnx"))
    calib = C.load_npz(job["calib"])
    ev = C.OrtEvaluator(job)
    out = Path(job["out"])
    notes: list[str] = []
    t0 = time.perf_counter()
    src = preprocess(job, notes)
    t_pre = time.perf_counter() - t0
    ref = ev.metric(job["fp32"])  # counted: every tool's count includes its FP32 reference
    common = {"format": "int8 QDQ (u8 act, s8 per-channel weights)", "backend": "ort_cpu",
              "onnxruntime": onnxruntime.__version__, "reference_metric": ref}

    uni = str(out / "ort_int8.onnx")
    try:
        secs = quantize(src, uni, calib, [])
        res.add("ort-int8", model=uni, search_s=t_pre + secs, evaluations=0, notes=list(notes), **common)
    except Exception as e:  # noqa: BLE001
        res.add("ort-int8", error=C.last_line(e), search_s=time.perf_counter() - t0, evaluations=0)
        res.finish()
        return 0

    nodes = weight_nodes(src)
    fl = [nodes[0].name, nodes[-1].name] if nodes else []
    p = str(out / "ort_int8_firstlast.onnx")
    try:
        secs = quantize(src, p, calib, fl)
        res.add("ort-int8 -first/last", model=p, search_s=t_pre + secs, evaluations=0,
                notes=notes + [f"nodes_to_exclude={fl}"], excluded=fl, **common)
    except Exception as e:  # noqa: BLE001
        res.add("ort-int8 -first/last", error=C.last_line(e), evaluations=0)

    t1 = time.perf_counter()
    try:
        rank = debug_ranking(src, uni, calib, out)
        t_rank = time.perf_counter() - t1
        chosen, k, path, hist = None, 0, uni, []
        m = ev.metric(uni)
        hist.append({"k": 0, "metric": m})
        budget = float(os.environ.get("PEER_ORT_BUDGET_S", 1800))
        while not C.within(job["metric"], ref, m, job["drop"]) and k < len(rank):
            if time.perf_counter() - t1 > budget:
                notes.append(f"stopped at k={k}: search past {budget:.0f} s")
                break
            k = 1 if k == 0 else min(2 * k, len(rank))
            path = str(out / f"ort_int8_debug_k{k}.onnx")
            quantize(src, path, calib, [r[0] for r in rank[:k]])
            m = ev.metric(path)
            hist.append({"k": k, "metric": m})
        chosen = path
        ok = C.within(job["metric"], ref, m, job["drop"])
        res.add("ort-int8 +debug", model=chosen, search_s=t_pre + (time.perf_counter() - t1) + secs,
                evaluations=ev.count, excluded=[r[0] for r in rank[:k]], history=hist, ranking_s=t_rank,
                ranking=rank[:40], within_bound_in_search=ok,
                notes=notes + [f"{k} most-affected weight layers excluded (qdq_loss_debug SQNR ranking)"
                               + ("" if ok else "; not within the bound")], **common)
    except Exception as e:  # noqa: BLE001
        res.add("ort-int8 +debug", error=C.last_line(e), evaluations=ev.count)
    res.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
