"""Keep tensors quantized between INT8 layers, so the runtime fuses whole chains (the ``int8_chains``
lowering option of ``passes.rewrite``).

The per-layer lowering (``passes.lowering``) gives each INT8 layer its own ``Q -> DQ`` on its
activation input and leaves everything between layers in float: the tensor that flows from one
INT8 layer to the next is dequantized, goes through a float ``Add``/``Relu``/``MaxPool``, and is
quantized again; ONNX Runtime then runs those ops in float and cannot fuse ``QLinearAdd``,
``QLinearConv`` outputs or int8 pooling. This post-pass, run on the rewritten graph, quantizes a
tensor *once where it is produced* when every consumer is quantized, as ONNX Runtime's own QDQ
quantizer, AIMET and NNCF lay Q/DQ out:

- **which tensors**: the output of an INT8 layer or of a chain op (``Add``, ``Mul``, ``Concat``,
  ``MaxPool``, ``AveragePool``, ``GlobalAveragePool``, ``Reshape``, ``Transpose``, ``Squeeze``,
  ``Unsqueeze``, ``Flatten``, ``Relu``, ``Clip``) whose consumers are all INT8 layers (through their
  activation ``Q -> DQ``) or chain ops that are themselves quantized, and which is no graph
  output. The set is the largest one that satisfies this (a fixpoint), so a tensor with any float
  consumer stays float and no float path sees new rounding;
- **one scale per tensor**: the range comes from the tensor's INT8 consumers (their
  ``onnx_amp.amax.a``: the same tensor over the same calibration samples, so their own rounding is
  unchanged), else from its INT8 producer (``onnx_amp.amax.y``) or a recorded range
  (``onnx_amp.amax.out`` on the producing node); shape ops and pooling keep their input's scale
  (ONNX Runtime drops Q/DQ around them only then);
- **Relu and Clip(min >= 0)** are folded into the quantization of their input: an unsigned Q with
  zero point 0 saturates negatives exactly as the ``Relu`` does (``Clip``'s upper bound becomes the
  top of the range), so the op disappears and its producer (a Conv, an Add) fuses with it.

Symmetric int8 Q (zero point 0) become uint8 with zero point 128 afterwards, as for the per-layer
lowering (``rewrite.activations_to_uint8``); ops folded away are reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from onnx_amp.core import annotations as A
from onnx_amp.passes import quantize as Q

#: ops through which a tensor can stay quantized (ONNX Runtime fuses them with Q/DQ on CPU)
ARITH_OPS = frozenset({"Add", "Mul", "Concat"})
SAME_SCALE_OPS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "Reshape", "Transpose", "Squeeze",
                            "Unsqueeze", "Flatten"})
FOLD_OPS = frozenset({"Relu", "Clip"})
CHAIN_OPS = ARITH_OPS | SAME_SCALE_OPS | FOLD_OPS
AMAX_OUT = "onnx_amp.amax.out"  # recorded max |output| of a node (JSON list, one per output)


@dataclass(frozen=True)
class QParams:
    scale: float
    zero_point: int
    dtype: ir.DataType  # INT8 (symmetric, zero point 0) or UINT8 (zero point 0: non-negative)


def _is_int8_layer(n: ir.Node) -> bool:
    p = n.metadata_props
    if A.LAYER not in p or A.INSERTED_BY in p or A.PRECISION not in p:
        return False
    w, a = A.parse_precision(p[A.PRECISION])
    return a == "int8" and (w == "int8" or p.get(A.LAYER_KIND) == "act_act")


def _act_q_of(node: ir.Node) -> ir.Node | None:
    """The rewrite's activation ``QuantizeLinear`` a use belongs to (its DQs feed INT8 layers)."""
    if node.op_type != "QuantizeLinear" or A.INSERTED_BY not in node.metadata_props:
        return None
    dqs = [u for u, _ in node.outputs[0].uses()]
    if dqs and all(d.op_type == "DequantizeLinear" and all(_is_int8_layer(c) for c, _ in d.outputs[0].uses())
                   for d in dqs):
        return node
    return None


def _scalar(v: ir.Value | None) -> float | None:
    if v is None or v.const_value is None:
        return None
    arr = np.asarray(v.const_value.numpy()).reshape(-1)
    return float(arr[0]) if arr.size == 1 else None


