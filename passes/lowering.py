"""Lowering one layer's planned precision into ONNX nodes: the rewrite pass's worker (``_Rewriter``).

Activation operands get ``QuantizeLinear -> DequantizeLinear`` (FP8/INT8, per-tensor scale from the
calibration amax) or a ``Cast`` pair (BF16/FP16); weights are quantized offline (``passes.quantize``,
numpy) and stored in their format, followed by ``DequantizeLinear`` or ``Cast``. Inserted nodes carry
the layer's annotations plus ``onnx_amp.inserted_by`` / ``inserted_for``. See ``passes.rewrite``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import ml_dtypes
import numpy as np
import onnx_ir as ir

from onnx_amp.core import annotations as A
from onnx_amp.core.errors import OnnxAmpError
from onnx_amp.core.formats import Format, get_format
from onnx_amp.core.ops import WEIGHT_VIEW_OPS
from onnx_amp.passes import quantize as Q

AMAX_Y, INSERTED_BY, INSERTED_FOR = A.AMAX_Y, A.INSERTED_BY, A.INSERTED_FOR

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
