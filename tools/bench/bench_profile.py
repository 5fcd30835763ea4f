"""Benchmark: profiling time vs region count, with structural sharing of measurements.

Builds synthetic deep residual MLP stacks (each block ``MatMul -> Relu -> MatMul -> Add`` is one
sequential region with 2 units; block widths cycle over ``--widths`` so there are that many distinct
structures), partitions them, and runs ``profile_model`` (real ORT sessions, cpu target). Also profiles a
small stack of the same blocks without sharing, to estimate what measuring every region would cost.

    python -m onnx_amp.tools.bench.bench_profile --blocks 100 1000 3000 --out out/bench_profile

Writes ``bench_profile.json`` and ``bench_profile.png`` (profile seconds vs regions) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


from onnx_amp.tools.synthetic import deep_stack




def main(argv=None) -> int:
    from onnx_amp.runtime.profile import profile_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, nargs="+", default=[100, 1000, 3000])
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 96, 128])
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--unshared_sample", type=int, default=6, help="regions timed without sharing for the estimate")
    ap.add_argument("--out", default="out/bench_profile")
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
