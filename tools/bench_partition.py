"""Small graph builder for the partition tests (hand-built ONNX graphs with known answers)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper


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


def main(argv=None) -> int:
    import argparse
    import gc
    import time

    ap = argparse.ArgumentParser(description="Partition time on synthetic transformer-like graphs")
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--repeat", type=int, default=3, help="best-of repeats (1 for the largest)")
    ap.add_argument("--png", default="partition_bench.png")
    args = ap.parse_args(argv)
    from onnx_amp.passes.partition import annotate, partition

    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for n in sizes:
        t0 = time.perf_counter()
        model = synthetic_transformer(n)
        t_build = time.perf_counter() - t0
        nn = len(model.graph)
        reps = args.repeat if n <= 200_000 else 1
        best = best_cpu = float("inf")
        for _ in range(reps):
            t0, c0 = time.perf_counter(), time.process_time()
            part = partition(model)
            best = min(best, time.perf_counter() - t0)
            best_cpu = min(best_cpu, time.process_time() - c0)
        # baseline: one trivial linear pass over the same graph (value->producer map), to separate
        # the algorithm's growth from the memory hierarchy's (bigger heaps, more cache misses)
        gc.disable()
        c0 = time.process_time()
        nodes = list(model.graph)
        prod = {o: i for i, n in enumerate(nodes) for o in n.outputs}
        _ = [[prod.get(v) for v in n.inputs] for n in nodes]
        t_base = time.process_time() - c0
        gc.enable()
        del nodes, prod, _
        t0 = time.perf_counter()
        annotate(model, part)
        t_ann = time.perf_counter() - t0
        rows.append((nn, best, t_ann, len(part.regions), len(part.layers), best_cpu, t_base))
        print(f"built {nn} nodes in {t_build:.1f}s; partition {best:.3f}s wall ({best_cpu:.3f}s CPU), "
              f"annotate {t_ann:.3f}s, {len(part.regions)} regions", flush=True)
        del model, part
    print()
    print(f"{'nodes':>9} {'wall s':>8} {'CPU s':>7} {'CPU us/node':>11} {'annotate s':>10} {'regions':>8} "
          f"{'layers':>8} {'growth':>7} {'base CPU s':>10} {'base growth':>11}")
    for k, (nn, t, ta, nr, nl, tc, tb) in enumerate(rows):
        growth = "" if k == 0 else f"{(tc / rows[k - 1][5]) / (nn / rows[k - 1][0]):.2f}"
        bgrowth = "" if k == 0 else f"{(tb / rows[k - 1][6]) / (nn / rows[k - 1][0]):.2f}"
        print(f"{nn:>9} {t:>8.3f} {tc:>7.3f} {1e6 * tc / nn:>11.2f} {ta:>10.3f} {nr:>8} {nl:>8} {growth:>7} "
              f"{tb:>10.3f} {bgrowth:>11}")
    print("growth = (CPU time ratio) / (node ratio) between consecutive sizes; 1.00 is exactly linear;")
    print("base = one trivial pass (value->producer dict) over the same graph, for the memory-hierarchy share")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        xs = [r[0] for r in rows]
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.loglog(xs, [r[1] for r in rows], "o-", label="partition() wall")
        ax.loglog(xs, [r[5] for r in rows], "^-", label="partition() CPU")
        ax.loglog(xs, [r[1] + r[2] for r in rows], "s--", label="partition + annotate wall")
        ax.loglog(xs, [r[6] for r in rows], "x:", label="trivial pass CPU (baseline)")
        ax.loglog(xs, [rows[0][5] * x / xs[0] for x in xs], ":", color="gray", label="linear")
        ax.axhline(2.0, color="red", lw=0.8, label="2 s")
        ax.set_xlabel("nodes")
        ax.set_ylabel("seconds")
        ax.set_title("onnx-amp partition time (synthetic transformer)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.png, dpi=120)
        print(f"plot: {args.png}")
    except ImportError:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
