"""Targets as data live in :mod:`onnx_amp.core.targets` (re-exported here for one release); this
module measures this machine for the ``cpu`` target::

    python -m onnx_amp.runtime.targets --measure-cpu   # prints a JSON fragment to paste
"""

from __future__ import annotations

import json
import os
from typing import Any

from onnx_amp.core.targets import (  # noqa: F401
    BACKENDS, LOWERINGS, TARGET_DIR, Target, available_targets, load_target, target_from_dict,
)


# ---------------------------------------------------------------------------------------------
# Measuring this machine for the cpu target
# ---------------------------------------------------------------------------------------------

def _time(fn, repeats: int = 15, warmup: int = 3) -> float:
    import statistics
    import time

    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def measure_cpu(m: int = 256, k: int = 1024, n: int = 1024, seed: int = 0) -> dict[str, Any]:
    """Measure ORT CPU MatMul FLOP/s (fp32; int8 in the fused QDQ layout), numpy copy bandwidth,
    and the QuantizeLinear cost per element / per node. Returns numbers with how they were taken."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32) * 0.05
    so = ort.SessionOptions()
    so.log_severity_level = 3

    def session(nodes, inits, out_shape):
        g = helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits,
        )
        mdl = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
        mdl.ir_version = 10
        return ort.InferenceSession(mdl.SerializeToString(), so, providers=["CPUExecutionProvider"])

    flops = 2.0 * m * k * n
    s32 = session([helper.make_node("MatMul", ["x", "w"], ["y"])], [numpy_helper.from_array(w, "w")], [m, n])
    t32 = _time(lambda: s32.run(None, {"x": x}))
    sw = (np.abs(w).max(axis=0) / 127.0).astype(np.float32)
    wq = np.clip(np.round(w / sw), -127, 127).astype(np.int8)
    sx = np.float32(np.abs(x).max() / 127.0)
    inits = [numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(sw, "sw"),
             numpy_helper.from_array(np.array(sx, np.float32), "sx"),
             numpy_helper.from_array(np.array(0, np.int8), "zx")]
    s8 = session([
        helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "sw"], ["wd"], axis=1),
        helper.make_node("MatMul", ["xd", "wd"], ["y"]),
    ], inits, [m, n])
    t8 = _time(lambda: s8.run(None, {"x": x}))
    # a format boundary: QuantizeLinear + DequantizeLinear over a large and a tiny tensor
    big = rng.standard_normal((4096, 1024)).astype(np.float32)
    def qdq_session(shape):
        g = helper.make_graph(
            [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["y"])], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))], inits[2:],
        )
        mdl = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
        mdl.ir_version = 10
        so2 = ort.SessionOptions()
        so2.log_severity_level = 3
        so2.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep the pair
        return ort.InferenceSession(mdl.SerializeToString(), so2, providers=["CPUExecutionProvider"])
    sb = qdq_session(big.shape)
    tb = _time(lambda: sb.run(None, {"x": big}))
    tiny = big[:1, :8].copy()
    st = qdq_session(tiny.shape)
    tt = _time(lambda: st.run(None, {"x": tiny}), repeats=200, warmup=20)
    # memory bandwidth: numpy copy of 256 MiB (read + write)
    a = np.ones(64 * 1024 * 1024, np.float32)
    b = np.empty_like(a)
    tc = _time(lambda: np.copyto(b, a), repeats=7, warmup=2)
    bw = 2 * a.nbytes / tc
    import platform
    return {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, onnxruntime {ort.__version__}",
        "fp32_matmul_flops": flops / t32,
        "int8_qdq_matmul_flops": flops / t8,
        "copy_bandwidth_Bps": bw,
        "qdq_per_element_s": max(tb - tt, 0.0) / big.size,
        "qdq_per_node_s": tt / 2,  # two nodes in the tiny pair
        "shapes": {"matmul": [m, k, n], "qdq_big": list(big.shape), "copy_bytes": a.nbytes},
        "timing": "median of 15 runs after 3 warm-up (ORT default optimizations, all threads)",
    }


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Show a target or measure this CPU for the cpu target")
    ap.add_argument("target", nargs="?", help="target name or path to show")
    ap.add_argument("--measure-cpu", action="store_true")
    args = ap.parse_args(argv)
    if args.measure_cpu:
        print(json.dumps(measure_cpu(), indent=2))
    elif args.target:
        print(json.dumps(load_target(args.target).to_dict(), indent=2))
    else:
        print("\n".join(available_targets()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
