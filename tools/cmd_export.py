"""``onnx-amp export SOURCE -o OUT.onnx [--opset 21]``."""

from __future__ import annotations

from pathlib import Path

from onnx_amp.tools.cli import number


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="torch model -> ONNX (dynamo exporter, external data, onnx_amp.module annotations)",
        description="Export a torch model to ONNX with the dynamo exporter. SOURCE is a subject name "
        "(smollm2, minilm-sentiment, effnet-lite0), a local Hugging Face model folder, a .gguf file, or "
        "module:function returning (nn.Module, example_inputs).",
    )
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="output ONNX (weights in OUT.onnx.data)")
    p.add_argument("--opset", type=number(int, 18, 21), default=21, help="ONNX opset (18..21, default 21)")
    p.set_defaults(func=run)


def run(args) -> int:
    from onnx_amp.core.onnx_io import Outputs
    from onnx_amp.runtime.export import export_model

    with Outputs() as outs:  # the output is checked and locked before the (slow) export
        outs.add(args.output, "-o", model=True)
        out = export_model(args.source, Path(args.output), opset=args.opset)
    print(f"wrote {out} (+ {out.name}.data)")
    return 0
