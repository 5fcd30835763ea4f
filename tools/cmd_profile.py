"""``onnx-amp profile IN.onnx --target cpu|gaudi2|gaudi3|h100|h200|FILE.json [--measure] -o OUT.onnx``.

Writes the per-region gain tables (``onnx_amp.gains``) and the whole target description
(``onnx_amp.target``, so a custom target file travels with the model) into OUT: roofline time gain
(TT) and memory gain always; with ``--measure`` (only for targets whose ``measured_backend`` is
``ort_cpu``, ``openvino_cpu``) also the time gain measured on that runtime on this CPU, which then becomes
``time_gain_s``. IN must be partitioned (``onnx-amp partition``); it is never modified. OUT and
``--json`` are written all or nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

from onnx_amp.core.errors import OnnxAmpError
from onnx_amp.tools.cli import number


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "profile",
        help="time/memory gain per region configuration (onnx_amp.gains): roofline, or measured with ORT",
        description="Gain tables per region configuration for a target: roofline time gain and weight-memory "
        "gain; --measure also times every configuration with ONNX Runtime on this CPU (cpu target).",
    )
    p.add_argument("input", metavar="IN.onnx", help="a partitioned model (onnx-amp partition)")
    p.add_argument("--target", default=None, help="cpu, gaudi2, gaudi3, h100, h200 or a target .json file (default: the "
                   "target the model carries, else cpu)")
    p.add_argument("--measure", action="store_true", help="measure with ORT on this CPU (cpu target only)")
    p.add_argument("--batch_size", type=number(int, 1), default=1, help="batch size for symbolic dims (default 1)")
    p.add_argument("--seq_len", type=number(int, 1), default=128, help="sequence length for symbolic dims (default 128)")
    p.add_argument("--repeats", type=number(int, 1), default=10, help="timing rounds per configuration (default 10)")
    p.add_argument("--warmup", type=number(int, 0), default=2, help="warm-up runs per configuration (default 2)")
    p.add_argument("--max_configs", type=number(int, 1), default=64, help="cap on configurations per region (default 64)")
    p.add_argument("--no_share", action="store_true", help="measure every region even when structurally identical")
    p.add_argument("--seed", type=number(int, 0), default=0,
                   help="seed of the sampled feeds and the timing order (--measure; default 0)")
    p.add_argument("--json", metavar="GAINS.json", help="also write the gains table as JSON")
    p.add_argument("-o", "--output", metavar="OUT.onnx", help="output (default: IN.profiled.onnx beside IN)")
    p.set_defaults(func=run)


def run(args) -> int:
    from onnx_amp.core.onnx_io import Outputs
    from onnx_amp.core.targets import load_target, resolve_target
    from onnx_amp.passes.gains import GainsPass, read_gains
    from onnx_amp.runtime.normalize import load_normalized

    from onnx_amp.runtime.backends import MEASURED_BACKENDS

    inp = Path(args.input)
    out = Path(args.output) if args.output else inp.with_name(inp.stem + ".profiled.onnx")
    if args.target is not None and not args.target.strip():
        raise OnnxAmpError("--target '': give a target name (cpu, gaudi2, ...) or a target .json file")
    if args.target is not None:
        try:  # a built-in name or a file is checked before the model loads; another name may be the model's own
            early = load_target(args.target)
        except OnnxAmpError:
            if args.target.endswith(".json") or Path(args.target).exists():
                raise
        else:
            if args.measure and early.measured_backend not in MEASURED_BACKENDS:
                _refuse_measure(early)
    with Outputs(inputs=[inp]) as outs:
        outs.add(out, "-o", model=True)
        if args.json:
            outs.add(args.json, "--json")
        model, notes = load_normalized(inp, executes=args.measure)
        target = resolve_target(args.target, model, default="cpu")
        if args.measure and target.measured_backend not in MEASURED_BACKENDS:
            _refuse_measure(target)
        measured = None
        if args.measure:
            from onnx_amp.runtime.profile import profile_model

            res = profile_model(model, target, batch_size=args.batch_size, seq_len=args.seq_len,
                                warmup=args.warmup, repeats=args.repeats, max_configs=args.max_configs,
                                share=not args.no_share, seed=args.seed)
            measured = res.measured
            print(f"measured: {res.summary()}")
        GainsPass(target, measured, args.batch_size, args.seq_len, args.max_configs)(model)
        g = read_gains(model)
        outs.model(model, out)
        if args.json:
            outs.json(g, args.json)
        outs.commit()
    for n in notes:  # after the outputs exist: a failure stays one line
        print(f"note: {n}", file=sys.stderr)
    n_cfg = sum(len(r["configs"]) for r in g["regions"].values())
    capped = [rid for rid, r in g["regions"].items() if r["capped"]]
    best = sum(max(c["time_gain_s"] for c in r["configs"]) for r in g["regions"].values())
    base = sum(r["configs"][0]["time_s"] for r in g["regions"].values())
    print(f"{target.name}: {len(g['regions'])} regions, {n_cfg} configurations"
          f"{f', {len(capped)} capped' if capped else ''}; all-high {base * 1e3:.3f} ms, "
          f"best-case gain {best * 1e3:.3f} ms ({'measured' if measured else 'roofline'})")
    print(f"wrote {out}" + (f" and {args.json}" if args.json else ""))
    return 0


def _refuse_measure(target) -> None:
    raise OnnxAmpError(
        f"--measure: target {target.name} cannot be timed on this machine (measured_backend="
        f"{target.measured_backend}); drop --measure for its roofline, or run tools/bench/gpu_profile.py on the device"
    )


if __name__ == "__main__":  # python -m onnx_amp.tools.cmd_profile ...
    import argparse

    ap = argparse.ArgumentParser(prog="onnx-amp")
    sp = ap.add_subparsers()
    register(sp)
    a = ap.parse_args(["profile"] + sys.argv[1:])
    sys.exit(a.func(a))
