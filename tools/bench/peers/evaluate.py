"""Every tool's output model on the same backend, in the driver's process (main venv).

- task metric on the held-out and test samples (``_common``'s definitions, the same as
  ``onnx_amp.runtime.evaluate.task_metric``: perplexity = exp(mean per-window next-token CE),
  accuracy against the labels, agreement = accuracy against the FP32 model's top-1);
- the backend a tool targets: ONNX Runtime CPU with default session options (``ORT_ENABLE_ALL``, the
  fused integer kernels a user gets) for QDQ ONNX, OpenVINO CPU (``INFERENCE_PRECISION_HINT=f32``) for
  OpenVINO IR; onnx-amp's model also with onnx-amp's own session options (CSE off, what it ships);
- size on disk (model + external data / ``.bin``), standard ONNX or not (``onnx.checker`` and only
  ``ai.onnx`` ops), and what ORT fused the model into (``SessionOptions.optimized_model_filepath``);
- end-to-end time: all variants of a subject in one process, 1 thread, paired rounds in shuffled
  order (``onnx_amp.runtime.timing.time_paired``), median times and ratios to FP32.
"""

from __future__ import annotations

import collections
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from onnx_amp.tools.bench.peers import _common as C

#: ORT's fused/quantized kernels worth counting in an optimized model
FUSED = ("QLinearConv", "QLinearMatMul", "MatMulIntegerToFloat", "QGemm", "QLinearAdd", "QLinearMul",
         "QLinearSigmoid", "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearConcat", "QLinearSoftmax",
         "QLinearLeakyRelu", "DynamicQuantizeMatMul", "MatMulInteger", "ConvInteger", "DynamicQuantizeLinear",
         "QuantizeLinear", "DequantizeLinear", "Conv", "FusedConv", "MatMul", "FusedMatMul", "Gemm",
         "Add", "Mul", "NchwcConv", "ReorderInput", "ReorderOutput", "QAttention", "Attention",
         "SkipLayerNormalization", "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization",
         "LayerNormalization", "BiasGelu", "Gelu", "FastGelu", "RotaryEmbedding", "GroupQueryAttention")


def ort_session(path: str, threads: int = 1, optimized_path: str | None = None, disabled: tuple = ()):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    kw = {"disabled_optimizers": list(disabled)} if disabled else {}
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"], **kw)


class OrtRunner:
    def __init__(self, path: str, threads: int = 1, disabled: tuple = ()):
        self.sess = ort_session(path, threads, disabled=disabled)
        self.inputs = [i.name for i in self.sess.get_inputs()]

    def __call__(self, feed: dict) -> np.ndarray:
        return self.sess.run(None, {k: feed[k] for k in self.inputs})[0]


class OvRunner:
    """An OpenVINO CPU compiled model (IR or ONNX), f32 inference precision, ``threads`` threads."""

    def __init__(self, path: str, threads: int = 1):
        import openvino as ov

        core = ov.Core()
        cfg = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
               "PERFORMANCE_HINT": "LATENCY"}
        self.compiled = core.compile_model(core.read_model(path), "CPU", cfg)
        self.inputs = [p.get_any_name() for p in self.compiled.inputs]
        self.request = self.compiled.create_infer_request()

    def __call__(self, feed: dict) -> np.ndarray:
        return np.asarray(self.request.infer({k: feed[k] for k in self.inputs})[0]).copy()


def runner(v: dict, threads: int = 1) -> Callable[[dict], np.ndarray]:
    if v["backend"] == "openvino_cpu":
        return OvRunner(v["model"], threads)
    return OrtRunner(v["model"], threads, disabled=disabled_optimizers(v))


def disabled_optimizers(v: dict) -> tuple:
    """The ORT graph transformers a variant runs without: onnx-amp's own session options (CSE off), or
    the ones a peer's runner had to turn off for ORT to load its model (``disabled_optimizers``)."""
    if v.get("session") == "onnx-amp":
        return ("CommonSubexpressionElimination",)
    return tuple(v.get("disabled_optimizers") or ())


