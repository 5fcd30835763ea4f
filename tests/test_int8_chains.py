"""INT8 chains: tensors between INT8 layers stay quantized, ONNX Runtime fuses whole chains
(QLinearConv into QLinearAdd into int8 pooling), and no float path sees new rounding."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh

from onnx_amp.core import annotations as A
from onnx_amp.passes.partition import PartitionPass
from onnx_amp.passes.plan import ApplyPlanPass, uniform_plan
from onnx_amp.passes.rewrite import ORT_CPU_LOWERING, rewrite


def resnet(blocks: int = 2, c: int = 16, size: int = 16, tail_float: bool = False) -> ir.Model:
    """stem Conv+Relu, MaxPool, ``blocks`` x (Conv+Relu, Conv, Add(skip), Relu), GAP, Flatten, Gemm.
    ``tail_float``: the last block's output also feeds a float op (Sigmoid) that is a graph output."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []

    def conv(name, x, cin, cout, k=3, relu=True):
        w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
        inits.extend([nh.from_array(w, f"{name}.w"), nh.from_array((rng.standard_normal(cout) * 0.05).astype(np.float32),
                                                                  f"{name}.b")])
        nodes.append(h.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [f"{name}.y"], name=name, pads=[k // 2] * 4))
        if not relu:
            return f"{name}.y"
        nodes.append(h.make_node("Relu", [f"{name}.y"], [f"{name}.r"], name=f"{name}/relu"))
        return f"{name}.r"

    x = conv("stem", "x", 3, c)
    nodes.append(h.make_node("MaxPool", [x], ["pool"], kernel_shape=[2, 2], strides=[2, 2], name="maxpool"))
    x = "pool"
    for b in range(blocks):
        y = conv(f"b{b}.c1", x, c, c)
        y = conv(f"b{b}.c2", y, c, c, relu=False)
        nodes += [h.make_node("Add", [x, y], [f"b{b}.sum"], name=f"b{b}/add"),
                  h.make_node("Relu", [f"b{b}.sum"], [f"b{b}.out"], name=f"b{b}/relu")]
        x = f"b{b}.out"
    outputs = [h.make_tensor_value_info("logits", TP.FLOAT, ["B", 10])]
    if tail_float:
        nodes.append(h.make_node("Sigmoid", [x], ["gate"], name="gate"))
        outputs.append(h.make_tensor_value_info("gate", TP.FLOAT, None))
    inits.extend([nh.from_array((rng.standard_normal((10, c)) * 0.3).astype(np.float32), "fc.w"),
                  nh.from_array(np.zeros(10, np.float32), "fc.b")])
    nodes += [h.make_node("GlobalAveragePool", [x], ["gap"], name="gap"), h.make_node("Flatten", ["gap"], ["flat"]),
              h.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1)]
    g = h.make_graph(nodes, "resnet", [h.make_tensor_value_info("x", TP.FLOAT, ["B", 3, size, size])], outputs, inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 21)])
    m.ir_version = 10
    return ir.from_proto(onnx.shape_inference.infer_shapes(m))


def int8(model: ir.Model, feeds, ranges: bool = True) -> ir.Model:
    from onnx_amp.runtime.ranges import record_ranges
    from onnx_amp.tools.synthetic import annotate_amax

    PartitionPass()(model)
    annotate_amax(model, feeds)
    if ranges:
        record_ranges(model, [feeds])
    ApplyPlanPass(uniform_plan(model, "int8", "int8"))(model)
    return model


def fused_ops(model: ir.Model, tmp_path, name: str) -> dict[str, int]:
    """Op counts of ONNX Runtime's optimized graph (what really ran)."""
    from onnx_amp.runtime.ort_session import make_session

    path = tmp_path / f"{name}.opt.onnx"
    make_session(model, optimized_model_filepath=str(path))
    counts: dict[str, int] = {}
    for n in onnx.load(str(path)).graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


@pytest.fixture(scope="module")
def feeds():
    return {"x": np.random.default_rng(1).standard_normal((4, 3, 16, 16)).astype(np.float32)}


def test_chains_fuse_the_whole_network(feeds, tmp_path):
    model = int8(resnet(), feeds)
    assert ORT_CPU_LOWERING["int8_chains"], "the CPU target ships the chained lowering"
    per_layer, _ = rewrite(model, "emulate", **dict(ORT_CPU_LOWERING, int8_chains=False))
    chained, rep = rewrite(model, "emulate", **ORT_CPU_LOWERING)
    before, after = fused_ops(per_layer, tmp_path, "per_layer"), fused_ops(chained, tmp_path, "chained")
    assert after.get("QLinearConv", 0) == 5 and after.get("QLinearAdd", 0) == 2, after
    assert after.get("QGemm", 0) == 1 and after.get("QLinearGlobalAveragePool", 0) == 1, after  # int32 bias
    assert after.get("QLinearAdd", 0) > before.get("QLinearAdd", 0)
    assert not any(op in after for op in ("Relu", "Add", "Conv", "MaxPool", "GlobalAveragePool")), after
    assert any("Relu/Clip folded" in n for n in rep.notes)


