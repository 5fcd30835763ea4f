"""``onnx-amp partition IN.onnx -o OUT.onnx [--json SUMMARY.json]``.

Loads IN with lazy external data (weights stay memory-mapped ``ExternalTensor``s that are never
read), brings it into the form every stage expects (``runtime.normalize``: opset 21, typed
values, float32 compute), annotates regions/layers/units (``PartitionPass``), prints the summary
and writes OUT (+ OUT.onnx.data) and the JSON summary all or nothing; IN is never modified.
"""

from __future__ import annotations

import sys
from pathlib import Path


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
    from onnx_amp.core.annotations import REGIONS, get_json
    from onnx_amp.core.onnx_io import Outputs
    from onnx_amp.passes.partition import PartitionPass, partition_summary
    from onnx_amp.runtime.normalize import load_normalized

    src = Path(args.input)
    out = Path(args.output) if args.output else src.with_name(src.name.removesuffix(".onnx") + ".partitioned.onnx")
    with Outputs(inputs=[src]) as outs:
        outs.add(out, "-o", model=True)
        if args.json:
            outs.add(args.json, "--json")
        model, notes = load_normalized(src)
        pas = PartitionPass(source=str(src))
        pas(model)
        print(partition_summary(pas.partition))
        outs.model(model, out)
        if args.json:
            outs.json(get_json(model, REGIONS), args.json)
        outs.commit()
    for n in notes:  # after the outputs exist: a failure stays one line
        print(f"note: {n}", file=sys.stderr)
    print(f"wrote {out}" + (f" and {args.json}" if args.json else ""), file=sys.stderr)
    return 0
