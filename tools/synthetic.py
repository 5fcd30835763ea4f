"""Synthetic graphs and problems with known structure, for tests and benchmarks alike.

- :class:`G`, :func:`transformer`, :func:`synthetic_transformer`: hand-built ONNX graphs for the partition;
- :func:`deep_stack`: a deep residual MLP stack, partitioned (profiling with structure sharing);
- :func:`random_problem`: a seeded plan-selection problem with full tables (the solvers);
- :func:`small_mlp`, :func:`small_convnet`: an MLP with an attention block and a small conv net,
  partitioned, with :func:`annotate_amax` (calibration maxima from one run) and :func:`lowered`
  (a uniform plan rewritten), for the backend tests and the OpenVINO measurements.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper
from onnx import TensorProto as T

from onnx_amp.passes.problem import Config, Problem, Region


class G:
    """Collects nodes/initializers by tensor name; ``model()`` returns an onnx_ir model."""

    def __init__(self, seed: int = 0, d: int = 8):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.rng = np.random.default_rng(seed)
        self.d = d
        self.k = 0

    def fresh(self, prefix: str = "t") -> str:
        self.k += 1
        return f"{prefix}{self.k}"

    def input(self, name: str, shape=None, dtype=TensorProto.FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, dtype, shape))
        return name

    def weight(self, shape=None, name: str | None = None, arr=None) -> str:
        name = name or self.fresh("W")
        if arr is None:
            shape = shape or (self.d, self.d)
            arr = (self.rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def op(self, op_type: str, inputs, name: str | None = None, n_out: int = 1, out=None, **attrs):
        outs = out if out is not None else [self.fresh() for _ in range(n_out)]
        if isinstance(outs, str):
            outs = [outs]
        node_name = name if name is not None else f"n_{outs[0]}"
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=node_name, **attrs))
        return outs[0] if len(outs) == 1 else outs

    def mm(self, x, name=None, w=None):
        return self.op("MatMul", [x, w or self.weight()], name=name)

    def proto(self, outputs, opset: int = 21) -> onnx.ModelProto:
        outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
        g = helper.make_graph(self.nodes, "g", self.inputs, outs, initializer=self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = 10
        return m

    def model(self, outputs, opset: int = 21) -> ir.Model:
        """onnx_ir model, with types from ONNX shape inference on every value."""
        return ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(self.proto(outputs, opset)))


def transformer(n_blocks: int = 2, d: int = 8, seed: int = 0, mask: bool = True, rotary: bool = True,
                shape_chain: bool = True) -> tuple[G, str]:
    """Pre-norm transformer-like graph: attention + MLP residual blocks with side mask/rotary inputs.

    Node names: ``b{i}.q``/``k``/``v``/``qk``/``pv``/``o``/``add1``/``gate``/``up``/``down``/``add2``.
    Returns (builder, output name).
    """
    g = G(seed=seed, d=d)
    x = g.input("x", [1, 4, d])
    g.input("attention_mask", [1, 4])
    h = g.op("Mul", [x, g.weight(arr=np.array(1.5, np.float32))], name="embed_scale")
    if mask:
        m = g.op("Sub", [g.weight(arr=np.array(1.0, np.float32)), "attention_mask"], name="mask.sub")
        m = g.op("Mul", [m, g.weight(arr=np.array(-1e4, np.float32))], name="mask.mul")
        m = g.op("Unsqueeze", [m, g.weight(arr=np.array([1], np.int64))], name="mask.unsq")
    if rotary:
        s = g.op("Shape", [x], name="rot.shape")
        n = g.op("Gather", [s, g.weight(arr=np.array(1, np.int64))], name="rot.seqlen", axis=0)
        r = g.op("Range", [g.weight(arr=np.array(0, np.int64)), n, g.weight(arr=np.array(1, np.int64))], name="rot.range")
        r = g.op("Cast", [r], name="rot.cast", to=TensorProto.FLOAT)
        r = g.op("Unsqueeze", [r, g.weight(arr=np.array([1], np.int64))], name="rot.unsq")
        f = g.op("Mul", [r, g.weight(arr=np.linspace(0.1, 1, d).astype(np.float32))], name="rot.freqs")
        cos = g.op("Cos", [f], name="rot.cos")
    for i in range(n_blocks):
        p = f"b{i}."
        nrm = g.op("Mul", [h, g.weight(arr=np.ones(d, np.float32))], name=p + "norm1")
        q = g.mm(nrm, name=p + "q")
        k = g.mm(nrm, name=p + "k")
        v = g.mm(nrm, name=p + "v")
        if rotary:
            q = g.op("Mul", [q, cos], name=p + "rot_q")
            k = g.op("Mul", [k, cos], name=p + "rot_k")
        kt = g.op("Transpose", [k], name=p + "kT", perm=[0, 2, 1])
        s_ = g.op("MatMul", [q, kt], name=p + "qk")
        if mask:
            s_ = g.op("Add", [s_, m], name=p + "mask_add")
        a = g.op("Softmax", [s_], name=p + "softmax", axis=-1)
        o = g.op("MatMul", [a, v], name=p + "pv")
        if shape_chain:
            sh = g.op("Shape", [h], name=p + "shape")
            o = g.op("Reshape", [o, sh], name=p + "reshape")
        o = g.mm(o, name=p + "o")
        h = g.op("Add", [h, o], name=p + "add1")
        nrm = g.op("Mul", [h, g.weight(arr=np.ones(d, np.float32))], name=p + "norm2")
        gt = g.mm(nrm, name=p + "gate")
        up = g.mm(nrm, name=p + "up")
        act = g.op("Mul", [g.op("Sigmoid", [gt], name=p + "sig"), up], name=p + "glu")
        dn = g.mm(act, name=p + "down")
        h = g.op("Add", [h, dn], name=p + "add2")
    return g, h


# ---------------------------------------------------------------------------------------------
# large synthetic graphs built directly with onnx_ir (fast enough for 1M nodes)


def synthetic_transformer(n_nodes: int, seed: int = 0) -> ir.Model:
    """Transformer-like graph with about ``n_nodes`` nodes: pre-norm residual blocks (attention +
    gated MLP), a side mask and a side rotary table read by every block, a Shape->Gather->Concat
    chain per block feeding a Reshape. Weights are tiny shared tensors (only the structure matters)."""
    rng = np.random.default_rng(seed)
    d = 4
    wt = ir.tensor(rng.standard_normal((d, d)).astype(np.float32))
    vec = ir.tensor(np.ones(d, np.float32))
    i64 = ir.tensor(np.array([-1], np.int64))
    inits: list[ir.Value] = []
    nodes: list[ir.Node] = []
    counter = [0]

    def const(t):
        counter[0] += 1
        v = ir.Value(name=f"c{counter[0]}", const_value=t, type=ir.TensorType(t.dtype), shape=ir.Shape(t.shape))
        inits.append(v)
        return v

    def op(op_type, inputs, **attrs):
        counter[0] += 1
        n = ir.Node("", op_type, inputs, attributes=[ir.AttrInt64(k, v) if isinstance(v, int) else ir.AttrInt64s(k, v)
                                                     for k, v in attrs.items()], name=f"n{counter[0]}")
        n.outputs[0].name = f"v{counter[0]}"
        nodes.append(n)
        return n.outputs[0]

    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1, 4, d]))
    am = ir.Value(name="attention_mask", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1, 4]))
    h = op("Mul", [x, const(vec)])
    m = op("Mul", [op("Sub", [const(vec), am]), const(vec)])
    m = op("Unsqueeze", [m, const(i64)])
    s = op("Shape", [x])
    r = op("Range", [const(i64), op("Gather", [s, const(i64)], axis=0), const(i64)])
    cos = op("Cos", [op("Mul", [op("Cast", [r], to=1), const(vec)])])
    per_block = 27
    n_blocks = max(1, -(-(n_nodes - len(nodes)) // per_block))
    for _ in range(n_blocks):
        nrm = op("Mul", [h, const(vec)])
        q = op("MatMul", [nrm, const(wt)])
        k = op("MatMul", [nrm, const(wt)])
        v = op("MatMul", [nrm, const(wt)])
        q = op("Mul", [q, cos])
        k = op("Mul", [k, cos])
        sc = op("MatMul", [q, op("Transpose", [k], perm=[0, 2, 1])])
        sc = op("Softmax", [op("Add", [sc, m])], axis=-1)
        o = op("MatMul", [sc, v])
        shp = op("Shape", [h])
        tgt = op("Concat", [op("Slice", [shp, const(i64), const(i64)]), const(i64)], axis=0)
        o = op("Reshape", [o, tgt])
        o = op("MatMul", [o, const(wt)])
        h = op("Add", [h, o])
        nrm = op("Mul", [h, const(vec)])
        g_ = op("MatMul", [nrm, const(wt)])
        u = op("MatMul", [nrm, const(wt)])
        a = op("Mul", [op("Sigmoid", [g_]), u])
        a = op("Reshape", [a, op("Shape", [u])])
        dn = op("MatMul", [a, const(wt)])
        h = op("Add", [h, op("Identity", [dn])])
    graph = ir.Graph([x, am], [h], nodes=nodes, initializers=inits, opset_imports={"": 21}, name="synthetic")
    return ir.Model(graph, ir_version=10)


def deep_stack(nblocks: int, d: int = 32, widths=(64, 96, 128), seed: int = 0) -> ir.Model:
    from onnx_ir.passes.common import ShapeInferencePass

    from onnx_amp.passes.partition import PartitionPass

    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for b in range(nblocks):
        h = widths[b % len(widths)]
        inits += [numpy_helper.from_array((rng.standard_normal((d, h)) * 0.1).astype(np.float32), f"w1_{b}"),
                  numpy_helper.from_array((rng.standard_normal((h, d)) * 0.1).astype(np.float32), f"w2_{b}")]
        nodes += [helper.make_node("MatMul", [x, f"w1_{b}"], [f"h{b}"], name=f"mm1_{b}"),
                  helper.make_node("Relu", [f"h{b}"], [f"r{b}"], name=f"relu_{b}"),
                  helper.make_node("MatMul", [f"r{b}", f"w2_{b}"], [f"o{b}"], name=f"mm2_{b}"),
                  helper.make_node("Add", [f"o{b}", x], [f"y{b}"], name=f"add_{b}")]
        x = f"y{b}"
    g = helper.make_graph(nodes, "deep", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", d])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", d])], inits)
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    proto.ir_version = 10
    model = ir.from_proto(proto)
    ShapeInferencePass()(model)
    PartitionPass()(model)
    return model


def random_problem(n_regions: int, n_configs: int, seed: int = 0, formats=("bf16", "fp8_e4m3"), metric_noise=0.3) -> Problem:
    """Seeded random problem with full tables: each region has k = log2(n_configs) units."""
    rng = np.random.default_rng(seed)
    k = max(1, int(round(math.log2(n_configs))))
    hi, lo = (formats[0], formats[0]), (formats[1], formats[1])
    regions = []
    for g in range(n_regions):
        units = [f"U{g * k + j}" for j in range(k)]
        t_unit = rng.uniform(0.1, 1.0, size=k)
        d_unit = rng.lognormal(0.0, 1.5, size=k) * 1e-4
        d_high = rng.uniform(0, 1e-7, size=k)
        configs = []
        for bits in itertools.product([0, 1], repeat=k):
            b = np.array(bits)
            # gains are not additive across units: a random interaction term
            t = float(t_unit @ b) * (1 + metric_noise * rng.standard_normal() * (b.sum() > 1))
            d = float(d_unit @ b + d_high @ (1 - b))
            assign = {u: (lo if x else hi) for u, x in zip(units, bits)}
            configs.append(Config(assign, {"time": t, "tt": float(t_unit @ b), "memory": float(b.sum())}, d))
        regions.append(Region(f"r{g}", units, configs[:n_configs]))
    return Problem(regions, hi, target="synthetic")


def _t(name: str, arr: np.ndarray, dt: int):
    if dt in (T.FLOAT8E4M3FN, T.FLOAT8E5M2, T.BFLOAT16):
        return helper.make_tensor(name, dt, arr.shape, arr.tobytes(), raw=True)
    return numpy_helper.from_array(arr, name)


def _model(nodes, inits, inputs: dict[str, list[int]], y_shape: list[int]):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(k, T.FLOAT, v) for k, v in inputs.items()],
                          [helper.make_tensor_value_info("y", T.FLOAT, y_shape)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    return m


def small_mlp(d: int = 256, h: int = 1024, tokens: int = 64, blocks: int = 2, heads: int = 4, seed: int = 0):
    """x[tokens, d] -> (attention: q/k/v/o MatMul+bias, act-act MatMuls, Softmax) -> blocks x
    (MatMul+bias, Relu, MatMul+bias, residual) -> y[tokens, d]; partitioned ir.Model and feeds."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def lin(name, x, k, n):
        w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"{name}.w"))
        inits.append(numpy_helper.from_array((rng.standard_normal(n) * 0.1).astype(np.float32), f"{name}.b"))
        nodes.append(helper.make_node("MatMul", [x, f"{name}.w"], [f"{name}.mm"], name=f"{name}/MatMul"))
        nodes.append(helper.make_node("Add", [f"{name}.mm", f"{name}.b"], [f"{name}.out"], name=f"{name}/Add"))
        return f"{name}.out"

    dh = d // heads
    inits.append(numpy_helper.from_array(np.array([tokens, heads, dh], np.int64), "hshape"))
    inits.append(numpy_helper.from_array(np.array([tokens, d], np.int64), "dshape"))
    inits.append(numpy_helper.from_array(np.array(1.0 / np.sqrt(dh), np.float32), "att_scale"))
    qkv = []
    for nm in ("q", "k", "v"):
        o = lin(f"attn.{nm}", "x", d, d)
        nodes.append(helper.make_node("Reshape", [o, "hshape"], [f"{nm}.r"]))
        perm = [1, 2, 0] if nm == "k" else [1, 0, 2]
        nodes.append(helper.make_node("Transpose", [f"{nm}.r"], [f"{nm}.t"], perm=perm))
        qkv.append(f"{nm}.t")
    nodes.append(helper.make_node("MatMul", [qkv[0], qkv[1]], ["scores"], name="attn/qk/MatMul"))
    nodes.append(helper.make_node("Mul", ["scores", "att_scale"], ["scores_s"]))
    nodes.append(helper.make_node("Softmax", ["scores_s"], ["probs"], axis=-1))
    nodes.append(helper.make_node("MatMul", ["probs", qkv[2]], ["ctx"], name="attn/pv/MatMul"))
    nodes.append(helper.make_node("Transpose", ["ctx"], ["ctx.t"], perm=[1, 0, 2]))
    nodes.append(helper.make_node("Reshape", ["ctx.t", "dshape"], ["ctx.r"]))
    o = lin("attn.o", "ctx.r", d, d)
    nodes.append(helper.make_node("Add", ["x", o], ["h0"]))
    cur = "h0"
    for i in range(blocks):
        a = lin(f"mlp{i}.up", cur, d, h)
        nodes.append(helper.make_node("Relu", [a], [f"mlp{i}.act"]))
        b = lin(f"mlp{i}.down", f"mlp{i}.act", h, d)
        nodes.append(helper.make_node("Add", [cur, b], [f"h{i + 1}"]))
        cur = f"h{i + 1}"
    nodes.append(helper.make_node("Identity", [cur], ["y"]))
    m = _model(nodes, inits, {"x": [tokens, d]}, [tokens, d])
    feeds = {"x": rng.standard_normal((tokens, d)).astype(np.float32)}
    return _partitioned(m), feeds


