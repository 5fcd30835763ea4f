"""``onnx-amp profile IN.onnx --target cpu|gaudi2|gaudi3|h100|h200|FILE.json [--measure] -o OUT.onnx``.

Writes the per-region gain tables (``onnx_amp.gains``) into OUT: roofline time gain (TT) and memory
gain always; with ``--measure`` (only for targets whose ``measured_backend`` is ``ort_cpu``) also
the time gain measured with ONNX Runtime on this CPU, which then becomes ``time_gain_s``.
IN must be partitioned (``onnx-amp partition``); it is never modified.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from onnx_amp.core.errors import OnnxAmpError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "profile",
        help="time/memory gain per region configuration (onnx_amp.gains): roofline, or measured with ORT",
        description="Gain tables per region configuration for a target: roofline time gain and weight-memory "
        "gain; --measure also times every configuration with ONNX Runtime on this CPU (cpu target).",
    )
    p.add_argument("input", metavar="IN.onnx", help="a partitioned model (onnx-amp partition)")
    p.add_argument("--target", default="cpu", help="cpu, gaudi2, gaudi3, h100, h200 or a target .json file")
    p.add_argument("--measure", action="store_true", help="measure with ORT on this CPU (cpu target only)")
    p.add_argument("--batch_size", type=int, default=1, help="batch size for symbolic dims (default 1)")
    p.add_argument("--seq_len", type=int, default=128, help="sequence length for symbolic dims (default 128)")
    p.add_argument("--repeats", type=int, default=10, help="timing rounds per configuration (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up runs per configuration (default 2)")
    p.add_argument("--max_configs", type=int, default=64, help="cap on configurations per region (default 64)")
    p.add_argument("--no_share", action="store_true", help="measure every region even when structurally identical")
    p.add_argument("--json", metavar="GAINS.json", help="also write the gains table as JSON")
    p.add_argument("-o", "--output", metavar="OUT.onnx", help="output (default: IN.profiled.onnx beside IN)")
    p.set_defaults(func=run)


def run(args) -> int:
    from onnx_amp.passes.gains import GainsPass, read_gains
    from onnx_amp.core.onnx_io import load_model, save_model
    from onnx_amp.core.targets import load_target

    target = load_target(args.target)
    inp = Path(args.input)
    out = Path(args.output) if args.output else inp.with_name(inp.stem + ".profiled.onnx")
    if out.resolve() == inp.resolve():
        raise OnnxAmpError(f"{out}: the output would overwrite the input; choose another -o path")
    for name in ("batch_size", "seq_len", "repeats", "max_configs"):
        if getattr(args, name) < 1:
            raise OnnxAmpError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.measure and target.measured_backend != "ort_cpu":
        raise OnnxAmpError(
            f"--measure: target {target.name} cannot be timed on this machine (measured_backend="
            f"{target.measured_backend}); drop --measure for its roofline, or run tools/bench/gpu_profile.py on the device"
        )
    model = load_model(inp)
    measured = None
    if args.measure:
        from onnx_amp.runtime.profile import profile_model

        res = profile_model(model, target, batch_size=args.batch_size, seq_len=args.seq_len,
                            warmup=args.warmup, repeats=args.repeats, max_configs=args.max_configs,
                            share=not args.no_share)
        measured = res.measured
        print(f"measured: {res.summary()}")
    GainsPass(target, measured, args.batch_size, args.seq_len, args.max_configs)(model)
    g = read_gains(model)
    save_model(model, out)
    n_cfg = sum(len(r["configs"]) for r in g["regions"].values())
    capped = [rid for rid, r in g["regions"].items() if r["capped"]]
    best = sum(max(c["time_gain_s"] for c in r["configs"]) for r in g["regions"].values())
    base = sum(r["configs"][0]["time_s"] for r in g["regions"].values())
    print(f"{target.name}: {len(g['regions'])} regions, {n_cfg} configurations"
          f"{f', {len(capped)} capped' if capped else ''}; all-high {base * 1e3:.3f} ms, "
          f"best-case gain {best * 1e3:.3f} ms ({'measured' if measured else 'roofline'})")
    if args.json:
        Path(args.json).write_text(json.dumps(g, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":  # python -m onnx_amp.tools.cmd_profile ...
    import argparse

    ap = argparse.ArgumentParser(prog="onnx-amp")
    sp = ap.add_subparsers()
    register(sp)
    a = ap.parse_args(["profile"] + sys.argv[1:])
    sys.exit(a.func(a))
