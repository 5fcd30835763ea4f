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
from dataclasses import dataclass, field
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir

from onnx_amp.core.ops import WEIGHT_VIEW_OPS
from onnx_amp.passes.base import PassPreconditionError
from onnx_amp.core import annotations as A
from onnx_amp.passes import quantize as Q
from onnx_amp.core.formats import Format, get_format
from onnx_amp.core.errors import OnnxAmpError

AMAX_Y, INSERTED_BY, INSERTED_FOR, REWRITE = A.AMAX_Y, A.INSERTED_BY, A.INSERTED_FOR, A.REWRITE
COPY_KEYS = (A.REGION, A.UNIT, A.MODULE, A.PRECISION)
FORMS = ("emulate", "deploy")
OPSET = 21
MIN_FP8_OPSET = 19

_NP_DTYPE = {
    ir.DataType.BFLOAT16: ml_dtypes.bfloat16,
    ir.DataType.FLOAT16: np.float16,
    ir.DataType.FLOAT8E4M3FN: ml_dtypes.float8_e4m3fn,
    ir.DataType.FLOAT8E5M2: ml_dtypes.float8_e5m2,
    ir.DataType.INT8: np.int8,
    ir.DataType.FLOAT: np.float32,
}


def _np_tensor(arr: np.ndarray, dtype: ir.DataType, name: str) -> ir.Tensor:
    """numpy array -> ir.Tensor of ``dtype`` (float32 values are rounded to it; ints and
    ml_dtypes arrays already of that type are kept as they are)."""
    arr = np.asarray(arr)  # (not ascontiguousarray: it turns a 0-d scale into shape [1])
    if not arr.flags.c_contiguous:
        arr = arr.copy(order="C")
    if arr.dtype != _NP_DTYPE[dtype]:
        arr = Q.cast_to(arr, _NP_DTYPE[dtype])
    return ir.Tensor(arr, dtype=dtype, name=name)


def _zero(dtype: ir.DataType, n: int | None, name: str) -> ir.Tensor:
    shape = () if n is None else (n,)
    return ir.Tensor(np.zeros(shape, dtype=_NP_DTYPE[dtype]), dtype=dtype, name=name)


@dataclass
class RewriteReport:
    form: str
    layers: dict[str, str] = field(default_factory=dict)  # layer id -> precision
    notes: list[str] = field(default_factory=list)
    inserted: int = 0
    opset_converted: tuple[int, int] | None = None
    reduce_range: bool = False

    def to_json(self) -> dict:
        counts: dict[str, int] = {}
        for p in self.layers.values():
            counts[p] = counts.get(p, 0) + 1
        return {"form": self.form, "precisions": counts, "inserted_nodes": self.inserted,
                "opset_converted": self.opset_converted, "reduce_range": self.reduce_range, "notes": self.notes}


