"""Which ONNX graph form makes OpenVINO's CPU plugin execute a layer at each onnx-amp format.

For each format (BF16, INT8, FP8-E4M3, FP8-E5M2) and graph form, prints the precision the layer
really ran at (the runtime graph: layer type, ``runtimePrecision``, primitive) and its speed over
OpenVINO FP32 (inference precision f32), timed side by side, interleaved in one process:

1. single layers built by hand (MatMul 128x1024x1024, Conv 3x3 64->64 at 56x56, attention's
   activation-activation MatMul): the forms the rewrite pass cannot make (per-tensor weights,
   FP8 with f32 compute, the plugin's default bf16 hint, dynamic quantization on);
2. a small MLP with an attention block and a small conv net through the real passes (partition,
   amax from a run, uniform plan, ``rewrite``) with three lowerings: the plain emulate form, ORT's
   (``ORT_CPU_LOWERING``) and OpenVINO's (``backend.lowering``), with the mismatch checker;
3. with ``--subjects``: the real subject exports (minilm-sentiment, effnet-lite0, smollm2),
   calibrated, each uniform plan lowered with OpenVINO's lowering: mismatches and speed.

    python -m onnx_amp.tools.bench.openvino_forms [--subjects [NAME ...]] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from typing import Any, Callable

import ml_dtypes
import numpy as np
import onnx_ir as ir
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from onnx_amp.tools.synthetic import (  # noqa: F401  (the models the measurements run on)
    _model, _partitioned, _t, _with_plan, annotate_amax, lowered, small_convnet, small_mlp,
)

FORMATS = ("bf16", "int8", "fp8_e4m3", "fp8_e5m2")
_Q = {"int8": (T.INT8, np.int8, 127.0), "uint8": (T.UINT8, np.uint8, 127.0),
      "fp8_e4m3": (T.FLOAT8E4M3FN, ml_dtypes.float8_e4m3fn, 448.0),
      "fp8_e5m2": (T.FLOAT8E5M2, ml_dtypes.float8_e5m2, 57344.0)}


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------

def interleaved(runners: list[Callable[[], Any]], rounds: int = 15, min_s: float = 0.02) -> list[float]:
    """Median seconds per call of each runner, timed round-robin (each round runs every runner in
    turn, ``loops`` calls each), so machine load hits all alike."""
    loops = []
    for r in runners:
        r()
        t0 = time.perf_counter()
        r()
        dt = max(time.perf_counter() - t0, 1e-6)
        loops.append(max(1, int(min_s / dt)))
    times: list[list[float]] = [[] for _ in runners]
    for _ in range(rounds):
        for i, r in enumerate(runners):
            t0 = time.perf_counter()
            for _ in range(loops[i]):
                r()
            times[i].append((time.perf_counter() - t0) / loops[i])
    return [statistics.median(t) for t in times]


# ---------------------------------------------------------------------------------------------
# 1. single layers, hand-built
# ---------------------------------------------------------------------------------------------


def _quant_weight(w: np.ndarray, fmt: str, axis: int, per_channel: bool):
    dt, npd, qmax = _Q[fmt]
    red = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=red) if per_channel else np.abs(w).max()
    s = (amax / qmax).astype(np.float32)
    sb = s.reshape([-1 if i == axis else 1 for i in range(w.ndim)]) if per_channel else s
    if fmt == "int8":
        return np.clip(np.round(w / sb), -127, 127).astype(np.int8), s
    q = np.clip(w / sb, -qmax, qmax).astype(npd)
    return q, s


def layer_form(kind: str, x: np.ndarray, w: np.ndarray | None, wfmt: str, afmt: str, *, compute: str = "f32",
               per_channel: bool = True, uint8: bool = False, out_q: bool = False):
    """One layer (``kind``: matmul [M,K]x[K,N], conv NCHW 3x3 pad 1, actact [B,H,S,D]x[B,H,D,S] with
    ``w`` the second activation) in a graph form: weight/activation formats, ``compute`` f32 or bf16
    (Cast in, Cast out), per-channel or per-tensor weight scales, uint8 activations (zero point 128),
    an INT8 output Q/DQ. Returns (onnx ModelProto, feeds)."""
    nodes, inits = [], []
    feeds = {"x": x} if kind != "actact" else {"x": x, "x2": w}

    def act(name: str, arr: np.ndarray) -> str:
        cur = name
        if afmt in _Q:
            f = "uint8" if (afmt == "int8" and uint8) else afmt
            dt, npd, qmax = _Q[f]
            s = np.float32(np.abs(arr).max() / qmax)
            inits.extend([numpy_helper.from_array(np.array(s, np.float32), f"{name}_s"),
                          _t(f"{name}_z", np.array(128 if f == "uint8" else 0).astype(npd), dt)])
            sz = [f"{name}_s", f"{name}_z"]
            nodes.extend([helper.make_node("QuantizeLinear", [name, *sz], [f"{name}_q"]),
                          helper.make_node("DequantizeLinear", [f"{name}_q", *sz], [f"{name}_dq"])])
            cur = f"{name}_dq"
        elif afmt == "bf16" and compute == "f32":  # the emulate form's Cast pair
            nodes.extend([helper.make_node("Cast", [name], [f"{name}_b"], to=T.BFLOAT16),
                          helper.make_node("Cast", [f"{name}_b"], [f"{name}_f"], to=T.FLOAT)])
            cur = f"{name}_f"
        if compute == "bf16":
            nodes.append(helper.make_node("Cast", [cur], [f"{cur}_c"], to=T.BFLOAT16))
            cur = f"{cur}_c"
        return cur

    a = act("x", x)
    if kind == "actact":
        b = act("x2", w)
        y_shape = [x.shape[0], x.shape[1], x.shape[2], w.shape[3]]
    else:
        axis = 1 if kind == "matmul" else 0
        if wfmt in _Q:
            q, s = _quant_weight(w, wfmt, axis, per_channel)
            dt = _Q[wfmt][0]
            inits.extend([_t("wq", q, dt), numpy_helper.from_array(s, "ws"), _t("wz", np.zeros(s.shape, q.dtype), dt)])
            nodes.append(helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=axis))
            b = "wd"
            if compute == "bf16":
                nodes.append(helper.make_node("Cast", ["wd"], ["wdc"], to=T.BFLOAT16))
                b = "wdc"
        elif wfmt == "bf16":
            inits.append(_t("w", w.astype(ml_dtypes.bfloat16), T.BFLOAT16))
            b = "w"
            if compute == "f32":
                nodes.append(helper.make_node("Cast", ["w"], ["wf"], to=T.FLOAT))
                b = "wf"
        else:
            inits.append(numpy_helper.from_array(w.astype(np.float32), "w"))
            b = "w"
            if compute == "bf16":
                nodes.append(helper.make_node("Cast", ["w"], ["wc"], to=T.BFLOAT16))
                b = "wc"
        y_shape = [x.shape[0], w.shape[1]] if kind == "matmul" else [x.shape[0], w.shape[0], x.shape[2], x.shape[3]]
    op = helper.make_node("Conv", [a, b], ["yl"], name="L", pads=[1, 1, 1, 1]) if kind == "conv" else \
        helper.make_node("MatMul", [a, b], ["yl"], name="L")
    nodes.append(op)
    if compute == "bf16":
        nodes.append(helper.make_node("Cast", ["yl"], ["y"], to=T.FLOAT))
    elif out_q:
        inits.extend([numpy_helper.from_array(np.array(0.05, np.float32), "ys"),
                      numpy_helper.from_array(np.array(0, np.int8), "yz")])
        nodes.extend([helper.make_node("QuantizeLinear", ["yl", "ys", "yz"], ["yq"]),
                      helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])])
    else:
        nodes.append(helper.make_node("Identity", ["yl"], ["y"]))
    inputs = {k: list(v.shape) for k, v in feeds.items()}
    return _model(nodes, inits, inputs, y_shape), feeds


#: (label, kind, weight fmt, activation fmt, options, compile overrides)
LAYER_FORMS: list[tuple[str, str, str, str, dict, dict]] = [
    ("fp32", "matmul", "fp32", "fp32", {}, {}),
    ("fp32 graph, plugin default hint (bf16)", "matmul", "fp32", "fp32", {}, {"INFERENCE_PRECISION_HINT": None}),
    ("bf16 Cast pair, f32 compute (emulate form)", "matmul", "bf16", "bf16", {}, {}),
    ("bf16 compute (bf16_compute)", "matmul", "bf16", "bf16", {"compute": "bf16"}, {}),
    ("int8 per-channel W, int8 A", "matmul", "int8", "int8", {}, {}),
    ("int8 per-tensor W, int8 A", "matmul", "int8", "int8", {"per_channel": False}, {}),
    ("int8 W, uint8 A (zero point 128)", "matmul", "int8", "int8", {"uint8": True}, {}),
    ("int8 W+A, output Q/DQ", "matmul", "int8", "int8", {"out_q": True}, {}),
    ("int8 W only, f32 A (dyn. quant off)", "matmul", "int8", "fp32", {}, {}),
    ("int8 W only, f32 A (plugin default dyn. quant 32)", "matmul", "int8", "fp32", {},
     {"DYNAMIC_QUANTIZATION_GROUP_SIZE": None}),
    ("int8 W only, bf16 compute", "matmul", "int8", "bf16", {"compute": "bf16"}, {}),
    ("e4m3 W+A, f32 compute (emulate form)", "matmul", "fp8_e4m3", "fp8_e4m3", {}, {}),
    ("e4m3 W+A, bf16 compute (bf16_compute)", "matmul", "fp8_e4m3", "fp8_e4m3", {"compute": "bf16"}, {}),
    ("e4m3 W only, f32 compute", "matmul", "fp8_e4m3", "fp32", {}, {}),
    ("e4m3 W only, bf16 compute", "matmul", "fp8_e4m3", "bf16", {"compute": "bf16"}, {}),
    ("e4m3 W only, f32 graph, plugin default hint", "matmul", "fp8_e4m3", "fp32", {},
     {"INFERENCE_PRECISION_HINT": None}),
    ("e5m2 W+A, f32 compute (emulate form)", "matmul", "fp8_e5m2", "fp8_e5m2", {}, {}),
    ("e5m2 W+A, bf16 compute (bf16_compute)", "matmul", "fp8_e5m2", "fp8_e5m2", {"compute": "bf16"}, {}),
    ("e5m2 W only, bf16 compute", "matmul", "fp8_e5m2", "bf16", {"compute": "bf16"}, {}),
    ("fp32", "conv", "fp32", "fp32", {}, {}),
    ("bf16 Cast pair, f32 compute (emulate form)", "conv", "bf16", "bf16", {}, {}),
    ("bf16 compute (bf16 Conv, opset 21)", "conv", "bf16", "bf16", {"compute": "bf16"}, {}),
    ("int8 per-channel W, int8 A", "conv", "int8", "int8", {}, {}),
    ("int8 per-tensor W, int8 A", "conv", "int8", "int8", {"per_channel": False}, {}),
    ("int8 W, uint8 A", "conv", "int8", "int8", {"uint8": True}, {}),
    ("int8 W+A, output Q/DQ", "conv", "int8", "int8", {"out_q": True}, {}),
    ("e4m3 W+A, bf16 compute", "conv", "fp8_e4m3", "fp8_e4m3", {"compute": "bf16"}, {}),
    ("fp32", "actact", "", "fp32", {}, {}),
    ("bf16 compute", "actact", "", "bf16", {"compute": "bf16"}, {}),
    ("int8 A x int8 B", "actact", "", "int8", {}, {}),
    ("uint8 A x uint8 B", "actact", "", "int8", {"uint8": True}, {}),
    ("e4m3 A x e4m3 B, bf16 compute", "actact", "", "fp8_e4m3", {"compute": "bf16"}, {}),
]


def layer_inputs(kind: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    x_shape, w_shape, w_std = {"matmul": ((128, 1024), (1024, 1024), 0.05),
                               "conv": ((1, 64, 56, 56), (64, 64, 3, 3), 0.05),
                               "actact": ((4, 4, 128, 64), (4, 4, 64, 128), 1.0)}[kind]
    return rng.standard_normal(x_shape).astype(np.float32), (rng.standard_normal(w_shape) * w_std).astype(np.float32)


def _compile(model_proto, overrides: dict, threads: int | None):
    from onnx_amp.runtime.backends.openvino import _core, compile_config

    cfg = compile_config(threads=threads, timing=True)
    for k, v in overrides.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    core = _core()
    return core.compile_model(core.read_model(model_proto.SerializeToString(), b""), "CPU", cfg)


def _main_op(compiled) -> str:
    from onnx_amp.runtime.backends.openvino import _COMPUTE_TYPES, _rt

    for op in compiled.get_runtime_model().get_ordered_ops():
        if _rt(op, "layerType") in _COMPUTE_TYPES:
            ins = [str(op.input(i).get_element_type().get_type_name()) for i in range(min(2, op.get_input_size()))]
            return f"{_rt(op, 'layerType')} {_rt(op, 'runtimePrecision')} {_rt(op, 'primitiveType')} in={'/'.join(ins)}"
    return "no matrix kernel"


def bench_layers(threads: int | None, rounds: int) -> list[dict]:
    rows = []
    for kind in ("matmul", "conv", "actact"):
        x, w = layer_inputs(kind)
        forms = [f for f in LAYER_FORMS if f[1] == kind]
        reqs, meta = [], []
        for label, _, wf, af, opts, over in forms:
            m, feeds = layer_form(kind, x, w, wf, af, **opts)
            c = _compile(m, over, threads)
            req = c.create_infer_request()
            reqs.append(lambda req=req, feeds=feeds: req.infer(feeds))
            meta.append((label, _main_op(c)))
        ts = interleaved(reqs, rounds)
        for (label, ran), t in zip(meta, ts, strict=True):
            rows.append({"part": "layer", "kind": kind, "form": label, "executed": ran, "ms": t * 1e3,
                         "speedup": ts[0] / t})
    return rows


# ---------------------------------------------------------------------------------------------
# 2. small models through the real passes
# ---------------------------------------------------------------------------------------------


def _summary(mm: list[dict]) -> str:
    if not mm:
        return "0 mismatches"
    c = Counter(f"{m['kind']}:{m['op_type']}->{m['executed']}" for m in mm)
    return f"{len(mm)} mismatches (" + ", ".join(f"{k} x{v}" for k, v in c.most_common()) + ")"


def bench_models(threads: int | None, rounds: int) -> list[dict]:
    from onnx_amp.passes.rewrite import ORT_CPU_LOWERING
    from onnx_amp.runtime.backends import get_backend
    from onnx_amp.runtime.backends.openvino import precision_mismatches

    be = get_backend("openvino_cpu")
    lowerings = {"emulate": {}, "ort_cpu": dict(ORT_CPU_LOWERING), "openvino_cpu": be.lowering}
    rows = []
    for name, build in (("small MLP+attention", small_mlp), ("small conv net", small_convnet)):
        model, feeds = build()
        annotate_amax(model, feeds)
        runners, meta = [], []
        s = be.session(model, threads=threads, timing=True)
        runners.append(lambda s=s, feeds=feeds: s.run(feeds))
        meta.append(("fp32", "-", _summary(precision_mismatches(_with_plan(model, "fp32", "fp32"), s))))
        for fmt in FORMATS:
            for lname, low in lowerings.items():
                m = lowered(model, fmt, fmt, low)
                s = be.session(m, threads=threads, timing=True)
                runners.append(lambda s=s, feeds=feeds: s.run(feeds))
                meta.append((fmt, lname, _summary(precision_mismatches(m, s))))
        ts = interleaved(runners, rounds)
        for (fmt, lname, mm), t in zip(meta, ts, strict=True):
            rows.append({"part": "model", "model": name, "format": fmt, "lowering": lname, "mismatches": mm,
                         "ms": t * 1e3, "speedup": ts[0] / t})
    return rows


# ---------------------------------------------------------------------------------------------
# 3. the real subjects
# ---------------------------------------------------------------------------------------------

SUBJECTS = {"minilm-sentiment": 8, "effnet-lite0": 4, "smollm2": 2}


def calibrated_subject(name: str, n: int):
    """(partitioned, calibrated ir.Model of the subject's cached export, a batch of ``n`` samples)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from onnx_amp.passes.partition import PartitionPass
    from onnx_amp.passes.sensitivity import AnnotateSensitivityPass
    from onnx_amp.runtime.calibrate import calibrate
    from onnx_amp.runtime.export import ensure_subject_onnx
    from onnx_amp.runtime.subjects import subject_batch

    model = ir.load(ensure_subject_onnx(name))
    PartitionPass()(model)
    batch = subject_batch(name, n, "calib")
    AnnotateSensitivityPass(calibrate(model, batch, progress=False))(model)
    return model, {k: v for k, v in batch.items() if k != "labels"}


def bench_subjects(names: list[str], threads: int | None, rounds: int, details: int = 8) -> list[dict]:
    from onnx_amp.runtime.backends import get_backend
    from onnx_amp.runtime.backends.openvino import format_mismatches, precision_mismatches

    be = get_backend("openvino_cpu")
    rows = []
    for name in names:
        t0 = time.perf_counter()
        model, feeds = calibrated_subject(name, SUBJECTS.get(name, 2))
        print(f"[{name}] partitioned and calibrated in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        runners, meta = [], []
        m32 = _with_plan(model, "fp32", "fp32")
        s = be.session(model, threads=threads, timing=True)
        runners.append(lambda s=s, feeds=feeds: s.run(feeds))
        mm = precision_mismatches(m32, s)
        meta.append(("fp32", mm))
        for fmt in FORMATS:
            m = lowered(model, fmt, fmt, be.lowering)
            s = be.session(m, threads=threads, timing=True)
            runners.append(lambda s=s, feeds=feeds: s.run(feeds))
            meta.append((fmt, precision_mismatches(m, s)))
        ts = interleaved(runners, max(5, rounds // 3), min_s=0.0)
        n_layers = sum(1 for n in model.graph if "onnx_amp.layer" in n.metadata_props)
        for (fmt, mm), t in zip(meta, ts, strict=True):
            rows.append({"part": "subject", "model": name, "format": fmt, "layers": n_layers,
                         "mismatches": _summary(mm), "details": format_mismatches(mm, details),
                         "ms": t * 1e3, "speedup": ts[0] / t})
    return rows


# ---------------------------------------------------------------------------------------------
# 4. the numbers of runtime/targets/openvino.json
# ---------------------------------------------------------------------------------------------

def measure_target(threads: int | None = None, rounds: int = 15, m: int = 256, k: int = 1024, n: int = 1024) -> dict:
    """Peak FLOP/s per format (OpenVINO FullyConnected ``m x k x n`` in the lowering's graph form:
    fp32, bf16 compute, int8 Q/DQ; all cores unless ``threads``), memory bandwidth (numpy copy of
    256 MiB, read + write), and the format-boundary cost (an activation Q/DQ pair over 4096x1024 and
    over 1x8), all timed interleaved; medians of ``rounds``."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
    forms = {"fp32": ("fp32", "fp32", {}), "bf16": ("bf16", "bf16", {"compute": "bf16"}), "int8": ("int8", "int8", {})}
    runners, ops = [], {}
    for f, (wf, af, opts) in forms.items():
        c = _compile(layer_form("matmul", x, w, wf, af, **opts)[0], {}, threads)
        ops[f] = _main_op(c)
        req = c.create_infer_request()
        runners.append(lambda req=req: req.infer({"x": x}))
    big = rng.standard_normal((4096, 1024)).astype(np.float32)
    tiny = big[:1, :8].copy()
    for arr in (big, tiny):
        nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
                 helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
        inits = [numpy_helper.from_array(np.array(0.03, np.float32), "s"),
                 numpy_helper.from_array(np.array(0, np.int8), "z")]
        proto = _model(nodes, inits, {"x": list(arr.shape)}, list(arr.shape))
        req = _compile(proto, {}, threads).create_infer_request()
        runners.append(lambda req=req, arr=arr: req.infer({"x": arr}))
    a = np.ones(64 * 1024 * 1024, np.float32)
    b = np.empty_like(a)
    runners.append(lambda: np.copyto(b, a))
    ts = interleaved(runners, rounds)
    flops = 2.0 * m * k * n
    import openvino as ov

    return {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, openvino {ov.__version__}",
        "peak_flops": {f: flops / t for f, t in zip(forms, ts[:3], strict=True)}, "executed": ops,
        "qdq_per_element_s": max(ts[3] - ts[4], 0.0) / big.size, "qdq_per_node_s": ts[4] / 2,
        "copy_bandwidth_Bps": 2 * a.nbytes / ts[5],
        "shapes": {"matmul": [m, k, n], "qdq_big": list(big.shape), "copy_bytes": a.nbytes},
        "timing": f"median of {rounds} interleaved rounds, threads {threads or 'all'}",
    }


# ---------------------------------------------------------------------------------------------

def _print(rows: list[dict]) -> None:
    for r in rows:
        if r["part"] == "layer":
            print(f"{r['kind']:7s} {r['form']:52s} {r['executed']:58s} {r['ms']:8.3f} ms  x{r['speedup']:.2f}")
        elif r["part"] == "model":
            print(f"{r['model']:20s} {r['format']:9s} {r['lowering']:13s} {r['ms']:8.3f} ms  x{r['speedup']:.2f}  "
                  f"{r['mismatches']}")
        else:
            print(f"{r['model']:17s} {r['format']:9s} {r['layers']:4d} layers {r['ms']:9.2f} ms  x{r['speedup']:.2f}  "
                  f"{r['mismatches']}")
            if r["details"]:
                print("    " + r["details"].replace("\n", "\n    "))


def main(argv=None) -> int:
    import openvino as ov

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="inference threads (default 1)")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    ap.add_argument("--skip-layers", action="store_true")
    ap.add_argument("--skip-models", action="store_true")
    ap.add_argument("--subjects", nargs="*", default=None, metavar="NAME",
                    help=f"also the real subjects (default all: {', '.join(SUBJECTS)})")
    ap.add_argument("--measure-target", action="store_true",
                    help="print the numbers of runtime/targets/openvino.json (all cores) and exit")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    from onnx_amp.runtime.backends import get_backend

    be = get_backend("openvino_cpu")
    if args.measure_target:
        print(json.dumps(measure_target(None, args.rounds), indent=2))
        return 0
    print(f"# openvino {ov.__version__}, {platform.processor() or platform.machine()}, capabilities "
          f"{be.capabilities()} -> formats {be.formats()}, lowering {be.lowering}, threads {args.threads}")
    rows: list[dict] = []
    if not args.skip_layers:
        print("# 1. single layers (speedup over the fp32 row of the same kind, interleaved)")
        part = bench_layers(args.threads, args.rounds)
        _print(part)
        rows += part
    if not args.skip_models:
        print("# 2. small models through partition -> plan -> rewrite (speedup over OpenVINO fp32)")
        part = bench_models(args.threads, args.rounds)
        _print(part)
        rows += part
    if args.subjects is not None:
        print("# 3. subjects, OpenVINO lowering (speedup over OpenVINO fp32)")
        part = bench_subjects(args.subjects or list(SUBJECTS), args.threads, args.rounds)
        _print(part)
        rows += part
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
