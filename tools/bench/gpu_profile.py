"""Measured time gain of region configurations on a CUDA GPU with torch (BF16 vs FP8 E4M3).

NOT RUN ON A GPU YET: this session had no GPU; the script was only checked with ``--dry-run``
on CPU (which runs the same code path with float32 matmuls in place of ``torch._scaled_mm``).

For each region of a partitioned ONNX model, every weight layer (MatMul/Gemm with a constant
weight; Conv is skipped) becomes one GEMM of shape [M, K] x [K, N] with M = batch_size * seq_len
(leading dims of the activation folded). A region configuration runs its layers in graph order:
BF16 layers as ``a_bf16 @ w_bf16``; FP8 layers as ``torch._scaled_mm(a_fp8, w_fp8.t(), scale_a,
scale_b, out_dtype=bf16)`` with the activation cast to FP8 each call (the boundary cost) and the
weight pre-quantized (per-tensor scales). Timed with CUDA events: warm-up, ``--repeats`` rounds of
all configurations in shuffled order, median per-round gain and its IQR (as ``runtime.profile``).
Elementwise ops are not timed (the region's non-layer time is the same in every configuration).

Output JSON has the ``runtime.profile`` measured layout ``{region: {config_key: {time_s,
time_gain_s, spread, noisy}}}`` so it can be fed to ``GainsPass(target, measured=...)``:

    python -m onnx_amp.tools.bench.gpu_profile MODEL.partitioned.onnx --target h100 --batch_size 1 --seq_len 2048 \\
        -o gains_gpu.json
    python -m onnx_amp.tools.bench.gpu_profile MODEL.partitioned.onnx --target h100 --dry-run -o /tmp/x.json  # CPU check
"""

from __future__ import annotations

import argparse
import json
import random
import sys

import numpy as np
import torch


def layer_gemms(model, batch_size: int, seq_len: int):
    """region id -> [(unit, M, K, N)] for the weight MatMul/Gemm layers, from static shapes."""
    from onnx_amp.core import annotations as ann
    from onnx_amp.passes.gains import _const_shape, static_shapes

    shapes = static_shapes(model, batch_size, seq_len)
    out: dict[str, list] = {}
    for node in model.graph:
        if ann.get_str(node, ann.LAYER) is None or node.op_type not in ("MatMul", "Gemm"):
            continue
        if ann.get_str(node, ann.LAYER_KIND) != "weight":
            continue
        wi = int(ann.get_str(node, ann.WEIGHT_INPUT, "1"))
        w = _const_shape(node.inputs[wi]) or shapes.get(node.inputs[wi].name)
        a = shapes.get(node.inputs[1 - wi].name) if wi in (0, 1) else None
        if w is None or a is None or len(w) != 2:
            continue
        k = a[-1]
        n_out = w[1] if (node.op_type == "MatMul" or not node.attributes.get_int("transB", 0)) else w[0]
        m = int(np.prod(a[:-1]))
        out.setdefault(ann.get_str(node, ann.REGION), []).append((ann.get_str(node, ann.UNIT), m, k, n_out))
    return out


class Gemm:
    def __init__(self, m, k, n, fmt: str, device, dry_run: bool):
        self.fmt, self.dry = fmt, dry_run
        g = torch.Generator(device="cpu").manual_seed(m * 31 + k * 7 + n)
        a = torch.randn(m, k, generator=g)
        w = torch.randn(k, n, generator=g) * 0.05
        dt = torch.float32 if dry_run else torch.bfloat16
        self.a = a.to(device, dt)
        if fmt == "fp8_e4m3":
            self.sa = (a.abs().max() / 448.0).to(device, torch.float32)
            self.sw = (w.abs().max() / 448.0).to(device, torch.float32)
            # _scaled_mm wants B column-major: store W^T [N, K] row-major and pass .t()
            wt = (w.t().contiguous() / self.sw.cpu())
            self.w8 = wt.to(device, torch.float32 if dry_run else torch.float8_e4m3fn)
        else:
            self.w = w.to(device, dt)

    def __call__(self):
        if self.fmt != "fp8_e4m3":
            return self.a @ self.w
        if self.dry:  # CPU stand-in with the same data movement: quantize A, scaled GEMM
            a8 = (self.a / self.sa).clamp(-448, 448)
            return (a8 @ self.w8.t()) * (self.sa * self.sw)
        a8 = (self.a / self.sa).to(torch.float8_e4m3fn)  # the boundary: cast the activation to FP8
        return torch._scaled_mm(a8, self.w8.t(), scale_a=self.sa, scale_b=self.sw, out_dtype=torch.bfloat16)


