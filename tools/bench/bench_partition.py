"""Benchmark: partition time on synthetic transformer-like graphs (``tools.synthetic``)."""

from __future__ import annotations


from onnx_amp.tools.synthetic import G, synthetic_transformer, transformer  # noqa: F401




def main(argv=None) -> int:
    import argparse
    import gc
    import time

    ap = argparse.ArgumentParser(description="Partition time on synthetic transformer-like graphs")
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--repeat", type=int, default=3, help="best-of repeats (1 for the largest)")
    ap.add_argument("--png", default="partition_bench.png")
    args = ap.parse_args(argv)
    from onnx_amp.passes.partition import annotate, partition

    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for n in sizes:
        t0 = time.perf_counter()
        model = synthetic_transformer(n)
        t_build = time.perf_counter() - t0
        nn = len(model.graph)
        reps = args.repeat if n <= 200_000 else 1
        best = best_cpu = float("inf")
        for _ in range(reps):
            t0, c0 = time.perf_counter(), time.process_time()
            part = partition(model)
            best = min(best, time.perf_counter() - t0)
            best_cpu = min(best_cpu, time.process_time() - c0)
        # baseline: one trivial linear pass over the same graph (value->producer map), to separate
        # the algorithm's growth from the memory hierarchy's (bigger heaps, more cache misses)
        gc.disable()
        c0 = time.process_time()
        nodes = list(model.graph)
        prod = {o: i for i, n in enumerate(nodes) for o in n.outputs}
        _ = [[prod.get(v) for v in n.inputs] for n in nodes]
        t_base = time.process_time() - c0
        gc.enable()
        del nodes, prod, _
        t0 = time.perf_counter()
        annotate(model, part)
        t_ann = time.perf_counter() - t0
        rows.append((nn, best, t_ann, len(part.regions), len(part.layers), best_cpu, t_base))
        print(f"built {nn} nodes in {t_build:.1f}s; partition {best:.3f}s wall ({best_cpu:.3f}s CPU), "
              f"annotate {t_ann:.3f}s, {len(part.regions)} regions", flush=True)
        del model, part
    print()
    print(f"{'nodes':>9} {'wall s':>8} {'CPU s':>7} {'CPU us/node':>11} {'annotate s':>10} {'regions':>8} "
          f"{'layers':>8} {'growth':>7} {'base CPU s':>10} {'base growth':>11}")
    for k, (nn, t, ta, nr, nl, tc, tb) in enumerate(rows):
        growth = "" if k == 0 else f"{(tc / rows[k - 1][5]) / (nn / rows[k - 1][0]):.2f}"
        bgrowth = "" if k == 0 else f"{(tb / rows[k - 1][6]) / (nn / rows[k - 1][0]):.2f}"
        print(f"{nn:>9} {t:>8.3f} {tc:>7.3f} {1e6 * tc / nn:>11.2f} {ta:>10.3f} {nr:>8} {nl:>8} {growth:>7} "
              f"{tb:>10.3f} {bgrowth:>11}")
    print("growth = (CPU time ratio) / (node ratio) between consecutive sizes; 1.00 is exactly linear;")
    print("base = one trivial pass (value->producer dict) over the same graph, for the memory-hierarchy share")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        xs = [r[0] for r in rows]
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.loglog(xs, [r[1] for r in rows], "o-", label="partition() wall")
        ax.loglog(xs, [r[5] for r in rows], "^-", label="partition() CPU")
        ax.loglog(xs, [r[1] + r[2] for r in rows], "s--", label="partition + annotate wall")
        ax.loglog(xs, [r[6] for r in rows], "x:", label="trivial pass CPU (baseline)")
        ax.loglog(xs, [rows[0][5] * x / xs[0] for x in xs], ":", color="gray", label="linear")
        ax.axhline(2.0, color="red", lw=0.8, label="2 s")
        ax.set_xlabel("nodes")
        ax.set_ylabel("seconds")
        ax.set_title("onnx-amp partition time (synthetic transformer)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.png, dpi=120)
        print(f"plot: {args.png}")
    except ImportError:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
