"""Benchmark the integer program: N regions x C configurations (random, seeded), CBC and HiGHS.

    python -m onnx_amp.tools.bench_solve --regions 1000 --configs 64

Each region has log2(C) units over {bf16, fp8_e4m3}; gains and predicted MSE grow with the number
of lowered units plus noise, so configurations trade off as they do in real tables.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time

import numpy as np

from onnx_amp.passes.solve import Config, Problem, Region, solve_ip


def random_problem(n_regions: int, n_configs: int, seed: int = 0, formats=("bf16", "fp8_e4m3"), metric_noise=0.3) -> Problem:
    """Seeded random problem with full tables: each region has k = log2(n_configs) units."""
    rng = np.random.default_rng(seed)
    k = max(1, int(round(math.log2(n_configs))))
    hi, lo = (formats[0], formats[0]), (formats[1], formats[1])
    regions = []
    for g in range(n_regions):
        units = [f"U{g * k + j}" for j in range(k)]
        t_unit = rng.uniform(0.1, 1.0, size=k)
        d_unit = rng.lognormal(0.0, 1.5, size=k) * 1e-4
        d_high = rng.uniform(0, 1e-7, size=k)
        configs = []
        for bits in itertools.product([0, 1], repeat=k):
            b = np.array(bits)
            # gains are not additive across units: a random interaction term
            t = float(t_unit @ b) * (1 + metric_noise * rng.standard_normal() * (b.sum() > 1))
            d = float(d_unit @ b + d_high @ (1 - b))
            assign = {u: (lo if x else hi) for u, x in zip(units, bits)}
            configs.append(Config(assign, {"time": t, "tt": float(t_unit @ b), "memory": float(b.sum())}, d))
        regions.append(Region(f"r{g}", units, configs[:n_configs]))
    return Problem(regions, hi, target="synthetic")


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
