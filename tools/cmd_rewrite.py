"""``onnx-amp rewrite IN.onnx [--plan PLAN.json] -o OUT.onnx [--form emulate|deploy]``.

Without ``--plan`` the plan the model carries (``onnx_amp.plan``, written by ``onnx-amp solve``) is
lowered: ``onnx-amp rewrite S.onnx -o M.amp.onnx``. Or, without a plan, a uniform plan with
ModelOpt/ORT-quantization-style flags::

    onnx-amp rewrite IN.onnx --quantize_mode int8 --nodes_to_exclude /lm_head/MatMul --op_types_to_quantize MatMul

IN must be partitioned (``onnx-amp partition``; done here on the fly when it is not) and, for FP8/INT8
activations, calibrated (``onnx-amp calibrate`` writes the ``onnx_amp.amax.*`` the Q scales come
from). Writes OUT (+ OUT.data) and ``--save_plan`` all or nothing after ``onnx.checker``; IN is never
modified. Default OUT:
``<model>.amp.onnx`` (emulate) / ``<model>.amp.deploy.onnx`` (deploy) beside IN.
"""

from __future__ import annotations

import sys
from pathlib import Path

from onnx_amp.core.errors import OnnxAmpError

MODES = ("fp8", "fp8_e4m3", "fp8_e5m2", "int8", "bf16", "fp16")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "rewrite",
        help="lower a plan to Q/DQ and Cast nodes (emulate form for ORT, deploy form for TensorRT-style runtimes)",
        description="Apply a mixed-precision plan (plan.json, or a uniform --quantize_mode) and lower every layer's "
        "precision: FP8/INT8 as QuantizeLinear/DequantizeLinear, BF16/FP16 as Casts (emulate) or true types (deploy).",
    )
    p.add_argument("input", metavar="IN.onnx")
    p.add_argument("--plan", metavar="PLAN.json", help="plan file (onnx-amp solve writes one; default: the plan the model "
                   "carries, onnx_amp.plan)")
    p.add_argument("-o", "--output", metavar="OUT.onnx", help="output (default <model>.amp.onnx / .amp.deploy.onnx)")
    p.add_argument("--form", choices=("emulate", "deploy"), default="emulate",
                   help="emulate: runs in ONNX Runtime on CPU; deploy: explicit Q/DQ + true bf16/fp16 types")
    p.add_argument("--target", help="target the plan is for (checks its formats; default: the plan's own)")
    p.add_argument("--quantize_mode", choices=MODES,
                   help="uniform plan without a plan file: every layer in this format")
    p.add_argument("--nodes_to_exclude", nargs="*", default=[], metavar="NODE",
                   help="node names kept in high precision (with --quantize_mode); comma or space separated")
    p.add_argument("--op_types_to_quantize", nargs="*", default=None, metavar="OP",
                   help="only these op types (MatMul, Gemm, Conv, ...) are lowered (with --quantize_mode)")
    p.add_argument("--no_act_act", action="store_true",
                   help="with --quantize_mode: keep attention's activation-activation MatMuls in high precision")
    p.add_argument("--int8_output_q", action="store_true",
                   help="emulate form: add the INT8 output Q/DQ (from onnx_amp.amax.y) so ORT fuses to QLinearMatMul")
    p.add_argument("--reduce_range", action="store_true",
                   help="INT8 weights in [-63, 63]: exact results from ORT's fused kernels on CPUs without VNNI")
    p.add_argument("--save_plan", metavar="PLAN.json", help="also write the plan that was applied")
    p.add_argument("--no_check", action="store_true", help="skip onnx.checker (full check) on the output")
    p.set_defaults(func=run)


def _split(items):
    out = []
    for it in items or []:
        out += [s for s in it.split(",") if s]
    return out


