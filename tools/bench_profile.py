"""Benchmark: profiling time vs region count, with structural sharing of measurements.

Builds synthetic deep residual MLP stacks (each block ``MatMul -> Relu -> MatMul -> Add`` is one
sequential region with 2 units; block widths cycle over ``--widths`` so there are that many distinct
structures), partitions them, and runs ``profile_model`` (real ORT sessions, cpu target). Also profiles a
small stack of the same blocks without sharing, to estimate what measuring every region would cost.

    python -m onnx_amp.tools.bench_profile --blocks 100 1000 3000 --out /work/scratch/gains/bench_profile

Writes ``bench_profile.json`` and ``bench_profile.png`` (profile seconds vs regions) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper


def deep_stack(nblocks: int, d: int = 32, widths=(64, 96, 128), seed: int = 0) -> ir.Model:
    from onnx_ir.passes.common import ShapeInferencePass

    from onnx_amp.passes.partition import PartitionPass

    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for b in range(nblocks):
        h = widths[b % len(widths)]
        inits += [numpy_helper.from_array((rng.standard_normal((d, h)) * 0.1).astype(np.float32), f"w1_{b}"),
                  numpy_helper.from_array((rng.standard_normal((h, d)) * 0.1).astype(np.float32), f"w2_{b}")]
        nodes += [helper.make_node("MatMul", [x, f"w1_{b}"], [f"h{b}"], name=f"mm1_{b}"),
                  helper.make_node("Relu", [f"h{b}"], [f"r{b}"], name=f"relu_{b}"),
                  helper.make_node("MatMul", [f"r{b}", f"w2_{b}"], [f"o{b}"], name=f"mm2_{b}"),
                  helper.make_node("Add", [f"o{b}", x], [f"y{b}"], name=f"add_{b}")]
        x = f"y{b}"
    g = helper.make_graph(nodes, "deep", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", d])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", d])], inits)
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    proto.ir_version = 10
    model = ir.from_proto(proto)
    ShapeInferencePass()(model)
    PartitionPass()(model)
    return model


def main(argv=None) -> int:
    from onnx_amp.runtime.profile import profile_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, nargs="+", default=[100, 1000, 3000])
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 96, 128])
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--unshared_sample", type=int, default=6, help="regions timed without sharing for the estimate")
    ap.add_argument("--out", default="/work/scratch/gains/bench_profile")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.blocks:
        t0 = time.perf_counter()
        model = deep_stack(n, widths=tuple(args.widths))
        t_build = time.perf_counter() - t0
        res = profile_model(model, "cpu", batch_size=args.batch_size, repeats=args.repeats, warmup=1,
                            progress=False)
        # what measuring every region would cost: a small stack of the same blocks, share=False
        small = deep_stack(args.unshared_sample, widths=tuple(args.widths))
        res_u = profile_model(small, "cpu", batch_size=args.batch_size, repeats=args.repeats, warmup=1,
                              progress=False, share=False)
        per_region = res_u.seconds / res_u.n_regions
        row = {"blocks": n, "regions": res.n_regions, "distinct_structures": res.n_unique,
               "ort_sessions": res.n_sessions, "profile_s": round(res.seconds, 2),
               "build_and_partition_s": round(t_build, 2),
               "unshared_s_per_region": round(per_region, 3),
               "unshared_estimate_s": round(per_region * res.n_regions, 1),
               "unshared_sample_sessions": res_u.n_sessions}
        rows.append(row)
        print(json.dumps(row), flush=True)
    (out / "bench_profile.json").write_text(json.dumps(rows, indent=1) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    xs = [r["regions"] for r in rows]
    ax.plot(xs, [r["profile_s"] for r in rows], "o-", label="shared measurements (onnx-amp)")
    ax.plot(xs, [r["unshared_estimate_s"] for r in rows], "s--", label="every region measured (estimate)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("regions")
    ax.set_ylabel("profile time (s)")
    ax.set_title(f"profile time vs regions ({len(args.widths)} distinct structures)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "bench_profile.png", dpi=120)
    print(f"wrote {out / 'bench_profile.json'} and {out / 'bench_profile.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