def _consumer_amax(t: ir.Value) -> float | None:
    """max |t| from an INT8 consumer's calibration (its activation Q's scale * 127)."""
    for use, _ in t.uses():
        q = _act_q_of(use)
        if q is not None:
            s = _scalar(q.inputs[1])
            if s is not None:
                return s * 127.0
    return None


class _Chains:
    def __init__(self, graph: ir.Graph):
        self.graph = graph
        self.layers = {n for n in graph if _is_int8_layer(n)}
        self.chain = {n for n in graph if n.op_type in CHAIN_OPS and n.domain in ("", "ai.onnx")
                      and A.INSERTED_BY not in n.metadata_props and len(n.outputs) == 1}
        self.outputs = set(graph.outputs)

    def _float_inputs(self, n: ir.Node) -> list[ir.Value]:
        ins = [v for v in n.inputs if v is not None and v.const_value is None and not v.is_initializer()]
        if n.op_type in ("Reshape", "Squeeze", "Unsqueeze", "Clip"):
            ins = ins[:1]  # shape / bound operands are not data
        return ins

    def _uses_ok(self, t: ir.Value, chain: set) -> bool:
        if t in self.outputs or not list(t.uses()):
            return False
        return all(_act_q_of(u) is not None or u in chain for u, _ in t.uses())

    def solve(self) -> set[ir.Node]:
        """The quantized chain ops: the largest set in which every float input is produced by an INT8
        layer or a member and quantized in place, and every output's consumers are quantized."""
        chain = set(self.chain)
        while True:
            drop = set()
            for n in chain:
                ins = self._float_inputs(n)
                if not ins or not self._uses_ok(n.outputs[0], chain):
                    drop.add(n)
                    continue
                for t in ins:
                    p = t.producer()
                    if p is None or (p not in self.layers and p not in chain) or not self._uses_ok(t, chain):
                        drop.add(n)
                        break
            if not drop:
                return chain
            chain -= drop


def _fold_target(t: ir.Value, chain: set) -> ir.Node | None:
    """The Relu/Clip that ``t`` only feeds, when it can absorb it (Clip needs a lower bound >= 0)."""
    uses = list(t.uses())
    if len(uses) != 1 or uses[0][0] not in chain or uses[0][0].op_type not in FOLD_OPS:
        return None
    n = uses[0][0]
    if n.op_type == "Clip":
        lo = _scalar(n.inputs[1]) if len(n.inputs) > 1 else None
        if lo is None or lo < 0:
            return None
    return n


def _is_folded(n: ir.Node, chain: set) -> bool:
    """A Relu/Clip that its input's quantization absorbs (its output is not quantized separately)."""
    if n.op_type not in FOLD_OPS or n not in chain or not n.inputs or n.inputs[0] is None:
        return False
    return _fold_target(n.inputs[0], chain) is n


def _range(t: ir.Value) -> float | None:
    """max |t| from its INT8 consumers, its INT8 producer, or a range recorded on its producer."""
    r = _consumer_amax(t)
    if r is not None:
        return r
    p = t.producer()
    if p is None:
        return None
    if _is_int8_layer(p) and A.AMAX_Y in p.metadata_props:
        return float(p.metadata_props[A.AMAX_Y])
    rec = A.get_json(p, AMAX_OUT)
    if isinstance(rec, list) and rec and rec[0] is not None:
        return float(rec[0])
    return None


