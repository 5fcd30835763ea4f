"""``onnx-amp calibrate IN.onnx --calibration_data DATA(.npz|.txt) [--tokenizer PATH] -o OUT.onnx``.

Partitions the model when needed, runs one forward+backward per batch in torch autograd on the
ONNX graph itself, and writes ``onnx_amp.sens.*`` / ``onnx_amp.amax.*`` on every layer node and the
``onnx_amp.calibration`` summary on the model. With ``--loss_model measured`` (the default, as in
``onnx-amp run``) a second pass measures each operand's actual rounding error in the low formats of
``--target`` (``onnx_amp.sens.measured``), which the loss model then prefers over the ideal
``alpha * S``. The input file is never modified.
"""

from __future__ import annotations

from pathlib import Path


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
    p.add_argument("--calibration_samples", "--calib_size", type=int, default=None, metavar="N",
                   help="use at most N samples (default: all)")
    p.add_argument("--batch_size", type=int, default=8, metavar="B", help="samples per forward+backward (default 8)")
    p.add_argument("--calib_seq_len", "--seq_len", type=int, default=128, metavar="T",
                   help="tokens per window for text data (default 128)")
    p.add_argument("--loss", default="auto", choices=["auto", "causal_lm", "classification"],
                   help="per-sample loss (default: detected from the model's output)")
    p.add_argument("--loss_output", default=None, metavar="NAME", help="graph output the loss reads (default: detected)")
    p.add_argument("--loss_model", choices=("measured", "ideal"), default="measured",
                   help="measured (default): also measure each operand's actual rounding error in the target's low "
                   "formats (a second pass); ideal: alpha * S only")
    p.add_argument("--target", default="cpu", help="target whose low formats --loss_model measured covers (default cpu)")
    p.add_argument("--formats", default=None, metavar="F,F", help="formats to measure instead of the target's, e.g. int8,fp8_e4m3")
    p.add_argument("-o", "--output", default=None, metavar="OUT.onnx", help="output model (default: IN.calib.onnx)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _formats(args) -> list[str]:
    from onnx_amp.core.formats import get_format
    from onnx_amp.core.errors import OnnxAmpError
    from onnx_amp.core.targets import load_target

    if args.formats:
        names = [f.strip() for f in args.formats.split(",") if f.strip()]
        for f in names:
            try:
                get_format(f)
            except (KeyError, ValueError):
                raise OnnxAmpError(f"--formats {f!r}: unknown format; use e.g. int8, fp8_e4m3, fp8_e5m2, bf16, fp16") from None
        return [f for f in names if f != "fp32"]
    return load_target(args.target).low_formats


def run(args) -> int:
    from onnx_amp.passes.sensitivity import AnnotateSensitivityPass
    from onnx_amp.runtime.calibrate import calibrate, measure_format_errors
    from onnx_amp.runtime.data import load_calibration_data
    from onnx_amp.core.errors import OnnxAmpError
    from onnx_amp.core.onnx_io import check_output_path, load_model, save_model

    src = Path(args.input)
    out = Path(args.output) if args.output else src.with_name(src.stem + ".calib.onnx")
    if args.batch_size < 1:
        raise OnnxAmpError(f"--batch_size {args.batch_size}: must be >= 1")
    if args.calibration_samples is not None and args.calibration_samples < 1:
        raise OnnxAmpError(f"--calibration_samples {args.calibration_samples}: must be >= 1")
    check_output_path(out)
    if out.resolve() == src.resolve():
        raise OnnxAmpError(f"{out}: would overwrite the input model; write to a new path")
    formats = _formats(args) if args.loss_model == "measured" else []
    model = load_model(src)
    data = load_calibration_data(args.calibration_data, model, args.tokenizer, args.calib_seq_len,
                                 args.calibration_samples)
    res = calibrate(model, data, loss=args.loss, batch_size=args.batch_size, output_name=args.loss_output,
                    progress=not args.no_progress)
    if formats:
        measure_format_errors(model, data, res, formats, batch_size=args.batch_size, loss=args.loss,
                              output_name=args.loss_output, progress=not args.no_progress)
    AnnotateSensitivityPass(res)(model)
    save_model(model, out)
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
