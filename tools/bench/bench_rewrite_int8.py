"""INT8 emulate-form speedup on ONNX Runtime CPU: fp32 vs the rewritten INT8 model.

    MODEL=$(python -c 'from onnx_amp.runtime.export import ensure_subject_onnx as e; print(e("minilm"))')
    python -m onnx_amp.tools.bench.bench_rewrite_int8 "$MODEL" --batch 8 --seq 128

Partitions the model, takes activation amax (and layer-output amax for the output-Q layout) from one
torch run on random tokens / images, lowers all weight layers to INT8 (act-act attention MatMuls
stay fp32 unless --act-act), and times fp32, INT8 without output Q (-> MatMulIntegerToFloat) and
INT8 with output Q (-> QLinearMatMul); prints medians, the fused op counts and output agreement.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import torch

from onnx_amp.core import annotations as A
from onnx_amp.passes.partition import PartitionPass
from onnx_amp.passes.plan import ApplyPlanPass, uniform_plan
from onnx_amp.passes.rewrite import RewritePass
from onnx_amp.core.onnx_io import load_model
from onnx_amp.runtime.ort_session import make_session, run
from onnx_amp.runtime.torch_graph import TorchGraph


def feeds_for(model, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    g = np.random.default_rng(seed)
    out = {}
    for v in model.graph.inputs:
        if v.dtype.name.startswith("INT"):
            out[v.name] = (g.integers(1000, 20000, (batch, seq)) if "ids" in v.name else np.ones((batch, seq))).astype(np.int64)
        else:
            dims = [d if isinstance(d, int) else batch for d in v.shape]
            out[v.name] = g.standard_normal(dims).astype(np.float32)
    return out


def annotate_amax(model, feeds) -> None:
    amax: dict[tuple[str, int], float] = {}

    def op_hook(node, j, t):
        amax[(node.name, j)] = max(amax.get((node.name, j), 0.0), float(t.detach().abs().max()))
        return t

    def out_hook(node, j, t):
        amax[(node.name, -1)] = max(amax.get((node.name, -1), 0.0), float(t.detach().abs().max()))
        return t

    with torch.no_grad():
        TorchGraph(model)({k: torch.from_numpy(v) for k, v in feeds.items()}, operand_hook=op_hook, output_hook=out_hook)
    for n in A.layer_nodes(model.graph):
        wi = int(n.metadata_props.get(A.WEIGHT_INPUT, "1"))
        if n.metadata_props.get(A.LAYER_KIND) == "act_act":
            n.metadata_props[A.AMAX_A] = repr(amax[(n.name, 0)])
            n.metadata_props[A.AMAX_B] = repr(amax[(n.name, 1)])
        else:
            n.metadata_props[A.AMAX_A] = repr(amax[(n.name, 1 - wi)])
        n.metadata_props["onnx_amp.amax.y"] = repr(amax[(n.name, -1)])


def time_session(sess, feeds, repeats: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        run(sess, feeds)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(sess, feeds)
        ts.append(time.perf_counter() - t0)
    return ts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--reduce-range", action="store_true", help="7-bit INT8 weights (exact fused kernels without VNNI)")
    ap.add_argument("--act-act", action="store_true", help="also lower attention's activation-activation MatMuls")
    args = ap.parse_args(argv)
    model = load_model(args.model)
    PartitionPass()(model)
    feeds = feeds_for(model, args.batch, args.seq)
    annotate_amax(model, feeds)
    plan = uniform_plan(model, "int8", "int8", include_act_act=args.act_act)
    ApplyPlanPass(plan)(model)
    variants = {"fp32": model}
    variants["int8 (no output Q)"] = RewritePass("emulate", int8_output_q=False, reduce_range=args.reduce_range)(model).model
    variants["int8 (output Q)"] = RewritePass("emulate", int8_output_q=True, reduce_range=args.reduce_range)(model).model
    sessions = {}
    ref = None
    with tempfile.TemporaryDirectory() as d:
        for i, (name, m) in enumerate(variants.items()):
            opt = str(Path(d) / f"opt{i}.onnx")
            sess = make_session(m, threads=args.threads, optimized_model_filepath=opt)
            ops = Counter(n.op_type for n in onnx.load(opt, load_external_data=False).graph.node)
            fused = {k: v for k, v in ops.items() if k in ("QLinearMatMul", "MatMulIntegerToFloat", "MatMulInteger",
                                                          "QLinearConv", "ConvInteger", "DynamicQuantizeMatMul", "MatMul")}
            y = next(iter(run(sess, feeds).values()))
            ref = y if ref is None else ref
            sessions[name] = sess
            print(f"{name:22s} ops {fused}  max|y-y_fp32| {np.abs(y - ref).max():.4g}")
    # paired rounds: every round times each variant once, so load changes hit all of them alike
    times = {k: [] for k in sessions}
    for sess in sessions.values():
        time_session(sess, feeds, 0, warmup=2)
    for _ in range(args.repeats):
        for name, sess in sessions.items():
            times[name] += time_session(sess, feeds, 1, warmup=0)
    results = {k: statistics.median(v) for k, v in times.items()}
    for name, ts in times.items():
        q1, q3 = np.percentile(ts, [25, 75])
        print(f"{name:22s} median {results[name]*1e3:8.2f} ms  IQR [{q1*1e3:.2f}, {q3*1e3:.2f}]")
    ratios = {k: [a / b for a, b in zip(times["fp32"], v)] for k, v in times.items() if k != "fp32"}
    base = results["fp32"]
    for name, t in results.items():
        if name != "fp32":
            r = ratios[name]
            print(f"speedup {name}: {base / t:.2f}x (median of per-round ratios {statistics.median(r):.2f}x, "
                  f"IQR [{np.percentile(r, 25):.2f}, {np.percentile(r, 75):.2f}])")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