class _Lowering:
    """Assigns each in-place tensor its Q parameters and rewires its consumers."""

    def __init__(self, graph: ir.Graph, chain: set[ir.Node], fresh):
        self.graph, self.chain, self.fresh = graph, chain, fresh
        self.params: dict[ir.Value, QParams] = {}
        self.qvalue: dict[ir.Value, tuple[ir.Value, ir.Value, ir.Value]] = {}  # t -> (q out, scale, zp)
        self.folded: list[str] = []

    def params_for(self, t: ir.Value) -> QParams | None:
        fold = _fold_target(t, self.chain)
        if fold is not None:  # Relu / Clip(lo >= 0) folded into an unsigned Q of t
            r = _range(fold.outputs[0]) or _range(t)
            hi = _scalar(fold.inputs[2]) if fold.op_type == "Clip" and len(fold.inputs) > 2 else None
            if r is None:
                return None
            top = min(r, hi) if hi is not None else r
            return QParams(Q.activation_scale(top * 127.0 / 255.0, "int8"), 0, ir.DataType.UINT8)
        p = t.producer()
        if p is not None and p.op_type in SAME_SCALE_OPS:
            src = self._float_input(p)
            return self.params.get(src) if src is not None else None
        r = _range(t)
        return None if r is None else QParams(Q.activation_scale(r, "int8"), 0, ir.DataType.INT8)

    @staticmethod
    def _float_input(n: ir.Node) -> ir.Value | None:
        return next((v for v in n.inputs if v is not None and v.const_value is None), None)

    def _init(self, arr: np.ndarray, dtype: ir.DataType, base: str) -> ir.Value:
        name = self.fresh(base)
        v = ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(arr.shape),
                     const_value=ir.Tensor(arr, dtype=dtype, name=name))
        self.graph.register_initializer(v)
        return v

    def quantize(self, t: ir.Value, qp: QParams) -> None:
        scale = self._init(np.array(qp.scale, np.float32), ir.DataType.FLOAT, f"{t.name}/chain_scale")
        zp_np = np.array(qp.zero_point, np.int8 if qp.dtype == ir.DataType.INT8 else np.uint8)
        zp = self._init(zp_np, qp.dtype, f"{t.name}/chain_zp")
        qv = ir.Value(name=self.fresh(f"{t.name}/chain_q"), type=ir.TensorType(qp.dtype), shape=t.shape)
        props = {A.INSERTED_BY: "rewrite", A.INSERTED_FOR: "int8_chains"}
        uses = list(t.uses())  # before the Q below becomes one of them
        fold = _fold_target(t, self.chain)
        qnode = ir.Node("", "QuantizeLinear", [t, scale, zp], outputs=[qv], name=self.fresh(f"{t.name}/chain_Q"),
                        metadata_props=props)
        self.graph.insert_after(t.producer(), qnode)
        self.params[t] = qp
        self.qvalue[t] = (qv, scale, zp)
        for u, idx in uses:
            self._rewire(u, idx, t, fold)

    def _dq(self, t: ir.Value, before: ir.Node) -> ir.Value:
        qv, scale, zp = self.qvalue[t]
        out = ir.Value(name=self.fresh(f"{t.name}/chain_dq"), type=ir.TensorType(ir.DataType.FLOAT), shape=t.shape)
        node = ir.Node("", "DequantizeLinear", [qv, scale, zp], outputs=[out], name=self.fresh(f"{t.name}/chain_DQ"),
                       metadata_props={A.INSERTED_BY: "rewrite", A.INSERTED_FOR: "int8_chains"})
        self.graph.insert_before(before, node)
        return out

    def _rewire(self, u: ir.Node, idx: int, t: ir.Value, fold: ir.Node | None = None) -> None:
        qv, scale, zp = self.qvalue[t]
        if _act_q_of(u) is not None:  # an INT8 layer's own activation Q: its DQs read the shared Q
            for d, _ in list(u.outputs[0].uses()):
                d.replace_input_with(0, qv)
                d.replace_input_with(1, scale)
                d.replace_input_with(2, zp)
            self.graph.remove(u, safe=True)
        elif u is fold:
            out = u.outputs[0]
            self.qvalue[out], self.params[out] = self.qvalue[t], self.params[t]
            for v, j in list(out.uses()):
                self._rewire(v, j, out)
            self.folded.append(u.name)
            self.graph.remove(u, safe=True)
        else:
            u.replace_input_with(idx, self._dq(t, u))