def run(args) -> int:
    from onnx_amp.core import annotations as A
    from onnx_amp.core.onnx_io import Outputs
    from onnx_amp.passes.plan import ApplyPlanPass, Plan, uniform_plan
    from onnx_amp.passes.rewrite import RewritePass, check_model
    from onnx_amp.runtime.normalize import check_input_shapes, load_normalized

    src = Path(args.input)
    if args.plan is not None and args.quantize_mode is not None:
        raise OnnxAmpError("--plan and --quantize_mode both given; give one of them (or neither: then the plan the "
                           "model carries is used)")
    if args.plan is not None and (args.nodes_to_exclude or args.op_types_to_quantize is not None):
        raise OnnxAmpError("--nodes_to_exclude/--op_types_to_quantize given with --plan; they shape a uniform "
                           "--quantize_mode plan, so drop them or drop --plan")
    if args.quantize_mode is None and (args.nodes_to_exclude or args.op_types_to_quantize is not None or args.no_act_act):
        raise OnnxAmpError("--nodes_to_exclude/--op_types_to_quantize/--no_act_act given without --quantize_mode; "
                           "add --quantize_mode {fp8,int8,bf16,fp16} or drop them")
    if args.output:
        out = Path(args.output)
    else:
        stem = src.name[:-5] if src.name.endswith(".onnx") else src.name
        out = src.with_name(stem + (".amp.onnx" if args.form == "emulate" else ".amp.deploy.onnx"))
    plan = Plan.load(args.plan) if args.plan else None  # plan errors before the (slow) model load
    plan_source = args.plan or "plan"

    with Outputs(inputs=[src, args.plan]) as outs:
        outs.add(out, "-o", model=True)
        if args.save_plan:
            outs.add(args.save_plan, "--save_plan")
        model, notes = load_normalized(src)
        if not args.no_check:
            check_input_shapes(model, src)
        if plan is None and args.quantize_mode is None:
            carried = A.get_json(model, A.PLAN)
            if carried is None:
                raise OnnxAmpError(f"{src}: carries no plan (onnx_amp.plan); solve it first (onnx-amp solve), or give "
                                   "--plan PLAN.json or --quantize_mode {fp8,int8,bf16,fp16}")
            plan = Plan.from_json(carried, source=f"{src}: onnx_amp.plan")
            plan_source = f"{src}: onnx_amp.plan"
            notes.append(f"{src}: lowering the plan the model carries (onnx_amp.plan, {len(plan.units)} unit(s) lowered)")
        if not A.layer_nodes(model.graph):
            from onnx_amp.passes.partition import PartitionPass

            notes.append(f"{src}: not partitioned; partitioned it now")
            PartitionPass()(model)
        if plan is None:
            plan = uniform_plan(
                model, args.quantize_mode, args.quantize_mode,
                nodes_to_exclude=_split(args.nodes_to_exclude),
                op_types_to_quantize=_split(args.op_types_to_quantize) if args.op_types_to_quantize is not None else None,
                target=args.target, include_act_act=not args.no_act_act,
            )
        try:
            ApplyPlanPass(plan, target=args.target)(model)
        except OnnxAmpError as e:
            raise OnnxAmpError(f"{plan_source}: {e}") from None
        rp = RewritePass(args.form, int8_output_q=args.int8_output_q, reduce_range=args.reduce_range)
        result = rp(model).model
        if not args.no_check:
            try:
                check_model(result, full_check=True)
            except Exception as e:  # noqa: BLE001
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise OnnxAmpError(f"{src}: rewritten model fails onnx.checker ({first}); please report this") from e
        outs.model(result, out)
        if args.save_plan:
            outs.json(Plan.from_json(A.get_json(result, A.PLAN)).to_json(), args.save_plan)
        outs.commit()
    for n in notes:  # after the outputs exist: a failure stays one line
        print(f"note: {n}", file=sys.stderr)
    rep = rp.report.to_json()
    print(f"wrote {out} ({args.form} form): " + ", ".join(f"{k} x{v}" for k, v in sorted(rep["precisions"].items()))
          + f"; {rep['inserted_nodes']} nodes inserted")
    for note in rep["notes"][:10]:
        print(f"  note: {note}")
    if len(rep["notes"]) > 10:
        print(f"  ... {len(rep['notes']) - 10} more notes (model key onnx_amp.rewrite)")
    return 0