def metric(run: Callable, block: dict, kind: str) -> float:
    per = [C.sample_losses(kind, np.asarray(run(f)), f) for f in C.samples(block, None, batch=8)]
    return C.metric_from(kind, np.concatenate(per), block.get(C.LABELS))


def size_bytes(path: str) -> int:
    p = Path(path)
    files = {p}
    if p.suffix == ".xml":
        files.add(p.with_suffix(".bin"))
    else:
        import onnx

        m = onnx.load(str(p), load_external_data=False)
        for t in m.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    files.add(p.parent / e.value)
    return int(sum(f.stat().st_size for f in files if f.exists()))


def standard_onnx(path: str) -> tuple[bool, str]:
    """(standard, why): ``onnx.checker`` passes and every op is in the default ``ai.onnx`` domain."""
    if not path.endswith(".onnx"):
        return False, "OpenVINO IR, not ONNX"
    import onnx

    try:
        onnx.checker.check_model(path)
    except Exception as e:  # noqa: BLE001
        return False, f"onnx.checker: {C.last_line(e)}"
    m = onnx.load(path, load_external_data=False)
    custom = collections.Counter(f"{n.domain}::{n.op_type}" for n in m.graph.node if n.domain not in ("", "ai.onnx"))
    if custom:
        return False, "custom ops: " + ", ".join(f"{k} x{c}" for k, c in custom.most_common(4))
    return True, "checker ok, ai.onnx ops only"


def qdq_layout(path: str) -> dict:
    """How the file places its Q/DQ: counts, activation/weight int types, per-channel weights,
    DQ outputs shared by several consumers, and which op types consume a DQ / feed a Q."""
    import onnx

    m = onnx.load(path, load_external_data=False)
    init = {t.name: t for t in m.graph.initializer}
    consumers = collections.defaultdict(list)
    producer = {}
    for n in m.graph.node:
        for i in n.input:
            consumers[i].append(n)
        for o in n.output:
            producer[o] = n
    out: dict[str, Any] = collections.Counter()
    dq_into, q_after = collections.Counter(), collections.Counter()
    for n in m.graph.node:
        if n.op_type == "DequantizeLinear":
            weight = n.input[0] in init
            key = "weight" if weight else "activation"
            out[f"DQ {key}"] += 1
            zp = init.get(n.input[2]) if len(n.input) > 2 else None
            if zp is not None:
                out[f"{key} {onnx.helper.tensor_dtype_to_np_dtype(zp.data_type).name}"] += 1
            sc = init.get(n.input[1])
            if weight and sc is not None and int(np.prod(sc.dims)) > 1:
                out["weight per-channel"] += 1
            cons = consumers[n.output[0]]
            if len(cons) > 1:
                out["DQ shared by >1 consumer"] += 1
            for c in cons:
                dq_into[c.op_type] += 1
        elif n.op_type == "QuantizeLinear":
            out["Q"] += 1
            p = producer.get(n.input[0])
            q_after[p.op_type if p else "graph input"] += 1
    return {**dict(out), "DQ feeds": dict(dq_into.most_common()), "Q follows": dict(q_after.most_common())}


def fused_ops(path: str, workdir: Path, disabled: tuple = ()) -> dict:
    """Op histogram of what ORT (default options but ``disabled``, 1 thread) made of the model."""
    import onnx

    with tempfile.TemporaryDirectory(dir=workdir) as d:
        opt = os.path.join(d, "opt.onnx")
        try:
            ort_session(path, 1, optimized_path=opt, disabled=disabled)
            m = onnx.load(opt, load_external_data=False)
        except Exception as e:  # noqa: BLE001
            return {"error": C.last_line(e)}
    hist = collections.Counter(n.op_type for n in m.graph.node)
    return {"total": sum(hist.values()), **{k: hist[k] for k in FUSED if hist[k]},
            "other": {k: c for k, c in hist.most_common() if k not in FUSED}}