def quantize_chains(model: ir.Model, fresh) -> dict:
    """Quantize in place every tensor between INT8 layers whose consumers are all quantized (see the
    module doc). In place on a rewritten (emulate form) model; ``fresh(base)`` makes unique names.
    Returns a report: tensors quantized in place, chain ops kept quantized, Relu/Clip folded away."""
    graph = model.graph
    ch = _Chains(graph)
    while True:
        chain = ch.solve()
        low = _Lowering(graph, chain, fresh)
        # every tensor produced by an INT8 layer or a member whose consumers are all quantized
        todo = [n.outputs[0] for n in graph if (n in ch.layers or n in chain) and ch._uses_ok(n.outputs[0], chain)
                and not _is_folded(n, chain)]
        missing = set()
        for t in todo:  # graph order: a same-scale op's input has its parameters before it
            qp = low.params_for(t)
            if qp is None:
                missing.add(t.producer())
                continue
            low.params[t] = qp
            fold = _fold_target(t, chain)
            if fold is not None:
                low.params[fold.outputs[0]] = qp
        bad = missing & chain
        if not bad:
            break
        ch.chain -= bad  # no range for their output: leave them in float, and solve again
    planned = dict(low.params)
    low.params.clear()
    for t in todo:
        if t not in low.qvalue:
            low.quantize(t, planned[t])
    return {"tensors": len(low.qvalue), "chain_ops": sorted(n.name for n in chain if n.name not in low.folded),
            "folded": low.folded}


def _chain_q(y: ir.Value) -> bool:
    return any(u.op_type == "QuantizeLinear" and u.metadata_props.get(A.INSERTED_FOR) == "int8_chains"
               for u, _ in y.uses())


def unchained_outputs(model: ir.Model, op_types: frozenset[str] | None) -> list[ir.Node]:
    """INT8 layers (of ``op_types``; None: all) whose output the chains left in float: they get the
    per-layer output ``Q -> DQ`` instead (ONNX Runtime fuses an INT8 Conv only with one)."""
    return [n for n in model.graph if _is_int8_layer(n) and (op_types is None or n.op_type in op_types)
            and A.AMAX_Y in n.metadata_props and not _chain_q(n.outputs[0]) and not n.outputs[0].is_graph_output()]


def _dq_scale(v: ir.Value | None) -> np.ndarray | None:
    p = v.producer() if v is not None else None
    if p is None or p.op_type != "DequantizeLinear" or p.inputs[1] is None or p.inputs[1].const_value is None:
        return None
    return np.asarray(p.inputs[1].const_value.numpy(), np.float32)


def quantize_biases(model: ir.Model, fresh) -> int:
    """The float bias of an INT8 Conv/Gemm becomes ``DequantizeLinear(int32)`` with scale
    ``x_scale * w_scale`` (per output channel), as ONNX Runtime's quantizer writes it: its QDQ
    fusions (QGemm, and QLinearConv's bias) take the int32 bias. Run last, on the scales the layer
    really reads. Returns the biases converted."""
    n_done = 0
    for n in [n for n in model.graph if _is_int8_layer(n) and n.op_type in ("Conv", "Gemm") and len(n.inputs) > 2]:
        b = n.inputs[2]
        if b is None or b.const_value is None or b.dtype != ir.DataType.FLOAT:
            continue
        sx, sw = _dq_scale(n.inputs[0]), _dq_scale(n.inputs[1])
        if sx is None or sw is None or sx.size != 1:
            continue
        bias = np.asarray(b.const_value.numpy(), np.float32).reshape(-1)
        scale = (sx.reshape(()) * sw.reshape(-1)).astype(np.float32)
        if scale.size not in (1, bias.size) or not np.all(scale > 0):
            continue
        scale = np.broadcast_to(scale, bias.shape).astype(np.float32)
        q = np.clip(np.round(bias / scale), -(2 ** 31), 2 ** 31 - 1).astype(np.int32)
        vals = []
        for arr, dt, tag in ((q, ir.DataType.INT32, "q"), (scale, ir.DataType.FLOAT, "scale"),
                             (np.zeros(bias.shape, np.int32), ir.DataType.INT32, "zp")):
            name = fresh(f"{b.name}/int32_{tag}")
            v = ir.Value(name=name, type=ir.TensorType(dt), shape=ir.Shape(arr.shape), const_value=ir.Tensor(arr, name=name))
            model.graph.register_initializer(v)
            vals.append(v)
        out = ir.Value(name=fresh(f"{b.name}/int32_dq"), type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(bias.shape))
        dq = ir.Node("", "DequantizeLinear", vals, attributes=[ir.AttrInt64("axis", 0)], outputs=[out],
                     name=fresh(f"{b.name}/int32_DQ"), metadata_props={A.INSERTED_BY: "rewrite",
                                                                        A.INSERTED_FOR: n.metadata_props[A.LAYER]})
        model.graph.insert_before(n, dq)
        n.replace_input_with(2, out)
        n_done += 1
    return n_done