def time_configs(fns_per_config, repeats: int, warmup: int, device, seed: int = 0):
    rng = random.Random(seed)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run(fns):
        for f in fns:
            f()

    for fns in fns_per_config:
        for _ in range(warmup):
            run(fns)
    sync()
    times = [[] for _ in fns_per_config]
    order = list(range(len(fns_per_config)))
    for _ in range(repeats):
        rng.shuffle(order)
        for i in order:
            if device.type == "cuda":
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                run(fns_per_config[i])
                e.record()
                torch.cuda.synchronize()
                times[i].append(s.elapsed_time(e) / 1e3)
            else:
                import time

                t0 = time.perf_counter()
                run(fns_per_config[i])
                times[i].append(time.perf_counter() - t0)
    return times


def main(argv=None) -> int:
    from onnx_amp.passes.gains import config_key, read_regions, region_configs, region_units
    from onnx_amp.core.errors import OnnxAmpError
    from onnx_amp.core.onnx_io import load_model
    from onnx_amp.runtime.profile import Timing
    from onnx_amp.core.targets import load_target

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--target", default="h100")
    ap.add_argument("--batch_size", type=int, default=1)
    ap.add_argument("--seq_len", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--max_regions", type=int, default=0, help="profile only the first N regions (0 = all)")
    ap.add_argument("--dry-run", action="store_true", help="run on CPU with float32 stand-ins (no GPU needed)")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args(argv)
    target = load_target(args.target)
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_profile: no CUDA device; use --dry-run to check the script on CPU")
    device = torch.device("cpu" if args.dry_run else "cuda")
    model = load_model(args.model)
    regions = read_regions(model)["regions"]
    gemms = layer_gemms(model, args.batch_size, args.seq_len)
    allowed = [a for a in target.assignments if a[0] == a[1] and a[0] in ("bf16", "fp8_e4m3")]
    if len(allowed) < 2:
        raise OnnxAmpError(f"target {target.name} has no bf16 and fp8_e4m3 assignments to compare")
    measured, cache = {}, {}
    todo = regions[: args.max_regions] if args.max_regions else regions
    for r in todo:
        units = region_units(r)
        layers = gemms.get(r["id"], [])
        if not units or not layers:
            continue
        configs, _, _ = region_configs(units, target)
        configs = [c for c in configs if all(a in allowed for a in c.values())]
        sig = (tuple(units.index(u) for u, *_ in layers), tuple(tuple(x[1:]) for x in layers))
        if sig not in cache:  # structurally identical regions share measurements
            fns = [[Gemm(m, k, n, cfg[u][0], device, args.dry_run) for u, m, k, n in layers] for cfg in configs]
            cache[sig] = Timing(time_configs(fns, args.repeats, args.warmup, device))
        t = cache[sig]
        measured[r["id"]] = {config_key(c, units): t.summary(i) for i, c in enumerate(configs)}
        best_us = max(v["time_gain_s"] for v in measured[r["id"]].values()) * 1e6
        print(f"{r['id']}: {len(configs)} configs, best gain {best_us:.1f} us", file=sys.stderr)
    info = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (dry run)",
            "torch": torch.__version__, "batch_size": args.batch_size, "seq_len": args.seq_len,
            "target": target.name, "dry_run": args.dry_run, "distinct_structures": len(cache)}
    with open(args.output, "w") as f:
        json.dump({"info": info, "measured": measured}, f, indent=1)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
