"""Benchmark the integer program: N regions x C configurations (random, seeded), CBC and HiGHS.

    python -m onnx_amp.tools.bench.bench_solve --regions 1000 --configs 64

Each region has log2(C) units over {bf16, fp8_e4m3}; gains and predicted MSE grow with the number
of lowered units plus noise, so configurations trade off as they do in real tables.
"""

from __future__ import annotations

import argparse
import time


from onnx_amp.passes.ip import solve_ip
from onnx_amp.tools.synthetic import random_problem




def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regions", type=int, default=1000)
    ap.add_argument("--configs", type=int, default=64)
    ap.add_argument("--tau_relative", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--solvers", default="CBC,HiGHS")
    ap.add_argument("--no-prune", action="store_true", help="keep dominated configurations in the IP")
    ap.add_argument("--gap", type=float, default=1e-4, help="relative MIP gap (default 1e-4, mip's default)")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    p = random_problem(a.regions, a.configs, a.seed)
    print(f"built {a.regions} regions x {a.configs} configs in {time.perf_counter() - t0:.2f}s")
    tau = a.tau_relative * p.all_low_mse()
    for s in a.solvers.split(","):
        t0 = time.perf_counter()
        sel = solve_ip(p, tau, "time", solver_name=s, prune=not a.no_prune, max_gap=a.gap)
        dt = time.perf_counter() - t0
        g, d = p.totals(sel, "time")
        print(f"{s:6s} gap {a.gap:g}: {dt:.3f}s  gain={g:.4f}  mse={d:.4g} <= tau={tau:.4g}  ({a.regions * a.configs} binaries"
              f"{'' if a.no_prune else ', dominated configurations pruned first'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