class _Rewriter:
    def __init__(self, model: ir.Model, form: str, int8_output_q: bool | str, reduce_range: bool = False,
                 bf16_compute: bool = False):
        self.reduce_range = reduce_range
        self.bf16_compute = bf16_compute and form == "emulate"
        self.model = model
        self.graph = model.graph
        self.form = form
        self.int8_output_q = int8_output_q
        self.report = RewriteReport(form)
        self.names = {v.name for n in self.graph for v in (*n.inputs, *n.outputs) if v is not None}
        self.names |= set(self.graph.initializers) | {v.name for v in self.graph.inputs}
        self.names |= {n.name for n in self.graph if n.name}
        self.act_cache: dict[tuple, ir.Value] = {}
        self.weight_cache: dict[tuple, ir.Value] = {}
        self.old_weights: set[ir.Value] = set()

    # -- naming / node creation ---------------------------------------------------------------
    def fresh(self, base: str) -> str:
        base = base.replace(" ", "_")
        name, i = base, 1
        while name in self.names:
            name = f"{base}_{i}"
            i += 1
        self.names.add(name)
        return name

    def props_for(self, layer: ir.Node) -> dict[str, str]:
        p = {k: v for k, v in layer.metadata_props.items() if k in COPY_KEYS or k.startswith("pkg.torch.onnx.")}
        p[INSERTED_BY] = "rewrite"
        p[INSERTED_FOR] = layer.metadata_props.get(A.LAYER, layer.name)
        return p

    def add_node(self, layer: ir.Node, op: str, inputs, attrs: dict, out_name: str,
                 out_dtype: ir.DataType, shape) -> ir.Value:
        out = ir.Value(name=self.fresh(out_name), type=ir.TensorType(out_dtype),
                       shape=ir.Shape(shape) if shape is not None else None)
        node = ir.Node("", op, inputs, attributes=[_attr(k, v) for k, v in attrs.items()],
                       outputs=[out], name=self.fresh(f"{out_name}/{op}"),
                       metadata_props=self.props_for(layer))
        self.graph.insert_before(layer, node)
        self.report.inserted += 1
        return out

    def add_init(self, tensor: ir.Tensor, base: str) -> ir.Value:
        name = self.fresh(base)
        tensor.name = name
        v = ir.Value(name=name, type=ir.TensorType(tensor.dtype), shape=ir.Shape(tensor.shape),
                     const_value=tensor)
        self.graph.register_initializer(v)
        return v

    # -- operands -------------------------------------------------------------------------------
    def lower_activation(self, layer: ir.Node, x: ir.Value, f: Format, amax: float | None,
                         compute: ir.DataType, tag: str) -> ir.Value:
        """Activation operand in float -> value of dtype ``compute`` carrying format ``f``'s rounding."""
        if self.bf16_compute and f.needs_qdq and compute == ir.DataType.BFLOAT16:
            y = self.lower_activation(layer, x, f, amax, ir.DataType.FLOAT, tag)  # float Q/DQ, then bf16
            return self.add_node(layer, "Cast", [y], {"to": compute}, f"{x.name}/{f.name}_bf16", compute, x.shape)
        key = (id(x), f.name, amax, compute)
        if key in self.act_cache:
            return self.act_cache[key]
        shape = x.shape
        base = f"{x.name}/{f.name}"
        cur = x
        src = x.dtype or ir.DataType.FLOAT
        if f.name == "fp32" or (not f.needs_qdq and f.onnx_dtype == compute):
            if compute != src:
                cur = self.add_node(layer, "Cast", [cur], {"to": compute}, f"{base}_cast", compute, shape)
        elif not f.needs_qdq:  # bf16/fp16 rounding, computed in float
            cur = self.add_node(layer, "Cast", [cur], {"to": f.onnx_dtype}, f"{base}_cast", f.onnx_dtype, shape)
            cur = self.add_node(layer, "Cast", [cur], {"to": compute}, f"{base}_uncast", compute, shape)
        else:
            # One Q -> DQ pair per consumer layer: ORT fuses DQ -> MatMul into its integer kernels only
            # when the Q feeds that one DQ (q/k/v share their input). Sessions must then run without
            # CommonSubexpressionElimination, which would merge the identical Qs again
            # (runtime.ort_session.make_session does that).
            if compute != src:
                cur = self.add_node(layer, "Cast", [cur], {"to": compute}, f"{base}_in", compute, shape)
            s = Q.activation_scale(amax, f)
            if compute == ir.DataType.FLOAT:
                st = _np_tensor(np.array(s, dtype=np.float32), ir.DataType.FLOAT, "")
            else:
                st = ir.Tensor(np.array(s, dtype=np.float32).astype(_NP_DTYPE[compute]), dtype=compute)
            scale = self.add_init(st, f"{base}_scale")
            zp = self.add_init(_zero(f.onnx_dtype, None, ""), f"{base}_zp")
            q = self.add_node(layer, "QuantizeLinear", [cur, scale, zp], {}, f"{base}_q", f.onnx_dtype, shape)
            return self.add_node(layer, "DequantizeLinear", [q, scale, zp], {}, f"{base}_dq", compute, shape)
        self.act_cache[key] = cur
        return cur

    def lower_weight(self, layer: ir.Node, w: ir.Value, f: Format, axis: int, compute: ir.DataType) -> ir.Value:
        key = (id(w), f.name, axis, compute)
        if key in self.weight_cache:
            return self.weight_cache[key]
        if self.bf16_compute and f.needs_qdq and compute == ir.DataType.BFLOAT16:
            y = self.lower_weight(layer, w, f, axis, ir.DataType.FLOAT)  # float DQ, then bf16
            out = self.add_node(layer, "Cast", [y], {"to": compute}, f"{w.name}/{f.name}_bf16", compute, y.shape)
            self.weight_cache[key] = out
            return out
        arr = _const_array(w)
        if arr is None:
            raise OnnxAmpError(
                f"layer {layer.metadata_props.get(A.LAYER)} (node {layer.name}): weight input {w.name!r} "
                "is not a constant; re-run onnx-amp partition on this model"
            )
        wt = np.asarray(arr, dtype=np.float32)
        base = f"{w.name}/{f.name}"
        shape = wt.shape
        if f.name == "fp32":
            out = w
            if compute != ir.DataType.FLOAT:
                out = self.add_init(_np_tensor(wt, compute, ""), f"{base}_{compute.name.lower()}")
        elif not f.needs_qdq:
            stored = self.add_init(_np_tensor(wt, f.onnx_dtype, ""), base)
            out = stored
            if compute != f.onnx_dtype:
                out = self.add_node(layer, "Cast", [stored], {"to": compute}, f"{base}_cast", compute, shape)
        else:
            q, s = Q.quantize_weight(wt, f, axis, self.reduce_range)
            ax = axis % wt.ndim
            qv = self.add_init(_np_tensor(q, f.onnx_dtype, ""), f"{base}_q")
            sv = self.add_init(_np_tensor(s, compute, ""), f"{base}_scale")
            zp = self.add_init(_zero(f.onnx_dtype, s.size, ""), f"{base}_zp")
            out = self.add_node(layer, "DequantizeLinear", [qv, sv, zp], {"axis": ax}, f"{base}_dq", compute, shape)
        if out is not w:
            self.old_weights.add(w)
        self.weight_cache[key] = out
        return out

    def cast_const_or_value(self, layer: ir.Node, v: ir.Value, compute: ir.DataType) -> ir.Value:
        """Bias and other float inputs of a layer computing in ``compute``."""
        if v is None or compute == ir.DataType.FLOAT or v.dtype != ir.DataType.FLOAT:
            return v
        t = ir.convenience.get_const_tensor(v)
        if t is not None:
            self.old_weights.add(v)
            arr = np.asarray(t.numpy(), dtype=np.float32)
            return self.add_init(_np_tensor(arr, compute, ""), f"{v.name}/{compute.name.lower()}")
        return self.add_node(layer, "Cast", [v], {"to": compute}, f"{v.name}/cast", compute, v.shape)

    # -- layers ----------------------------------------------------------------------------------
    def compute_dtype(self, layer: ir.Node, fmts: list[Format]) -> ir.DataType:
        if self.form != "deploy":
            # bf16_compute: activation bf16/fp8, weight bf16/fp8/int8 (fmts = [w, a] or [a]) -> bf16 compute
            if self.bf16_compute and fmts[-1].name in _BF16_ACT and all(f.name in _BF16_ACT + ("int8",) for f in fmts):
                return ir.DataType.BFLOAT16
            return ir.DataType.FLOAT
        sixteen = {f.onnx_dtype for f in fmts if not f.needs_qdq and f.name != "fp32"}
        if len(sixteen) != 1 or any(f.name == "fp32" for f in fmts):
            return ir.DataType.FLOAT
        dt = sixteen.pop()
        if dt == ir.DataType.BFLOAT16 and layer.op_type in ("Conv", "ConvTranspose"):
            self.report.notes.append(
                f"{layer.metadata_props.get(A.LAYER)}: ONNX Conv has no bfloat16 kernel type (opset <= 21); "
                "kept float compute with bf16-rounded weights")
            return ir.DataType.FLOAT
        return dt

    def rewrite_layer(self, layer: ir.Node) -> None:
        props = layer.metadata_props
        lid = props.get(A.LAYER)
        wname, aname = A.parse_precision(props[A.PRECISION])
        fw, fa = get_format(wname), get_format(aname)
        self.report.layers[lid] = A.format_precision(fw.name, fa.name)
        self.report.reduce_range = self.reduce_range
        kind = props.get(A.LAYER_KIND, "weight")
        where = f"layer {lid} (node {layer.name})"

        def amax(key: str) -> float:
            v = props.get(key)
            if v is None:
                raise OnnxAmpError(
                    f"{where}: activation format {fa.name} needs {key}; run onnx-amp calibrate first")
            return float(v)

        if kind == "weight":
            wi = int(props.get(A.WEIGHT_INPUT, "1"))
            ax = int(props.get(A.WEIGHT_AXIS, "-1"))
            di = 1 if wi == 0 else 0
            fmts = [fw, fa]
            if fw.name == "fp32" and fa.name == "fp32":
                return
            compute = self.compute_dtype(layer, fmts)
            x = layer.inputs[di]
            a_amax = amax(A.AMAX_A) if fa.needs_qdq else None
            xl = self.lower_activation(layer, x, fa, a_amax, compute, "a")
            wl = self.lower_weight(layer, layer.inputs[wi], fw, ax, compute)
            layer.replace_input_with(di, xl)
            layer.replace_input_with(wi, wl)
            for j in range(len(layer.inputs)):
                if j not in (di, wi) and layer.inputs[j] is not None:
                    layer.replace_input_with(j, self.cast_const_or_value(layer, layer.inputs[j], compute))
            int8_out = fw.name == "int8" and fa.name == "int8"
        else:
            if fa.name == "fp32":
                return
            compute = self.compute_dtype(layer, [fa])
            a0 = amax(A.AMAX_A) if fa.needs_qdq else None
            b0 = amax(A.AMAX_B) if fa.needs_qdq else None
            x0 = self.lower_activation(layer, layer.inputs[0], fa, a0, compute, "a")
            x1 = self.lower_activation(layer, layer.inputs[1], fa, b0, compute, "b")
            layer.replace_input_with(0, x0)
            layer.replace_input_with(1, x1)
            int8_out = fa.name == "int8"
        y = layer.outputs[0]
        if compute != ir.DataType.FLOAT:
            self._cast_output(layer, y, compute)
        elif int8_out and self.form == "emulate" and (
                self.int8_output_q is True or (self.int8_output_q == "conv" and layer.op_type in ("Conv", "ConvTranspose"))):
            if AMAX_Y in props:
                self._output_qdq(layer, y, float(props[AMAX_Y]))
            else:
                self.report.notes.append(f"{lid}: no {AMAX_Y}; INT8 output Q omitted (ORT fuses to MatMulIntegerToFloat)")

    def _retarget_output(self, layer: ir.Node, y: ir.Value, suffix: str, dtype: ir.DataType) -> ir.Value:
        """Give ``y``'s uses (and graph-output name) to a new float value; return it (no producer yet)."""
        orig = y.name
        was_output = y.is_graph_output()
        new = ir.Value(name=None, type=ir.TensorType(ir.DataType.FLOAT), shape=y.shape)
        y.replace_all_uses_with(new, replace_graph_outputs=True)
        if was_output:  # the graph keeps its output names
            y.name = self.fresh(f"{orig}/{suffix}")
            new.name = orig
        else:
            new.name = self.fresh(f"{orig}/{suffix}_out")
        y.type = ir.TensorType(dtype)
        return new

    def _cast_output(self, layer: ir.Node, y: ir.Value, compute: ir.DataType) -> None:
        new = self._retarget_output(layer, y, compute.name.lower(), compute)
        node = ir.Node("", "Cast", [y], attributes=[_attr("to", ir.DataType.FLOAT)], outputs=[new],
                       name=self.fresh(f"{y.name}/Cast"), metadata_props=self.props_for(layer))
        self.graph.insert_after(layer, node)
        self.report.inserted += 1

    def _output_qdq(self, layer: ir.Node, y: ir.Value, amax_y: float) -> None:
        f = get_format("int8")
        s = Q.activation_scale(amax_y, f)
        new = self._retarget_output(layer, y, "int8_y", ir.DataType.FLOAT)
        scale = self.add_init(_np_tensor(np.array(s, dtype=np.float32), ir.DataType.FLOAT, ""), f"{y.name}/int8_scale")
        zp = self.add_init(_zero(ir.DataType.INT8, None, ""), f"{y.name}/int8_zp")
        qv = ir.Value(name=self.fresh(f"{y.name}/int8_q"), type=ir.TensorType(ir.DataType.INT8), shape=y.shape)
        q = ir.Node("", "QuantizeLinear", [y, scale, zp], outputs=[qv], name=self.fresh(f"{y.name}/Q"),
                    metadata_props=self.props_for(layer))
        dq = ir.Node("", "DequantizeLinear", [qv, scale, zp], outputs=[new], name=self.fresh(f"{y.name}/DQ"),
                     metadata_props=self.props_for(layer))
        self.graph.insert_after(layer, [q, dq])
        self.report.inserted += 2

    def drop_dead_weights(self) -> None:
        todo = list(self.old_weights)
        while todo:
            v = todo.pop()
            if v.uses() or v.is_graph_output():
                continue
            p = v.producer()
            if p is None:
                if v.name in self.graph.initializers:
                    self.graph.initializers.pop(v.name)
            elif all(not o.uses() and not o.is_graph_output() for o in p.outputs):
                # a constant-folding chain (Constant, Transpose of a tied embedding, ...) now unused
                self.graph.remove(p, safe=True)
                todo += [i for i in p.inputs if i is not None]


