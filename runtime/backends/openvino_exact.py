"""The Q/DQ math as ONNX defines it, bit for bit, on OpenVINO (``exact=True`` sessions of
``runtime.backends.openvino``): each activation ``Q -> DQ`` pair becomes float ops (``x / s``, round
half to even, clamp, ``* s``; FP8 rounding by an exact binade search)."""

from __future__ import annotations


import numpy as np
import onnx_ir as ir


#: rt_info key that keeps a Divide a true division (ov::disable_divide_conversion); OpenVINO otherwise
#: multiplies by the reciprocal (105,279 of 262,144 quotients one ulp off, measured)
_EXACT_DIVIDE_KEY = "nonconvertable_divide_0"


_INT_RANGE = {ir.DataType.INT8: (-128, 127), ir.DataType.UINT8: (0, 255), ir.DataType.INT16: (-32768, 32767),
              ir.DataType.UINT16: (0, 65535), ir.DataType.INT4: (-8, 7), ir.DataType.UINT4: (0, 15)}
# FP8: (explicit mantissa bits, min normal exponent, max finite, binary-search steps over the binades)
_FP8 = {ir.DataType.FLOAT8E4M3FN: (3, -6, 448.0, (8, 4, 2, 1)),
        ir.DataType.FLOAT8E5M2: (2, -14, 57344.0, (16, 8, 4, 2, 1))}


def _scalar(v: ir.Value | None) -> float | None:
    if v is None:
        return 0.0
    t = ir.convenience.get_const_tensor(v)
    if t is None:
        return None
    a = np.asarray(t.numpy())
    return float(a.reshape(-1)[0]) if a.size == 1 else None


class _Builder:
    def __init__(self, graph: ir.Graph, prefix: str):
        self.graph, self.prefix, self.nodes, self.i = graph, prefix, [], 0

    def const(self, x: float) -> ir.Value:
        self.i += 1
        name = f"{self.prefix}/c{self.i}"
        v = ir.Value(name=name, shape=ir.Shape([]), type=ir.TensorType(ir.DataType.FLOAT),
                     const_value=ir.Tensor(np.array(x, np.float32), name=name))
        self.graph.register_initializer(v)
        return v

    def op(self, op: str, *inputs: ir.Value, dtype=ir.DataType.FLOAT) -> ir.Value:
        self.i += 1
        node = ir.Node("", op, list(inputs), name=f"{self.prefix}/{op}{self.i}", num_outputs=1)
        node.outputs[0].name = f"{self.prefix}/{op}{self.i}_out"
        node.outputs[0].dtype = dtype
        self.nodes.append(node)
        return node.outputs[0]


def exact_qdq(model: ir.Model) -> tuple[ir.Model, int]:
    """A copy of ``model`` whose activation ``QuantizeLinear -> DequantizeLinear`` pairs (per-tensor
    constant scale and zero point, float input) are float ops computing the ONNX definition exactly:
    ``clamp(round_half_even(x / s), qmin - z, qmax - z) * s`` (integers) or the FP8 value of
    ``clamp(x / s, -max, max)`` (round half to even, found by a binary search over the binades,
    every step a multiplication by a power of two) times ``s``. Needs the session to keep ``Divide``
    a true division (``_EXACT_DIVIDE_KEY``). Returns (model, pairs replaced)."""
    out = model.clone()
    g = out.graph
    n_done = 0
    for q in [n for n in g.all_nodes() if n.op_type == "QuantizeLinear" and n.domain in ("", "ai.onnx")]:
        if q.graph is not g or len(q.inputs) < 2:
            continue
        x, s_v = q.inputs[0], q.inputs[1]
        zp_v = q.inputs[2] if len(q.inputs) > 2 else None
        if x is None or ir.convenience.get_const_tensor(x) is not None or x.dtype not in (None, ir.DataType.FLOAT):
            continue
        s, z = _scalar(s_v), _scalar(zp_v)
        if s is None or z is None or not s > 0 or "saturate" in q.attributes and q.attributes["saturate"].value == 0:
            continue
        zt = ir.convenience.get_const_tensor(zp_v) if zp_v is not None else None
        qt = zt.dtype if zt is not None else (
            ir.DataType(q.attributes["output_dtype"].value) if "output_dtype" in q.attributes else ir.DataType.UINT8)
        uses = list(q.outputs[0].uses())
        if qt is None or not uses or q.outputs[0].is_graph_output():
            continue
        dqs = [c for c, _ in uses]
        if not all(c.op_type == "DequantizeLinear" and _scalar(c.inputs[1]) == s
                   and _scalar(c.inputs[2] if len(c.inputs) > 2 else None) == z for c in dqs):
            continue
        b = _Builder(g, f"{q.name or q.outputs[0].name}/exact")
        sv = b.const(s)
        v = b.op("Div", x, sv)
        if qt in _INT_RANGE:
            lo, hi = _INT_RANGE[qt]
            y = b.op("Clip", b.op("Round", v), b.const(lo - z), b.const(hi - z))
        elif qt in _FP8 and z == 0.0:
            m, emin, fmax, steps = _FP8[qt]
            v = b.op("Clip", v, b.const(-fmax), b.const(fmax))
            a = b.op("Abs", v)
            p = b.const(2.0 ** emin)
            for k in steps:  # p = 2^floor(log2|v|), at least the smallest normal: exact powers of two
                up = b.op("Mul", p, b.const(2.0 ** k))
                p = b.op("Where", b.op("GreaterOrEqual", a, up, dtype=ir.DataType.BOOL), up, p)
            ulp = b.op("Mul", p, b.const(2.0 ** -m))
            y = b.op("Mul", b.op("Round", b.op("Div", v, ulp)), ulp)
        else:
            continue
        y = b.op("Mul", y, sv)
        y.shape = x.shape
        g.insert_before(q, b.nodes)
        for dq in dqs:
            o = dq.outputs[0]
            if o.is_graph_output():
                name = o.name
                o.name = f"{name}/replaced"
                ident = ir.Node("", "Identity", [y], name=f"{name}/exact_out", num_outputs=1)
                ident.outputs[0].name, ident.outputs[0].dtype, ident.outputs[0].shape = name, o.dtype, o.shape
                g.insert_after(b.nodes[-1], ident)
                o.replace_all_uses_with(ident.outputs[0], replace_graph_outputs=True)
            else:
                o.replace_all_uses_with(y)
        g.remove(dqs + [q], safe=True)
        n_done += 1
    return out, n_done
