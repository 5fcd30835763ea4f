"""``onnx-amp run [SOURCE] [--calibration_data DATA] [--target cpu] [--strategy ip]
[--tau X | --tau_relative R | --accuracy_drop D] [--keep-intermediate] [-o DIR]``: the whole pipeline.

SOURCE: an ``.onnx`` file, a Hugging Face folder, a ``.gguf`` file, ``module:function``, or a
subject name (``smollm2``, ``minilm-sentiment``, ``effnet-lite0``: their real data is the default
calibration data). Without SOURCE it runs the built-in default: SmolLM2-135M on Wikipedia text
from the installed gensim package. See ``onnx_amp.runtime.pipeline.optimize``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from onnx_amp.passes.lossmodel import LOSS_MODELS
from onnx_amp.tools.cli import add_loss_flags, number

DEFAULT_SOURCE = "smollm2"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run",
        help="end to end: export, partition, calibrate, profile, solve, rewrite, validate, Gaudi config, report",
        description="Run the whole onnx-amp pipeline and write <model>.amp.onnx, <model>.amp.deploy.onnx, plan.json, "
        "<model>.gaudi_fp8.json and report.md next to the input (or into -o DIR). Without SOURCE: SmolLM2-135M "
        "with Wikipedia text from gensim.",
    )
    p.add_argument("source", nargs="?", default=None, metavar="SOURCE",
                   help="model.onnx, HF folder, .gguf, module:function or a subject name (default: smollm2)")
    p.add_argument("--calibration_data", metavar="DATA",
                   help=".npz keyed by input name, or .txt with --tokenizer (default for subjects: their real data)")
    p.add_argument("--validation_data", metavar="DATA", help="held-out data (default: the end of the calibration data)")
    p.add_argument("--tokenizer", metavar="PATH", help="tokenizer.json or HF tokenizer folder for text data")
    p.add_argument("--target", default=None, help="cpu (measured with ORT), gaudi2, gaudi3, h100, h200, or a target .json "
                   "(default: the target an .onnx input carries, else cpu)")
    p.add_argument("--strategy", default="ip", help="ip (default), ip-pairs, random, prefix, greedy, pareto-greedy, "
                   "uniform-high, uniform-low (pareto-greedy and ip-pairs measure per-unit losses / neighbour pair "
                   "terms with ONNX Runtime on the held-out samples)")
    p.add_argument("--metric", default="time", help="time (default), tt (roofline) or memory")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--tau", type=number(float, 0), help="bound on the predicted loss MSE (absolute)")
    g.add_argument("--tau_relative", type=number(float, above=0), help="bound as a fraction of the all-low plan's predicted MSE")
    g.add_argument("--accuracy_drop", type=number(float, 0),
                   help="allowed relative worsening of the task metric (default 0.01 = 1%%), found by bisection over tau "
                   "with ORT evaluations")
    p.add_argument("--loss_model", choices=LOSS_MODELS, default="measured",
                   help="predicted loss MSE from each tensor's actual rounding error (measured, default), plus each "
                   "error's second-order mean loss shift (shift), or the ideal alpha noise model (ideal)")
    add_loss_flags(p)
    p.add_argument("--keep-intermediate", "--keep_intermediate", dest="keep_intermediate", action="store_true",
                   help="also write each stage's ONNX (.partitioned/.calibrated/.gains/.planned.onnx)")
    p.add_argument("-o", "--output_dir", metavar="DIR", help="output folder (default: beside the input)")
    p.add_argument("--name", help="output file stem (default: from the input)")
    p.add_argument("--calibration_samples", type=number(int, 1), help="calibration samples (subjects: smollm2 16, minilm 64)")
    p.add_argument("--validation_samples", type=number(int, 1), help="held-out samples for the measured figures")
    p.add_argument("--seq_len", type=number(int, 2), default=None,
                   help="tokens per text window (default 128; smollm2 default run: 64)")
    p.add_argument("--batch_size", type=number(int, 1), default=8)
    p.add_argument("--profile_repeats", type=number(int, 1), default=10, help="timed rounds per region configuration")
    p.add_argument("--roofline_batch", type=number(int, 1), default=64,
                   help="batch size of the roofline gains (unmeasured targets)")
    p.add_argument("--no-measure", "--no_measure", dest="measure", action="store_false", default=None,
                   help="roofline time only (no ORT timing of region configurations)")
    p.add_argument("--no-pareto", "--no_pareto", dest="pareto", action="store_false", help="skip the Pareto sweep")
    p.add_argument("--no-progress", "--no_progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--solver", default=None, help="HiGHS or CBC (default: the first of the two that mip can use here)")
    p.add_argument("--seed", type=number(int, 0), default=0, help="seed of every randomized step (data sampling, the "
                   "random strategy, profiling order; default 0)")
    p.add_argument("--force", action="store_true", help="go on when the calibration's losses or sensitivities are all 0")
    p.set_defaults(func=run)


def _check_source(source: str) -> None:
    from onnx_amp.core.errors import OnnxAmpError
    from onnx_amp.runtime import subjects

    if Path(source).exists() or subjects.is_subject(source) or (":" in source and not source.endswith(".onnx")):
        return
    raise OnnxAmpError(f"{source}: no such file or folder; give an .onnx file, a Hugging Face folder, a .gguf file, "
                       f"module:function, or a subject ({', '.join(subjects.SUBJECTS)})")


def _target(source: str, target: str | None):
    """``--target``, or the target an ``.onnx`` input carries (``onnx_amp.target``) when none is
    given or it names that one (a custom target travels with the model), else ``cpu``."""
    from onnx_amp.core.targets import target_from_dict, target_of_file

    a_file = target is not None and (target.endswith(".json") or Path(target).exists())
    p = Path(source)
    if not a_file and p.suffix == ".onnx" and p.is_file():
        carried = target_of_file(p)
        if carried is not None and (target is None or carried.get("name") == target):
            return target_from_dict(carried, f"{p}: onnx_amp.target")
    return target or "cpu"


def run(args) -> int:
    from onnx_amp.runtime.pipeline import optimize

    source = args.source or DEFAULT_SOURCE
    _check_source(source)
    seq_len = args.seq_len
    if seq_len is None:
        seq_len = 64 if args.source is None else 128
    res = optimize(
        source, calibration_data=args.calibration_data, validation_data=args.validation_data,
        tokenizer=args.tokenizer, target=_target(source, args.target), strategy=args.strategy, metric=args.metric,
        tau=args.tau, tau_relative=args.tau_relative, accuracy_drop=args.accuracy_drop,
        output_dir=args.output_dir, name=args.name, keep_intermediate=args.keep_intermediate,
        calibration_samples=args.calibration_samples, validation_samples=args.validation_samples,
        seq_len=seq_len, batch_size=args.batch_size, profile_repeats=args.profile_repeats, roofline_batch=args.roofline_batch,
        loss=None if args.loss == "auto" else args.loss, loss_output=args.loss_output,
        loss_model=args.loss_model, measure=args.measure, pareto=args.pareto, progress=args.progress,
        solver=args.solver, seed=args.seed, **({"force": True} if args.force else {}),
    )
    from onnx_amp.runtime import distributed as D

    if D.is_main():  # under torchrun: one summary, from the process that wrote the outputs
        print(res.summary())
        for n in res.notes:
            print(f"  note: {n}", file=sys.stderr)
    return 0