_BF16_ACT = ("bf16", "fp8_e4m3", "fp8_e5m2")  # bf16_compute: the activation formats computed in bf16
_FOLDABLE = WEIGHT_VIEW_OPS


def _const_array(v: ir.Value, depth: int = 0) -> np.ndarray | None:
    """The value of a constant weight: an initializer, a Constant, or a short chain of
    Transpose/Reshape/Cast/... over them (e.g. the tied lm_head weight ``Transpose(embedding)``)."""
    t = ir.convenience.get_const_tensor(v)
    if t is not None:
        return t.numpy()
    p = v.producer()
    if p is None or depth > 8 or p.op_type not in _FOLDABLE or p.domain not in ("", "ai.onnx"):
        return None
    ins = [None if i is None else _const_array(i, depth + 1) for i in p.inputs]
    if any(x is None for x, i in zip(ins, p.inputs) if i is not None):
        return None
    a = p.attributes
    x = ins[0] if ins else None
    if p.op_type == "Identity":
        return x
    if p.op_type == "Transpose":
        perm = a["perm"].value if "perm" in a else None
        return np.transpose(x, perm)
    if p.op_type == "Cast":
        return x.astype(np.float32) if np.issubdtype(np.asarray(x).dtype, np.floating) else None
    if p.op_type == "Reshape":
        shape = [int(d) for d in ins[1]]
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
        return x.reshape(shape)
    if p.op_type in ("Squeeze", "Unsqueeze"):
        axes = [int(d) for d in ins[1]] if len(ins) > 1 and ins[1] is not None else (
            list(a["axes"].value) if "axes" in a else None)
        if p.op_type == "Squeeze":
            return np.squeeze(x, axis=tuple(axes) if axes else None)
        for ax in sorted(d % (x.ndim + len(axes)) for d in axes):
            x = np.expand_dims(x, ax)
        return x
    return None