def test_without_recorded_ranges_the_tail_stays_float(feeds, tmp_path):
    """The last residual Add feeds only pooling: no INT8 layer reads it, so without a recorded range
    it stays float; every skip path then has a float consumer, so the residual chain stays float
    (correct, slower); only the Conv -> Relu -> Conv inside each block still fuses."""
    model = int8(resnet(), feeds, ranges=False)
    chained, _ = rewrite(model, "emulate", **dict(ORT_CPU_LOWERING, int8_chains=True))
    ops = fused_ops(chained, tmp_path, "no_ranges")
    assert ops.get("QLinearAdd", 0) == 0, ops  # the Adds run in float (ORT fuses them into FusedConv)
    assert ops.get("QLinearConv", 0) >= 2, ops


def test_chains_change_no_rounding_the_layers_did_not_already_do(feeds):
    """Every INT8 layer reads the same quantized values as in the per-layer lowering; only the
    skip paths into the Adds now carry the rounding their tensor already has."""
    from onnx_amp.runtime.ort_session import make_session, run

    model = int8(resnet(), feeds)
    ref = run(make_session(model.clone()), feeds)["logits"]
    per_layer, _ = rewrite(model, "emulate", **dict(ORT_CPU_LOWERING, int8_chains=False))
    chained, _ = rewrite(model, "emulate", **dict(ORT_CPU_LOWERING, int8_chains=True))
    a = run(make_session(per_layer, exact_qdq=True), feeds)["logits"]
    b = run(make_session(chained, exact_qdq=True), feeds)["logits"]
    scale = np.abs(ref).max()
    assert np.abs(b - ref).max() / scale < 0.05  # INT8-close to FP32
    assert np.abs(b - a).max() / scale < 0.05  # and to the per-layer lowering
    # the fused kernels compute the same Q/DQ graph as its unfused math
    c = run(make_session(chained), feeds)["logits"]
    assert np.abs(c - b).max() / scale < 0.02


def test_a_tensor_with_a_float_consumer_stays_float(feeds, tmp_path):
    model = int8(resnet(tail_float=True), feeds)
    chained, _ = rewrite(model, "emulate", **dict(ORT_CPU_LOWERING, int8_chains=True))
    last_relu_out = "b1.out"
    # the float Sigmoid (a graph output) still reads the float tensor, not a dequantized one
    gate = next(n for n in chained.graph if n.name == "gate")
    assert gate.inputs[0].name == last_relu_out
    prod = gate.inputs[0].producer()
    assert prod is not None and prod.op_type == "Relu"
    from onnx_amp.runtime.ort_session import make_session, run

    ref = run(make_session(model.clone()), feeds)["gate"]
    per_layer, _ = rewrite(model, "emulate", **dict(ORT_CPU_LOWERING, int8_chains=False))
    err_chained = np.abs(run(make_session(chained, exact_qdq=True), feeds)["gate"] - ref).max()
    err_per_layer = np.abs(run(make_session(per_layer, exact_qdq=True), feeds)["gate"] - ref).max()
    # the float path carries what the INT8 layers' rounding (and, as without chains, the INT8 Conv's
    # own output Q) gives it, and nothing more
    assert err_chained <= 1.5 * err_per_layer + 1e-3, (err_chained, err_per_layer)
    assert A.REWRITE in chained.metadata_props


def test_the_fusion_report_counts_every_layer_ort_fused(feeds):
    """The run's executed-precision check on ORT: with chains every INT8 layer is an integer kernel;
    the per-layer lowering leaves the head Gemm in float, and the report names it."""
    from onnx_amp.runtime.backends import get_backend

    model = int8(resnet(), feeds)
    ort = get_backend("ort_cpu")
    chained, _ = rewrite(model, "emulate", **dict(ORT_CPU_LOWERING, int8_chains=True))
    rep = ort.fused_int8(model, chained)
    assert rep["int8_planned"] == 6 and rep["executed"]["int8"] == 6 and not rep["mismatches"], rep["text"]
    per_layer, _ = rewrite(model, "emulate", **dict(ORT_CPU_LOWERING, int8_chains=False))
    rep = ort.fused_int8(model, per_layer)
    assert [m["node"] for m in rep["mismatches"]] == ["fc"], rep["text"]
