"""``onnx-amp partition IN.onnx -o OUT.onnx [--json SUMMARY.json]``.

Loads IN with lazy external data (weights stay memory-mapped ``ExternalTensor``s that are never
read), annotates regions/layers/units (``PartitionPass``), prints the summary and writes OUT (+
OUT.onnx.data) atomically; IN is never modified.
"""

from __future__ import annotations

import sys
from pathlib import Path

from onnx_amp.core.errors import OnnxAmpError

from onnx_amp.core.onnx_io import check_output_path, save_json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "partition",
        help="annotate sequential regions, layers and units (onnx_amp.region/layer/unit)",
        description="Partition an ONNX model into sequential single-entry/single-exit regions and annotate "
        "layers and units in node metadata (Netron shows them).",
    )
    p.add_argument("input", metavar="IN.onnx")
    p.add_argument("-o", "--output", metavar="OUT.onnx", help="output ONNX (default: IN.partitioned.onnx beside IN)")
    p.add_argument("--json", metavar="SUMMARY.json", help="also write the region summary as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from onnx_amp.passes.partition import PartitionPass, partition_summary
    from onnx_amp.core.annotations import REGIONS, get_json
    from onnx_amp.core.onnx_io import load_model, save_model

    src = Path(args.input)
    out = Path(args.output) if args.output else src.with_name(src.name.removesuffix(".onnx") + ".partitioned.onnx")
    check_output_path(out, "output")
    if args.json:
        check_output_path(args.json, "--json")
    if src.exists() and out.exists() and out.resolve() == src.resolve():
        raise OnnxAmpError(f"{out}: is the input file; write the partitioned model to a new path")
    model = load_model(src)
    pas = PartitionPass(source=str(src))
    pas(model)
    print(partition_summary(pas.partition))
    save_model(model, out)
    if args.json:
        try:
            save_json(args.json, get_json(model, REGIONS))
        except OSError as e:
            for f in (out, out.with_name(out.name + ".data")):
                f.unlink(missing_ok=True)
            raise OnnxAmpError(f"{args.json}: could not write the summary ({e})") from e
    print(f"wrote {out}" + (f" and {args.json}" if args.json else ""), file=sys.stderr)
    return 0