def _attr(name: str, value) -> ir.Attr:
    if isinstance(value, ir.DataType):
        return ir.AttrInt64(name, int(value))
    if isinstance(value, int):
        return ir.AttrInt64(name, value)
    raise TypeError(value)


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
    from opset 22: such models are for OpenVINO (``runtime.backends.openvino``). The report of the last
    call is ``self.report`` (also stored as the model key ``onnx_amp.rewrite``).
    """

    def __init__(self, form: str = "emulate", int8_output_q: bool | str = False, reduce_range: bool = False,
                 ort_int8_layout: bool = False, bf16_compute: bool = False):
        super().__init__()
        self.bf16_compute = bf16_compute
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

    def call(self, model: ir.Model) -> "RewriteResult":
        layers = [n for n in model.graph if A.LAYER in n.metadata_props and INSERTED_BY not in n.metadata_props]
        uses_fp8 = self._uses_fp8_opset(layers)
        out = model.clone()
        rw = _Rewriter(out, self.form, self.int8_output_q, self.reduce_range, self.bf16_compute)
        if uses_fp8:
            _ensure_opset(out, MIN_FP8_OPSET, rw.report)
        if (out.ir_version or 0) < 10:
            out.ir_version = 10  # FP8 types and opset 21 need IR >= 9/10
        for node in [n for n in out.graph if A.LAYER in n.metadata_props and INSERTED_BY not in n.metadata_props]:
            rw.rewrite_layer(node)
        rw.drop_dead_weights()
        if self.ort_int8_layout and self.form == "emulate":
            activations_to_uint8(out)
            dedicate_dq(out)
        self.report = rw.report
        A.set_json(out, REWRITE, rw.report.to_json())
        return RewriteResult(out, True, report=rw.report)  # a new model, always (the rewrite's key at least)


def rewrite(model: ir.Model, form: str = "emulate", int8_output_q: bool | str = False,
            reduce_range: bool = False, ort_int8_layout: bool = False,
            bf16_compute: bool = False) -> tuple[ir.Model, RewriteReport]:
    p = RewritePass(form, int8_output_q, reduce_range, ort_int8_layout, bf16_compute)
    out = p(model).model
    return out, p.report


#: the lowering options of the ``cpu`` target (ONNX Runtime's CPU provider): what ``runtime.profile``
#: times and what the pipeline ships, so measured gains hold for the shipped model
ORT_CPU_LOWERING = {"int8_output_q": "conv", "ort_int8_layout": True}


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
