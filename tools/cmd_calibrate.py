"""``onnx-amp calibrate IN.onnx --calibration_data DATA(.npz|.txt) [--tokenizer PATH] -o OUT.onnx``.

Partitions the model when needed, runs one forward+backward per batch in torch autograd on the
ONNX graph itself, and writes ``onnx_amp.sens.*`` / ``onnx_amp.amax.*`` on every layer node and the
``onnx_amp.calibration`` summary on the model. The input file is never modified.
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
    p.add_argument("-o", "--output", default=None, metavar="OUT.onnx", help="output model (default: IN.calib.onnx)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from onnx_amp.passes.sensitivity import AnnotateSensitivityPass
    from onnx_amp.runtime.calibrate import calibrate
    from onnx_amp.runtime.onnx_io import OnnxAmpError, load_model, save_model

    src = Path(args.input)
    out = Path(args.output) if args.output else src.with_name(src.stem + ".calib.onnx")
    if args.batch_size < 1:
        raise OnnxAmpError(f"--batch_size {args.batch_size}: must be >= 1")
    if args.calibration_samples is not None and args.calibration_samples < 1:
        raise OnnxAmpError(f"--calibration_samples {args.calibration_samples}: must be >= 1")
    import os
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise OnnxAmpError(f"{out}: output folder {parent} does not exist or is not writable; choose another -o path")
    if out.resolve() == src.resolve():
        raise OnnxAmpError(f"{out}: would overwrite the input model; write to a new path")
    model = load_model(src)
    res = calibrate(model, args.calibration_data, loss=args.loss, batch_size=args.batch_size,
                    max_samples=args.calibration_samples, tokenizer=args.tokenizer, seq_len=args.calib_seq_len,
                    output_name=args.loss_output, progress=not args.no_progress)
    AnnotateSensitivityPass(res)(model)
    save_model(model, out)
    print(f"calibrated {len(res.layers)} layers on {res.samples} samples ({res.batches} batches, "
          f"loss {res.loss.get('name')} on output {res.loss.get('output')!r}, mean {res.mean_loss:.4g}) "
          f"in {res.seconds:.1f} s; wrote {out}")
    if res.unmatched:
        print(f"warning: {len(res.unmatched)} layer(s) got no figures: "
              + "; ".join(f"{u['layer']} ({u['node']}): {u['reason']}" for u in res.unmatched))
    if res.no_gradient:
        print(f"note: {len(res.no_gradient)} layer(s) do not affect the loss (zero sensitivity): {', '.join(res.no_gradient)}")
    return 0
