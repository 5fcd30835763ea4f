"""Calibration over 1, 2, 4 ... processes: wall time of ``onnx-amp calibrate`` under ``torchrun``.

    python -m onnx_amp.tools.bench.distributed_scaling --subject minilm-sentiment --samples 64 --procs 1 2 4

Each row runs the same command (the subject's real data as an .npz, the measured-error pass for the
target's formats included) as a user would, one process per rank on this host (gloo), and reports
the wall time, its ratio to one process, and whether the calibrated figures equal one process's.
Every process runs ``OMP_NUM_THREADS=--threads`` threads (default: cores / processes), so the rows
share the machine's cores the same way. The runs alternate over ``--rounds`` to even out load drift;
the 1-minute load average before each is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _calibrate(model: Path, data: Path, out: Path, procs: int, threads: int, batch_size: int) -> float:
    launch = [sys.executable, "-m", "onnx_amp.tools.cli"] if procs == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), "-m", "onnx_amp.tools.cli"]
    cmd = launch + ["calibrate", str(model), "--calibration_data", str(data), "--batch_size", str(batch_size),
                    "--no_progress", "-o", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{procs} process(es) failed:\n{r.stderr[-3000:]}")
    return dt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subject", default="minilm-sentiment")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--threads", type=int, default=None, help="threads per process (default: cores / processes)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from onnx_amp.passes.lossmodel import layer_stats_from_model
    from onnx_amp.runtime import subjects as S
    from onnx_amp.runtime.export import ensure_subject_onnx
    from onnx_amp.runtime.onnx_io import load_model

    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="onnx-amp-scaling-"))
    model = ensure_subject_onnx(args.subject)
    data = work / "calib.npz"
    np.savez(data, **{k: v for k, v in S.subject_batch(args.subject, args.samples, "calib", seed=0).items()
                      if k != "labels"})
    times: dict[int, list[float]] = {p: [] for p in args.procs}
    for r in range(args.rounds):
        for p in args.procs:
            threads = args.threads or max(1, cores // p)
            load = os.getloadavg()[0]
            dt = _calibrate(model, data, work / f"c{p}.onnx", p, threads, args.batch_size)
            times[p].append(dt)
            print(f"round {r}: {p} process(es) x {threads} thread(s): {dt:.1f} s (load {load:.1f})", flush=True)
    ref = layer_stats_from_model(load_model(work / f"c{args.procs[0]}.onnx"))
    rows = []
    for p in args.procs:
        got = layer_stats_from_model(load_model(work / f"c{p}.onnx"))
        same = all(abs(got[k].s_w - v.s_w) <= 1e-5 * abs(v.s_w) + 1e-30 and
                   abs(got[k].s_a - v.s_a) <= 1e-5 * abs(v.s_a) + 1e-30 for k, v in ref.items())
        best = min(times[p])
        rows.append({"procs": p, "threads_each": args.threads or max(1, cores // p), "best_s": best,
                     "speedup": min(times[args.procs[0]]) / best, "same_figures": same, "all_s": times[p]})
    print(f"\n{args.subject}, {args.samples} samples, batch {args.batch_size}, {cores} cores")
    print("| processes | threads each | best wall time | speedup | figures equal 1 process |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['procs']} | {row['threads_each']} | {row['best_s']:.1f} s | {row['speedup']:.2f}x | "
              f"{'yes' if row['same_figures'] else 'NO'} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