def small_convnet(c: int = 64, size: int = 56, seed: int = 0):
    """pixels[1,3,size,size] -> Conv3x3 s1 (3->c), Relu, Conv3x3 (c->c), Relu, depthwise 3x3, Relu,
    Conv1x1 (c->2c), Relu, GlobalAveragePool, Flatten, Gemm (2c->10); partitioned ir.Model and feeds."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def conv(name, x, cin, cout, k, group=1):
        w = (rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / (cin // group * k * k))).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"{name}.w"),
                      numpy_helper.from_array((rng.standard_normal(cout) * 0.1).astype(np.float32), f"{name}.b")])
        nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [f"{name}.out"], name=f"{name}/Conv",
                                      pads=[k // 2] * 4, group=group))
        nodes.append(helper.make_node("Relu", [f"{name}.out"], [f"{name}.act"]))
        return f"{name}.act"

    x = conv("stem", "x", 3, c, 3)
    x = conv("conv1", x, c, c, 3)
    x = conv("dw", x, c, c, 3, group=c)
    x = conv("pw", x, c, 2 * c, 1)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    inits.extend([numpy_helper.from_array((rng.standard_normal((10, 2 * c)) * 0.1).astype(np.float32), "fc.w"),
                  numpy_helper.from_array(np.zeros(10, np.float32), "fc.b")])
    nodes.append(helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["y"], name="fc/Gemm", transB=1))
    m = _model(nodes, inits, {"x": [1, 3, size, size]}, [1, 10])
    feeds = {"x": rng.standard_normal((1, 3, size, size)).astype(np.float32)}
    return _partitioned(m), feeds


def _partitioned(proto) -> ir.Model:
    from onnx_amp.passes.partition import PartitionPass

    model = ir.from_proto(proto)
    PartitionPass()(model)
    return model


def annotate_amax(model: ir.Model, feeds: dict[str, np.ndarray]) -> int:
    """``onnx_amp.amax.a/.b/.y/.w`` of every layer from one FP32 run (ORT) on ``feeds``: a stand-in for
    calibration on hand-built models. In place; returns layers annotated."""
    from onnx_amp.core import annotations as A
    from onnx_amp.runtime.ort_session import make_session, run
    from onnx_amp.runtime.profile import annotate_amax_from_run

    m = model.clone()
    known = {v.name for v in m.graph.outputs} | set(feeds)
    for n in [n for n in m.graph if A.LAYER in n.metadata_props]:
        for v in list(n.inputs[:2]) + [n.outputs[0]]:
            if v is not None and v.name not in known and v.const_value is None and v.producer() is not None:
                m.graph.outputs.append(v)
                known.add(v.name)
    values = dict(feeds)
    values.update(run(make_session(m, optimize=False), feeds))
    return annotate_amax_from_run(model, values, overwrite=True)


def lowered(model: ir.Model, w: str, a: str, lowering: dict) -> ir.Model:
    from onnx_amp.passes.plan import ApplyPlanPass, uniform_plan
    from onnx_amp.passes.rewrite import rewrite

    m = model.clone()
    ApplyPlanPass(uniform_plan(m, w, a))(m)
    out, _ = rewrite(m, "emulate", **lowering)
    return out


def _with_plan(model: ir.Model, w: str, a: str) -> ir.Model:
    from onnx_amp.passes.plan import ApplyPlanPass, uniform_plan

    m = model.clone()
    ApplyPlanPass(uniform_plan(m, w, a))(m)
    return m
