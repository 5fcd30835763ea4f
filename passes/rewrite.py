"""Lower each layer's ``onnx_amp.precision`` to ONNX: Q/DQ for FP8/INT8, Casts for BF16/FP16.

``RewritePass(form="emulate")`` (runs in ONNX Runtime on CPU; see ``runtime.ort_session.make_session``):

- FP8 (E4M3FN/E5M2) and INT8 activations: ``QuantizeLinear -> DequantizeLinear`` with a per-tensor
  scale ``amax / fmt.max`` from the calibration annotation (``onnx_amp.amax.a`` for input A,
  ``onnx_amp.amax.b`` for input B of an activation-activation layer).
- FP8/INT8 weights are quantized offline: stored as an int8/float8 initializer (per output channel
  scale ``amax_c / fmt.max``, axis ``onnx_amp.weight_axis``) followed by ``DequantizeLinear``.
- BF16/FP16: ``Cast(f32 -> bf16) -> Cast(-> f32)`` on activations; weights stored in bf16/fp16 followed
  by one ``Cast`` to float (the first half of the pair done offline; same numbers).
- INT8 in ORT's fusable layout: each consumer layer gets its own activation ``Q -> DQ`` (ORT fuses a
  DQ into an integer kernel only when its Q feeds nothing else; q/k/v share an input), weights as
  int8 initializer + per-channel ``DQ``: ``DQ(x), DQ(W) -> MatMul`` fuses to ``MatMulIntegerToFloat``.
  With ``int8_output_q=True`` the layer output also gets ``Q -> DQ`` from ``onnx_amp.amax.y``
  (omitted, with a note, when that annotation is absent) and ORT fuses to ``QLinearMatMul`` /
  ``QLinearConv`` (Conv fuses only this way). Off by default: the output rounding is not a layer
  operand, so the loss model does not predict it. Measured on MiniLM (1 thread, batch 4 x 128):
  1.51x (no output Q) / 1.45x (output Q) faster than fp32; EfficientNet-Lite0: 0.40x / 0.86x.
  Caveats on this CPU (AVX2, no VNNI): ORT's fused u8s8 kernels saturate int16 pair sums, so with
  full-range weights the fused result can differ from the Q/DQ math (``reduce_range=True`` avoids
  it; ``make_session(exact_qdq=True)`` runs unfused); sessions must not run CSE (make_session).

``RewritePass(form="deploy")`` (TensorRT explicit-quantization style): Q/DQ on activations and DQ
on pre-quantized weights for FP8/INT8 (no output Q); layers whose plan says BF16/FP16 compute in
that type (weights stored in it, activations Cast in, Cast back to float at the output). Conv has
no BF16 kernel in ONNX opset <= 21, so a BF16 Conv keeps float compute with bf16-stored weights
(noted). The deploy form passes ``onnx.checker`` (full check); ORT CPU has no BF16 MatMul/Gemm
kernel, so BF16 deploy models load in ORT only if those layers are absent.

Inserted nodes carry the layer's ``onnx_amp.region/unit/module/precision`` and ``pkg.torch.onnx.*``
props plus ``onnx_amp.inserted_by=rewrite`` and ``onnx_amp.inserted_for=<layer id>`` (not
``onnx_amp.layer``, so they are never mistaken for layers). The pass is functional: the input model
is cloned (initializer tensors shared, not copied) and left untouched. FP8 needs opset >= 19: a
model with a lower default opset is converted to 21 (onnxscript's version converter).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from onnx_amp.core import annotations as A
from onnx_amp.core.errors import OnnxAmpError
from onnx_amp.core.formats import get_format
from onnx_amp.passes.base import PassPreconditionError
from onnx_amp.passes.lowering import (  # noqa: F401  (names this module has always offered)
    COPY_KEYS, FORMS, MIN_FP8_OPSET, OPSET, RewriteReport, _attr, _const_array, _np_tensor, _Rewriter, _zero,
)

AMAX_Y, INSERTED_BY, INSERTED_FOR, REWRITE = A.AMAX_Y, A.INSERTED_BY, A.INSERTED_FOR, A.REWRITE


def _default_opset(model: ir.Model) -> int:
    return model.opset_imports.get("", model.graph.opset_imports.get("", 1))


def _ensure_opset(model: ir.Model, needed: int, report: RewriteReport) -> None:
    cur = _default_opset(model)
    if cur >= needed:
        return
    try:
        from onnxscript import version_converter

        version_converter.convert_version(model, target_version=OPSET)
    except Exception as e:  # noqa: BLE001
        raise OnnxAmpError(
            f"model opset {cur} < {needed} (needed for FP8 or 16-bit-scale Q/DQ) and converting it to opset {OPSET} failed "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); re-export with opset_version={OPSET}"
        ) from e
    model.opset_imports[""] = OPSET
    model.graph.opset_imports[""] = OPSET
    report.opset_converted = (cur, OPSET)


@dataclass
class RewriteResult(ir.passes.PassResult):
    report: RewriteReport | None = None


class RewritePass(ir.passes.FunctionalPass):
    """Lower ``onnx_amp.precision`` annotations (see module doc). Returns a new model.

    ``int8_output_q``: in the emulate form, add the INT8 output ``Q -> DQ`` when the layer has
    ``onnx_amp.amax.y`` (ORT then fuses to QLinearMatMul/QLinearConv; without it, to
    MatMulIntegerToFloat). Off by default: it adds output rounding the loss model does not predict.
    ``int8_output_q="conv"``: only on Conv/ConvTranspose layers (the CPU target's lowering,
    ``ORT_CPU_LOWERING``: ORT fuses INT8 MatMul without the output Q, INT8 Conv only with it).
    ``ort_int8_layout``: INT8 activation Q/DQ stored as UINT8 (zero point 128, the same numbers) and one
    DequantizeLinear per consumer, the layout ORT's x86 INT8 fusions want (see ``activations_to_uint8``).
    ``reduce_range``: INT8 weights in [-63, 63] (scale amax_c/63), ORT's ``reduce_range``: needed for
    the *fused* integer kernels to compute the Q/DQ result exactly on x86 CPUs without VNNI (int16
    saturation of u8*s8 pairs); see ``runtime.ort_session.make_session(exact_qdq=...)``.
    ``bf16_compute`` (emulate form): a layer whose activation format is BF16 or FP8 and whose weight
    format is BF16, FP8 or INT8 computes in bfloat16 (``MatMul``/``Gemm``/``Conv`` on bf16 operands,
    output ``Cast`` to float): BF16 operands ``Cast`` to bf16, FP8/INT8 operands keep their float Q/DQ
    and are then ``Cast`` to bf16, so the operand values are the default form's, rounded once to bf16.
    OpenVINO's CPU plugin (at f32 inference precision) runs that as a bf16 kernel; the default
    ``Cast`` pair runs in f32 there. ORT CPU has no bf16 MatMul/Conv, and bf16 ``Conv`` is ONNX only
    from opset 22: such models are for OpenVINO (``runtime.backends.openvino``). ``int8_chains``: keep a
    tensor quantized between INT8 layers when all its consumers are quantized, so the runtime fuses
    whole chains (``passes.int8_chains``; replaces ``int8_output_q``). ``bf16_chains`` (with
    ``bf16_compute``): keep a tensor in bf16 between BF16 layers when that changes no number
    (``passes.bf16_chains``). The report of the last
    call is ``self.report`` (also stored as the model key ``onnx_amp.rewrite``).
    """

    def __init__(self, form: str = "emulate", int8_output_q: bool | str = False, reduce_range: bool = False,
                 ort_int8_layout: bool = False, bf16_compute: bool = False, int8_chains: bool = False,
                 bf16_chains: bool = False):
        super().__init__()
        self.bf16_compute = bf16_compute
        self.int8_chains = int8_chains
        self.bf16_chains = bf16_chains
        if int8_output_q not in (True, False, "conv"):
            raise OnnxAmpError(f"int8_output_q must be True, False or 'conv', not {int8_output_q!r}")
        self.ort_int8_layout = ort_int8_layout
        self.reduce_range = reduce_range
        if form not in FORMS:
            raise OnnxAmpError(f"unknown rewrite form {form!r}; use one of {', '.join(FORMS)}")
        self.form = form
        self.int8_output_q = int8_output_q
        self.report: RewriteReport | None = None

    def requires(self, model: ir.Model) -> None:
        if REWRITE in model.metadata_props:
            raise PassPreconditionError(
                "model was already rewritten (it has onnx_amp.rewrite); rewrite the partitioned/calibrated model instead")
        layers = [n for n in model.graph if A.LAYER in n.metadata_props and INSERTED_BY not in n.metadata_props]
        if not layers:
            raise PassPreconditionError("model has no onnx_amp.layer annotations; run onnx-amp partition first")
        missing = [n.metadata_props[A.LAYER] for n in layers if A.PRECISION not in n.metadata_props]
        if missing:
            raise PassPreconditionError(
                f"layers {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''} have no onnx_amp.precision; "
                "apply a plan first (onnx-amp rewrite --plan PLAN.json, or ApplyPlanPass)")
        # every needed amax, so the error lists them all
        need: list[str] = []
        for n in layers:
            a = get_format(A.parse_precision(n.metadata_props[A.PRECISION])[1])
            if a.needs_qdq:
                keys = [A.AMAX_A] + ([A.AMAX_B] if n.metadata_props.get(A.LAYER_KIND) == "act_act" else [])
                need += [f"{n.metadata_props[A.LAYER]}:{k.rsplit('.', 1)[-1]}" for k in keys if k not in n.metadata_props]
        if need:
            raise PassPreconditionError(
                f"activation amax missing for {len(need)} operand(s) ({', '.join(need[:6])}{' ...' if len(need) > 6 else ''}) "
                "needed by their FP8/INT8 activation format; run onnx-amp calibrate first")

    def _uses_fp8_opset(self, layers: list[ir.Node]) -> bool:
        """Whether the lowering needs opset >= 19 (FP8 Q/DQ; deploy-form Q/DQ with 16-bit scales)."""
        for n in layers:
            w, a = (get_format(x) for x in A.parse_precision(n.metadata_props[A.PRECISION]))
            fmts = (a,) if n.metadata_props.get(A.LAYER_KIND) == "act_act" else (w, a)
            if any(f.needs_qdq and not f.is_int for f in fmts):
                return True
            if self.form == "deploy" and any(f.needs_qdq for f in fmts) and any(
                    not f.needs_qdq and f.name != "fp32" for f in fmts):
                return True
        return False

    def _chains(self, out: ir.Model, rw) -> None:
        from onnx_amp.passes.int8_chains import quantize_biases, quantize_chains, unchained_outputs

        ch = quantize_chains(out, rw.fresh)
        ops = None if self.int8_output_q is True else frozenset({"Conv", "ConvTranspose"}) if self.int8_output_q else None
        late = unchained_outputs(out, ops) if self.int8_output_q else []
        for layer in late:  # outputs the chains left in float: the per-layer output Q, as without chains
            rw._output_qdq(layer, layer.outputs[0], float(layer.metadata_props[A.AMAX_Y]))
        biases = quantize_biases(out, rw.fresh)
        rw.report.notes.append(f"int8 chains: {ch['tensors']} tensor(s) quantized where produced, "
                               f"{len(ch['chain_ops'])} op(s) between INT8 layers kept quantized, "
                               f"{len(ch['folded'])} Relu/Clip folded into their input's quantization, "
                               f"{len(late)} layer output(s) quantized for their layer alone, {biases} int32 bias(es)")

    def call(self, model: ir.Model) -> "RewriteResult":
        layers = [n for n in model.graph if A.LAYER in n.metadata_props and INSERTED_BY not in n.metadata_props]
        uses_fp8 = self._uses_fp8_opset(layers)
        out = model.clone()
        chains = self.int8_chains and self.form == "emulate"
        # with chains, a layer's output is quantized where its consumers allow it (passes.int8_chains)
        rw = _Rewriter(out, self.form, False if chains else self.int8_output_q, self.reduce_range, self.bf16_compute)
        if uses_fp8:
            _ensure_opset(out, MIN_FP8_OPSET, rw.report)
        if (out.ir_version or 0) < 10:
            out.ir_version = 10  # FP8 types and opset 21 need IR >= 9/10
        for node in [n for n in out.graph if A.LAYER in n.metadata_props and INSERTED_BY not in n.metadata_props]:
            rw.rewrite_layer(node)
        rw.drop_dead_weights()
        if chains:
            self._chains(out, rw)
        if self.bf16_chains and self.bf16_compute and self.form == "emulate":
            from onnx_amp.passes.bf16_chains import keep_bf16

            r = keep_bf16(out, rw.fresh)
            rw.report.notes.append(f"bf16 chains: {r['tensors']} tensor(s) kept in bf16 between BF16 layers, "
                                   f"{r['ops_in_bf16']} op(s) run in bf16, {r['casts_to_bf16_removed']} Cast(s) "
                                   f"to bf16 and {r['float_ops_removed']} float op(s) removed")
        if self.ort_int8_layout and self.form == "emulate":
            activations_to_uint8(out)
            dedicate_dq(out)
        self.report = rw.report
        A.set_json(out, REWRITE, rw.report.to_json())
        return RewriteResult(out, True, report=rw.report)  # a new model, always (the rewrite's key at least)


def rewrite(model: ir.Model, form: str = "emulate", int8_output_q: bool | str = False,
            reduce_range: bool = False, ort_int8_layout: bool = False,
            bf16_compute: bool = False, int8_chains: bool = False,
            bf16_chains: bool = False) -> tuple[ir.Model, RewriteReport]:
    p = RewritePass(form, int8_output_q, reduce_range, ort_int8_layout, bf16_compute, int8_chains, bf16_chains)
    out = p(model).model
    return out, p.report


#: the lowering options of the ``cpu`` target (ONNX Runtime's CPU provider): what ``runtime.profile``
#: times and what the pipeline ships, so measured gains hold for the shipped model. INT8 tensors stay
#: quantized between INT8 layers (``int8_chains``, so ORT fuses whole chains: QLinearConv ->
#: QLinearAdd -> pooling); a Conv whose output the chains leave in float keeps its own output Q
#: (``int8_output_q="conv"``: ORT fuses Conv only with one), which the loss model measures too
ORT_CPU_LOWERING = {"int8_output_q": "conv", "ort_int8_layout": True, "int8_chains": True}


def activations_to_uint8(model: ir.Model) -> int:
    """INT8 activation Q/DQ pairs -> UINT8 with zero point + 128 (the same numbers: q_u8 = q_s8 + 128),
    what ORT's QDQS8ToU8Transformer does on x86. Doing it here keeps ORT's INT8 fusions (u8 activations
    x s8 weights) while avoiding that transformer's failure on opset-21 activation-activation
    MatMuls. Weights stay int8. In place; returns the number of Q nodes converted."""
    n = 0
    for q in [x for x in model.graph if x.op_type == "QuantizeLinear" and len(x.inputs) >= 3]:
        zp = q.inputs[2]
        if zp is None or zp.const_value is None or zp.const_value.dtype != ir.DataType.INT8:
            continue
        if q.inputs[0] is not None and q.inputs[0].const_value is not None:
            continue  # a constant: leave it
        if "output_dtype" in q.attributes:
            continue
        consumers = list(q.outputs[0].uses())
        if not consumers or not all(c.op_type == "DequantizeLinear" for c, _ in consumers):
            continue
        zp_u8 = (zp.const_value.numpy().astype(np.int16) + 128).astype(np.uint8)
        name = f"{q.outputs[0].name}/zp_u8"
        v = ir.Value(name=name, shape=ir.Shape(zp_u8.shape), type=ir.TensorType(ir.DataType.UINT8),
                     const_value=ir.Tensor(zp_u8, name=name))
        model.graph.register_initializer(v)
        q.replace_input_with(2, v)
        q.outputs[0].dtype = ir.DataType.UINT8
        for c, _ in consumers:
            if len(c.inputs) >= 3 and c.inputs[2] is zp:
                c.replace_input_with(2, v)
        n += 1
    return n


def dedicate_dq(model: ir.Model) -> int:
    """One DequantizeLinear per consumer (the Q stays shared), as ORT's quantizer lays out QDQ
    (``DedicatedQDQPair``): ORT fuses ``DQ -> MatMul`` into QLinearMatMul / MatMulIntegerToFloat only
    when the DQ has a single consumer; a DQ shared by q/k/v or gate/up leaves all but one MatMul
    unfused, with a per-channel weight DQ run on every call. In place; returns DQ nodes added."""
    added = 0
    for dq in [n for n in model.graph if n.op_type == "DequantizeLinear"]:
        y = dq.outputs[0]
        if y.is_graph_output():
            continue
        uses = list(y.uses())
        if len(uses) < 2:
            continue
        src = dq.inputs[0].producer() if dq.inputs[0] is not None else None
        if src is None or src.op_type != "QuantizeLinear":
            continue  # weight DQs are per consumer already
        for i, (consumer, idx) in enumerate(uses[1:]):
            new = ir.Node(dq.domain, "DequantizeLinear", list(dq.inputs),
                          attributes=list(dq.attributes.values()), name=f"{dq.name}/dedicated{i}",
                          metadata_props=dict(dq.metadata_props), num_outputs=1)
            new.outputs[0].name = f"{y.name}/dedicated{i}"
            new.outputs[0].dtype, new.outputs[0].shape = y.dtype, y.shape
            model.graph.insert_after(dq, new)
            consumer.replace_input_with(idx, new.outputs[0])
            added += 1
    return added


def check_model(model: ir.Model | str | os.PathLike, full_check: bool = True) -> None:
    """``onnx.checker`` on an in-memory model (saved to a temp folder when it has external data)."""
    if isinstance(model, (str, os.PathLike)):
        onnx.checker.check_model(str(model), full_check=full_check)
        return
    has_external = any(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values())
    if not has_external:
        proto = ir.to_proto(model)
        if proto.ByteSize() < 1_800_000_000:
            onnx.checker.check_model(proto, full_check=full_check)
            return
    with tempfile.TemporaryDirectory(prefix="onnx_amp_check_") as d:
        p = Path(d) / "model.onnx"
        ir.save(model, p, external_data="model.onnx.data")
        onnx.checker.check_model(str(p), full_check=full_check)
