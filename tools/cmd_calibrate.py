"""``onnx-amp calibrate IN.onnx --calibration_data DATA(.npz|.txt) [--tokenizer PATH] -o OUT.onnx``.

Partitions the model when needed, runs one forward+backward per batch in torch autograd on the
ONNX graph itself, and writes ``onnx_amp.sens.*`` / ``onnx_amp.amax.*`` on every layer node and the
``onnx_amp.calibration`` summary on the model. With ``--loss_model measured`` (the default, as in
``onnx-amp run``) a second pass measures each operand's actual rounding error in the low formats of
``--target`` (``onnx_amp.sens.measured``), which the loss model then prefers over the ideal
``alpha * S``. A loss of 0 everywhere or all-zero sensitivities stop the command (``--force`` keeps
them). The input file is never modified.
"""

from __future__ import annotations

import sys
from pathlib import Path

from onnx_amp.passes.lossmodel import LOSS_MODELS
from onnx_amp.tools.cli import add_loss_flags, number


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="per-layer Taylor loss-MSE sensitivities (S_A, S_W, gsq, amax) from calibration data",
        description="Calibrate IN.onnx: one forward+backward per batch (the ONNX graph run in torch autograd) gives "
        "every layer's sensitivities; they are written as node annotations into OUT.onnx. Calibration data: an .npz "
        "keyed by ONNX input name (extra key 'labels' allowed), or a text file with --tokenizer (windows of "
        "--calib_seq_len tokens).",
    )
    p.add_argument("input", metavar="IN.onnx")
    p.add_argument("--calibration_data", "--calib_data", required=True, metavar="DATA",
                   help=".npz keyed by input name, or a .txt file (with --tokenizer)")
    p.add_argument("--tokenizer", metavar="PATH", help="tokenizer.json or a Hugging Face tokenizer folder (text data)")
    p.add_argument("--calibration_samples", "--calib_size", type=number(int, 1), default=None, metavar="N",
                   help="use at most N samples (default: all)")
    p.add_argument("--batch_size", type=number(int, 1), default=8, metavar="B",
                   help="samples per forward+backward (default 8)")
    p.add_argument("--calib_seq_len", "--seq_len", type=number(int, 2), default=128, metavar="T",
                   help="tokens per window for text data (default 128)")
    add_loss_flags(p)
    p.add_argument("--loss_model", choices=LOSS_MODELS, default="measured",
                   help="measured (default): also measure each operand's actual rounding error in the target's low "
                   "formats (a second pass); shift: that plus each error's mean loss shift (second order); "
                   "ideal: alpha * S only")
    p.add_argument("--target", default=None, help="target whose low formats --loss_model measured covers (default: the "
                   "target the model carries, else cpu)")
    p.add_argument("--formats", default=None, metavar="F,F",
                   help="formats to measure instead of the target's, e.g. int8,fp8_e4m3")
    p.add_argument("-o", "--output", default=None, metavar="OUT.onnx", help="output model (default: IN.calib.onnx)")
    p.add_argument("--seed", type=number(int, 0), default=0, help="seed of torch's and numpy's generators (random ops in "
                   "the graph; default 0)")
    p.add_argument("--force", action="store_true", help="keep a calibration whose losses or sensitivities are all 0")
    p.add_argument("--no_progress", "--no-progress", dest="no_progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _formats(args, model) -> list[str]:
    from onnx_amp.core.errors import OnnxAmpError
    from onnx_amp.core.formats import get_format
    from onnx_amp.core.targets import resolve_target

    if args.formats:
        names = [f.strip() for f in args.formats.split(",") if f.strip()]
        if not names:
            raise OnnxAmpError(f"--formats {args.formats!r}: no format named; use e.g. int8,fp8_e4m3")
        for f in names:
            try:
                get_format(f)
            except (KeyError, ValueError):
                raise OnnxAmpError(f"--formats {f!r}: unknown format; use e.g. int8, fp8_e4m3, fp8_e5m2, bf16, fp16") from None
        return [f for f in names if f != "fp32"]
    return resolve_target(args.target or ("cpu" if model is None else None), model, default="cpu").low_formats


def _shard(data):
    """This process's samples under ``torchrun`` (all of them otherwise)."""
    from onnx_amp.runtime import distributed as D

    part = D.my_samples(data.num_samples)
    return data if part == slice(0, data.num_samples) else data.take(part)


def run(args) -> int:
    from onnx_amp.runtime import distributed as D

    D.init_from_env()  # under torchrun: calibrate a shard of the samples per process
    import numpy as np
    import torch

    from onnx_amp.core.onnx_io import Outputs
    from onnx_amp.passes.sensitivity import AnnotateSensitivityPass
    from onnx_amp.runtime.calibrate import calibrate
    from onnx_amp.runtime.format_errors import measure_format_errors
    from onnx_amp.runtime.data import check_calibration, load_calibration_data
    from onnx_amp.runtime.normalize import fill_input_shapes, load_normalized
    from onnx_amp.runtime.preflight import check_data_file

    src = Path(args.input)
    out = Path(args.output) if args.output else src.with_name(src.stem + ".calib.onnx")
    if not D.is_main():  # under torchrun only rank 0 writes (and locks) the output
        import tempfile

        out = Path(tempfile.mkdtemp(prefix="onnx-amp-rank-")) / out.name
    with Outputs(inputs=[src, args.calibration_data]) as outs:
        outs.add(out, "-o", model=True)
        check_data_file(args.calibration_data)
        if args.formats:
            _formats(args, None)  # a bad --formats fails before the model loads
        model, notes = load_normalized(src, executes=True)
        formats = _formats(args, model) if args.loss_model in ("measured", "shift") else []
        data = load_calibration_data(args.calibration_data, model, args.tokenizer, args.calib_seq_len,
                                     args.calibration_samples)
        notes += data.info.get("notes", [])
        notes += fill_input_shapes(model, data.blocks[0], src)
        torch.manual_seed(args.seed)
        np.random.seed(args.seed)
        part, progress = _shard(data), not args.no_progress and D.is_main()
        res = D.everywhere(lambda: calibrate(model, part, loss=args.loss, batch_size=args.batch_size,
                                             output_name=args.loss_output, progress=progress))
        res = D.reduce_calibration(res)  # under torchrun: every process's figures combined
        notes += check_calibration(res, str(args.calibration_data), args.force)
        if formats:
            D.everywhere(lambda: measure_format_errors(
                model, part, res, formats, batch_size=args.batch_size, loss=res.spec, progress=progress,
                shift=args.loss_model == "shift", seed=args.seed))
            res = D.reduce_calibration(res, samples=part.num_samples)
        AnnotateSensitivityPass(res)(model)
        if D.is_main():  # one process writes and reports
            outs.model(model, out)
            outs.commit()
    if not D.is_main():
        import shutil

        shutil.rmtree(out.parent, ignore_errors=True)
        return 0
    for n in notes:  # after the outputs exist: a failure stays one line
        print(f"note: {n}", file=sys.stderr)
    print(f"calibrated {len(res.layers)} layers on {res.samples} samples ({res.batches} batches, "
          f"loss {res.loss.get('name')} on output {res.loss.get('output')!r}, mean {res.mean_loss:.4g}) "
          f"in {res.seconds:.1f} s; loss model {args.loss_model}"
          + (f" (actual rounding error measured for {', '.join(formats)})" if formats else "") + f"; wrote {out}")
    if res.unmatched:
        print(f"warning: {len(res.unmatched)} layer(s) got no figures: "
              + "; ".join(f"{u['layer']} ({u['node']}): {u['reason']}" for u in res.unmatched))
    if res.no_gradient:
        print(f"note: {len(res.no_gradient)} layer(s) do not affect the loss (zero sensitivity): {', '.join(res.no_gradient)}")
    return 0
