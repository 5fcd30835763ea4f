"""RewritePass on small seeded graphs (MatMul, Gemm, Conv, attention act-act) and a real model:
every format passes onnx.checker, runs in ORT and matches the torch fake-quant emulation."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh

from onnx_amp.passes import annotations as A
from onnx_amp.passes.partition import PartitionPass
from onnx_amp.passes.plan import ApplyPlanPass, Plan, uniform_plan
from onnx_amp.passes.rewrite import INSERTED_BY, INSERTED_FOR, RewritePass, check_model
from onnx_amp.runtime import fakequant as FQ
from onnx_amp.runtime.onnx_io import OnnxAmpError
from onnx_amp.runtime.ort_session import make_session, run
from onnx_amp.runtime.torch_graph import TorchGraph

FORMATS = ["fp32", "bf16", "fp16", "fp8_e4m3", "fp8_e5m2", "int8"]


def _model(opset: int = 18) -> ir.Model:
    """x[B,T,D] -> q/k/v MatMuls (shared input) -> QK^T -> softmax -> PV -> out MatMul -> + x
    -> Gemm(transB, bias) on the first token -> Conv over a reshaped view. Seeded weights."""
    g = np.random.default_rng(0)
    B, T, D = 2, 8, 16
    f = lambda *s: (g.standard_normal(s) * 0.3).astype(np.float32)  # noqa: E731
    inits = [nh.from_array(f(D, D), n) for n in ("wq", "wk", "wv", "wo")]
    inits += [nh.from_array(f(12, D), "wg"), nh.from_array(f(12), "bg"),
              nh.from_array(f(4, 2, 3, 3), "wc"), nh.from_array(f(4), "bc"),
              nh.from_array(np.array([0, 2, 8, 8], np.int64), "cshape"),
              nh.from_array(np.array([1], np.int64), "one"), nh.from_array(np.array([0], np.int64), "zero"),
              nh.from_array(np.array(0.25, np.float32), "sc")]
    nodes = [
        h.make_node("MatMul", ["x", "wq"], ["q"], name="q_proj"),
        h.make_node("MatMul", ["x", "wk"], ["k"], name="k_proj"),
        h.make_node("MatMul", ["x", "wv"], ["v"], name="v_proj"),
        h.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1], name="kt"),
        h.make_node("MatMul", ["q", "kt"], ["s"], name="qk"),
        h.make_node("Mul", ["s", "sc"], ["s2"], name="scale"),
        h.make_node("Softmax", ["s2"], ["p"], axis=-1, name="softmax"),
        h.make_node("MatMul", ["p", "v"], ["o"], name="pv"),
        h.make_node("MatMul", ["o", "wo"], ["o2"], name="o_proj"),
        h.make_node("Add", ["o2", "x"], ["r"], name="resid"),
        h.make_node("Slice", ["r", "zero", "one", "one"], ["r0"], name="first_tok"),
        h.make_node("Squeeze", ["r0", "one"], ["r1"], name="squeeze"),
        h.make_node("Gemm", ["r1", "wg", "bg"], ["yg"], transB=1, name="head"),
        h.make_node("Reshape", ["r", "cshape"], ["img"], name="to_img"),
        h.make_node("Conv", ["img", "wc", "bc"], ["yc"], pads=[1, 1, 1, 1], name="conv"),
    ]
    graph = h.make_graph(nodes, "tiny", [h.make_tensor_value_info("x", TP.FLOAT, [B, T, D])],
                         [h.make_tensor_value_info("yg", TP.FLOAT, [B, 12]),
                          h.make_tensor_value_info("yc", TP.FLOAT, [B, 4, 8, 8])], inits)
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 9
    m.graph.node[0].metadata_props.add(key="pkg.torch.onnx.name_scopes", value="['', 'attn', 'q_proj']")
    model = ir.from_proto(m)
    PartitionPass()(model)
    return model


def _feeds(seed: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((2, 8, 16)).astype(np.float32)}


def _calibrate_amax(model: ir.Model, feeds) -> None:
    """Per-tensor amax of every layer operand and output from one torch run (what calibrate writes)."""
    amax: dict = {}

    def op_hook(node, j, t):
        amax[(node.name, j)] = max(amax.get((node.name, j), 0.0), float(t.abs().max()))
        return t

    def out_hook(node, j, t):
        amax[(node.name, "y")] = float(t.abs().max())
        return t

    TorchGraph(model)({k: torch.from_numpy(v) for k, v in feeds.items()}, operand_hook=op_hook, output_hook=out_hook)
    for n in A.layer_nodes(model.graph):
        if n.metadata_props[A.LAYER_KIND] == "act_act":
            n.metadata_props[A.AMAX_A] = repr(amax[(n.name, 0)])
            n.metadata_props[A.AMAX_B] = repr(amax[(n.name, 1)])
        else:
            wi = int(n.metadata_props[A.WEIGHT_INPUT])
            n.metadata_props[A.AMAX_A] = repr(amax[(n.name, 1 - wi)] * 0.8)  # some saturation, on purpose
        n.metadata_props["onnx_amp.amax.y"] = repr(amax[(n.name, "y")])


@pytest.fixture(scope="module")
def calibrated():
    m = _model()
    _calibrate_amax(m, _feeds())
    return m


def _planned(model, w, a=None, **kw):
    m = model.clone()
    ApplyPlanPass(uniform_plan(m, w, a or w, **kw))(m)
    return m


def test_partition_marks_layers(calibrated):
    kinds = {n.name: n.metadata_props[A.LAYER_KIND] for n in A.layer_nodes(calibrated.graph)}
    assert kinds == {"q_proj": "weight", "k_proj": "weight", "v_proj": "weight", "qk": "act_act", "pv": "act_act",
                     "o_proj": "weight", "head": "weight", "conv": "weight"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_emulate_matches_torch_fakequant(calibrated, fmt):
    m = _planned(calibrated, fmt)
    out = RewritePass("emulate")(m).model
    check_model(out)
    feeds = _feeds(2)
    # exact_qdq: INT8 unfused (ORT's fused u8s8 kernels saturate on AVX2 CPUs, see
    # test_int8_fuses_into_integer_kernels); FP8 sessions are always unfused
    y_ort = run(make_session(out, exact_qdq=True), feeds)
    oh, yh = FQ.emulate_plan_hooks(m)
    with torch.no_grad():
        y_t = TorchGraph(m)({"x": torch.from_numpy(feeds["x"])}, operand_hook=oh, output_hook=yh)
        y_ref = TorchGraph(m)({"x": torch.from_numpy(feeds["x"])})
    for k in ("yg", "yc"):
        ref = y_ref[k].numpy()
        err_q = np.abs(y_ort[k] - ref).max()
        err_emul = np.abs(y_ort[k] - y_t[k].numpy()).max()
        # ORT and torch sum in different orders (~1e-6); a rounding-boundary flip moves one element by
        # one quantization step at most, far below the format's own error
        assert err_emul <= max(1e-4, 0.02 * err_q), (fmt, k, err_emul, err_q)
        if fmt == "fp32":
            assert err_q < 1e-4
        else:
            assert err_q > 1e-5, f"{fmt} lowering changed nothing"
    ops = Counter(n.op_type for n in out.graph)
    if fmt in ("fp8_e4m3", "fp8_e5m2", "int8"):
        # 6 weight layers (W: DQ only) + 2 act-act layers (2 operands each): 5 activation Q (q/k/v each own one)
        assert ops["QuantizeLinear"] == 6 + 4 and ops["DequantizeLinear"] == 6 + 6 + 4
    if fmt == "fp32":
        assert ops == Counter(n.op_type for n in calibrated.graph)


def test_bf16_cast_counts(calibrated):
    out = RewritePass("emulate")(_planned(calibrated, "bf16")).model
    casts = [n for n in out.graph if n.op_type == "Cast"]
    # activations: x (shared by q/k/v: one pair), q, kt, p, v, o, r1, img -> 8 pairs; 6 weights: one Cast each
    assert len(casts) == 8 * 2 + 6
    w_bf16 = [v for v in out.graph.initializers.values() if v.dtype == ir.DataType.BFLOAT16]
    assert len(w_bf16) == 6


def test_fp8_bitexact_single_operand():
    """One Q->DQ in ORT == fake_quant in torch, bit for bit, incl. saturation, subnormals, ties."""
    g = np.random.default_rng(3)
    x = np.concatenate([g.standard_normal(4000) * 3, [0.0, -0.0, 1e-9, 600.0, -1e5, 448.0 * 0.01 * 1.03125]]).astype(np.float32)
    for fmt, dt in [("fp8_e4m3", TP.FLOAT8E4M3FN), ("fp8_e5m2", TP.FLOAT8E5M2), ("int8", TP.INT8)]:
        scale = np.float32(0.01)
        zp = h.make_tensor("zp", dt, [], [0])
        graph = h.make_graph([h.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"]),
                              h.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"])], "g",
                             [h.make_tensor_value_info("x", TP.FLOAT, [x.size])],
                             [h.make_tensor_value_info("y", TP.FLOAT, [x.size])], [nh.from_array(scale, "s"), zp])
        m = h.make_model(graph, opset_imports=[h.make_opsetid("", 21)])
        m.ir_version = 10
        y = run(make_session(ir.from_proto(m)), {"x": x})["y"]
        yt = FQ.fake_quant(torch.from_numpy(x), fmt, float(scale)).numpy()
        np.testing.assert_array_equal(y, yt, err_msg=fmt)


def test_cast_emulate_bitexact():
    x = np.random.default_rng(4).standard_normal(5000).astype(np.float32) * 100
    for fmt, dt in [("bf16", TP.BFLOAT16), ("fp16", TP.FLOAT16)]:
        graph = h.make_graph([h.make_node("Cast", ["x"], ["c"], to=dt), h.make_node("Cast", ["c"], ["y"], to=TP.FLOAT)],
                             "g", [h.make_tensor_value_info("x", TP.FLOAT, [x.size])],
                             [h.make_tensor_value_info("y", TP.FLOAT, [x.size])])
        m = h.make_model(graph, opset_imports=[h.make_opsetid("", 21)])
        m.ir_version = 10
        y = run(make_session(ir.from_proto(m)), {"x": x})["y"]
        np.testing.assert_array_equal(y, FQ.cast_emulate(torch.from_numpy(x), fmt).numpy(), err_msg=fmt)


def test_weights_stored_quantized_per_channel(calibrated):
    out = RewritePass("emulate")(_planned(calibrated, "int8")).model
    wq = out.graph.initializers["wq/int8_q"]
    assert wq.dtype == ir.DataType.INT8 and "wq" not in out.graph.initializers  # fp32 original dropped
    arr = wq.const_value.numpy()
    assert np.abs(arr).max(axis=0).tolist() == [127] * 16  # each output channel (axis 1) uses full range
    dq = wq.uses()[0].node
    assert dq.op_type == "DequantizeLinear" and dq.attributes["axis"].value == 1
    conv_w = out.graph.initializers["wc/int8_q"].uses()[0].node
    assert conv_w.attributes["axis"].value == 0
    gemm_w = out.graph.initializers["wg/int8_q"].uses()[0].node  # Gemm transB=1: W[N,K] -> axis 0
    assert gemm_w.attributes["axis"].value == 0
    # reduce_range: 7-bit weights
    out7 = RewritePass("emulate", reduce_range=True)(_planned(calibrated, "int8")).model
    assert np.abs(out7.graph.initializers["wq/int8_q"].const_value.numpy()).max() == 63


def test_input_not_mutated_and_metadata_survives(calibrated):
    m = _planned(calibrated, "fp8_e4m3")
    before = ir.to_proto(m).SerializeToString()
    out = RewritePass("emulate")(m).model
    assert ir.to_proto(m).SerializeToString() == before
    assert out.opset_imports[""] == 21 and m.opset_imports[""] == 18  # FP8 Q/DQ needs opset >= 19
    nodes = {n.name: n for n in out.graph}
    for name, n in nodes.items():
        if name in {x.name for x in m.graph}:
            assert dict(n.metadata_props) == dict({x.name: x for x in m.graph}[name].metadata_props)
    inserted = [n for n in out.graph if n.metadata_props.get(INSERTED_BY) == "rewrite"]
    assert inserted and all(A.REGION in n.metadata_props and A.PRECISION in n.metadata_props for n in inserted)
    assert all(A.LAYER not in n.metadata_props for n in inserted)  # never mistaken for layers
    q_ins = [n for n in inserted if n.metadata_props[INSERTED_FOR] == "L0"]
    assert q_ins and all(n.metadata_props.get("pkg.torch.onnx.name_scopes") == "['', 'attn', 'q_proj']" for n in q_ins)
    assert A.layer_nodes(out.graph) and len(A.layer_nodes(out.graph)) == 8
    # metadata survives a save/load round trip
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.onnx"
        ir.save(out, p)
        back = ir.load(p)
        assert sum(1 for n in back.graph if n.metadata_props.get(INSERTED_BY)) == len(inserted)


def test_mixed_plan_units_and_layer_override(calibrated):
    m = calibrated.clone()
    units = {n.metadata_props[A.LAYER]: n.metadata_props[A.UNIT] for n in A.layer_nodes(m.graph)}
    plan = Plan(units={units["L0"]: ("int8", "int8"), units["L3"]: ("bf16", "bf16"),
                       "L7": ("fp8_e5m2", "fp8_e4m3")})
    ApplyPlanPass(plan)(m)
    prec = {n.name: n.metadata_props[A.PRECISION] for n in A.layer_nodes(m.graph)}
    assert prec["q_proj"] == prec["k_proj"] == prec["v_proj"] == "w=int8,a=int8"  # q/k/v: one unit
    assert prec["conv"] == "w=fp8_e5m2,a=fp8_e4m3" and prec["head"] == "w=fp32,a=fp32"
    out = RewritePass("emulate")(m).model
    check_model(out)
    feeds = _feeds(5)
    oh, yh = FQ.emulate_plan_hooks(m)
    y_t = TorchGraph(m)({"x": torch.from_numpy(feeds["x"])}, operand_hook=oh, output_hook=yh)
    y = run(make_session(out, exact_qdq=True), feeds)
    for k in ("yg", "yc"):
        assert np.abs(y[k] - y_t[k].numpy()).max() < 1e-3


def test_int8_output_q_layout(calibrated):
    m = _planned(calibrated, "int8")
    out = RewritePass("emulate", int8_output_q=True)(m).model
    check_model(out)
    mm = next(n for n in out.graph if n.name == "o_proj")
    q = mm.outputs[0].uses()
    assert len(q) == 1 and q[0].node.op_type == "QuantizeLinear"
    # emulation with the output hook matches ORT without fusions (to the rounding-flip floor)
    feeds = _feeds(6)
    y_t, floor = _flip_floor(m, feeds, FQ.emulate_plan_hooks(m, int8_output_q=True))
    y = run(make_session(out, exact_qdq=True), feeds)
    for k in ("yg", "yc"):
        err = np.abs(y[k] - y_t[k].numpy()).max()
        assert err <= max(3 * floor[k], 1e-4), (k, err, floor)
    # without amax.y: output Q omitted, noted
    m2 = m.clone()
    for n in A.layer_nodes(m2.graph):
        del n.metadata_props["onnx_amp.amax.y"]
    p = RewritePass("emulate", int8_output_q=True)
    out2 = p(m2).model
    assert any("output Q omitted" in s for s in p.report.notes)
    assert sum(n.op_type == "QuantizeLinear" for n in out2.graph) < sum(n.op_type == "QuantizeLinear" for n in out.graph)


def test_cpu_target_lowering_conv_output_q_and_u8_layout(calibrated):
    """ORT_CPU_LOWERING's per-layer part (the chains, tests/test_int8_chains.py, run on top of it): output
    Q on Conv only, u8 activations with one DQ per consumer; same numbers as the plain int8 emulation."""
    from onnx_amp.passes.rewrite import ORT_CPU_LOWERING

    m = _planned(calibrated, "int8")
    out = RewritePass("emulate", **dict(ORT_CPU_LOWERING, int8_chains=False))(m).model
    check_model(out)
    by_name = {n.name: n for n in out.graph}
    conv_uses = by_name["conv"].outputs[0].uses()
    assert len(conv_uses) == 1 and conv_uses[0].node.op_type == "QuantizeLinear"
    assert all(u.node.op_type != "QuantizeLinear" for u in by_name["o_proj"].outputs[0].uses())
    act_q = [n for n in out.graph if n.op_type == "QuantizeLinear" and n.inputs[0].const_value is None]
    assert act_q and all(n.outputs[0].dtype == ir.DataType.UINT8 for n in act_q)
    for dq in (n for n in out.graph if n.op_type == "DequantizeLinear"):
        assert len(dq.outputs[0].uses()) <= 1, dq.name
    feeds = _feeds(7)
    y = run(make_session(out, exact_qdq=True), feeds)
    y_t, floor = _flip_floor(m, feeds, FQ.emulate_plan_hooks(m, int8_output_q="conv"))
    for k in ("yg", "yc"):
        assert np.abs(y[k] - y_t[k].numpy()).max() <= max(3 * floor[k], 1e-4), k
    with pytest.raises(OnnxAmpError):
        RewritePass("emulate", int8_output_q="matmul")


@pytest.mark.parametrize("fmt", FORMATS)
def test_deploy_form_passes_checker(calibrated, fmt):
    out = RewritePass("deploy")(_planned(calibrated, fmt)).model
    check_model(out)  # full check: strict shape/type inference
    if fmt in ("bf16", "fp16"):
        mm = next(n for n in out.graph if n.name == "o_proj")
        assert mm.inputs[1].dtype == FQ.get_format(fmt).onnx_dtype and mm.outputs[0].dtype == FQ.get_format(fmt).onnx_dtype
        assert out.graph.initializers["wo/" + fmt].dtype == FQ.get_format(fmt).onnx_dtype
        gemm = next(n for n in out.graph if n.name == "head")
        assert gemm.inputs[2].dtype == FQ.get_format(fmt).onnx_dtype  # bias cast too
        assert [v.dtype for v in out.graph.outputs] == [ir.DataType.FLOAT, ir.DataType.FLOAT]
        assert [v.name for v in out.graph.outputs] == ["yg", "yc"]
    if fmt == "fp16":  # ORT CPU has fp16 MatMul/Gemm/Conv kernels: it runs, close to emulate
        y = run(make_session(out), _feeds(7))
        y_em = run(make_session(RewritePass("emulate")(_planned(calibrated, fmt)).model), _feeds(7))
        assert np.abs(y["yg"] - y_em["yg"]).max() < 0.05
    if fmt == "bf16":  # no bf16 MatMul kernel on ORT CPU: loads fail, clearly
        with pytest.raises(OnnxAmpError, match="MatMul"):
            make_session(out)


def test_errors(calibrated):
    m = calibrated.clone()
    with pytest.raises(OnnxAmpError, match="no onnx_amp.precision"):
        RewritePass("emulate")(m)
    m2 = _planned(calibrated, "int8")
    for n in A.layer_nodes(m2.graph):
        n.metadata_props.pop(A.AMAX_A, None)
    with pytest.raises(OnnxAmpError, match="run onnx-amp calibrate first"):
        RewritePass("emulate")(m2)
    bare = ir.from_proto(h.make_model(h.make_graph([h.make_node("Relu", ["x"], ["y"])], "g",
                                                    [h.make_tensor_value_info("x", TP.FLOAT, [2])],
                                                    [h.make_tensor_value_info("y", TP.FLOAT, [2])])))
    with pytest.raises(OnnxAmpError, match="run onnx-amp partition first"):
        RewritePass("emulate")(bare)
    with pytest.raises(OnnxAmpError, match="unknown rewrite form"):
        RewritePass("tensorrt")
    out = RewritePass("emulate")(_planned(calibrated, "int8")).model
    with pytest.raises(OnnxAmpError, match="already rewritten"):
        RewritePass("emulate")(out)


def test_int8_fuses_into_integer_kernels(calibrated, tmp_path):
    out = RewritePass("emulate")(_planned(calibrated, "int8")).model
    opt = tmp_path / "opt.onnx"
    make_session(out, optimized_model_filepath=str(opt))
    ops = Counter(n.op_type for n in onnx.load(str(opt)).graph.node)
    # the 4 transformer MatMuls incl. q/k/v sharing one input, 2 act-act MatMuls, Gemm, Conv
    assert ops["MatMulIntegerToFloat"] + ops["QLinearMatMul"] >= 6, ops
    assert ops["MatMul"] == 0, ops
    # reduce_range: the fused kernels compute the Q/DQ math exactly (no u8s8 int16 saturation)
    out7 = RewritePass("emulate", reduce_range=True)(_planned(calibrated, "int8")).model
    y_fused = run(make_session(out7), _feeds(8))
    y_exact = run(make_session(out7, exact_qdq=True), _feeds(8))
    for k in y_fused:
        assert np.abs(y_fused[k] - y_exact[k]).max() < 1e-3


def _flip_floor(m, feeds, hooks, draws: int = 3):
    """How much the torch emulation itself moves when its layer inputs move by 1e-6 (relative):
    the size of rounding-boundary flips, the floor for comparing two implementations (max over
    a few seeded draws)."""
    oh, yh = hooks
    gen = torch.Generator().manual_seed(0)

    def oh2(node, j, t):
        return oh(node, j, t * (1 + 1e-6 * torch.randn(t.shape, generator=gen)))

    tf = {k: torch.from_numpy(v) for k, v in feeds.items()}
    floor: dict[str, float] = {}
    with torch.no_grad():
        a = TorchGraph(m)(tf, operand_hook=oh, output_hook=yh)
        for _ in range(draws):
            b = TorchGraph(m)(tf, operand_hook=oh2, output_hook=yh)
            for k in a:
                floor[k] = max(floor.get(k, 0.0), float(np.abs(a[k].numpy() - b[k].numpy()).max()))
    return a, floor


@pytest.mark.slow
def test_real_minilm_matches_emulation(tmp_path, minilm_onnx):
    """MiniLM (real export): ORT on the rewritten file vs torch fake-quant of the same plan."""
    path = Path(minilm_onnx)
    from onnx_amp.runtime.onnx_io import load_model, save_model

    model = load_model(path)
    PartitionPass()(model)
    g = np.random.default_rng(0)
    feeds = {"input_ids": g.integers(1000, 20000, (2, 16)).astype(np.int64), "attention_mask": np.ones((2, 16), np.int64)}
    _calibrate_amax(model, feeds)
    tf = {k: torch.from_numpy(v) for k, v in feeds.items()}
    with torch.no_grad():
        y32 = TorchGraph(model)(tf)["logits"].numpy()
    for w, a in [("fp8_e4m3", "fp32"), ("int8", "int8"), ("fp8_e4m3", "fp8_e4m3"), ("bf16", "bf16")]:
        m = _planned(model, w, a, include_act_act=False)
        out = RewritePass("emulate")(m).model
        p = save_model(out, tmp_path / f"{w}_{a}.onnx")
        check_model(p)
        y = run(make_session(p, exact_qdq=True), feeds)["logits"]
        yt, floor = _flip_floor(m, feeds, FQ.emulate_plan_hooks(m))
        err = float(np.abs(y - yt["logits"].numpy()).max())
        qerr = float(np.abs(y - y32).max())
        assert qerr > 1e-4, (w, a)
        if a != "fp32":
            # rounded activations: a 1e-6 nudge flips some roundings and moves the logits by about as
            # much as ORT-vs-torch summation order does; the difference stays within that floor
            assert err <= max(3 * floor["logits"], 1e-4), (w, a, err, floor)
            if a != "bf16":  # bf16's whole error is of the size of its flips (4 logits here)
                assert err < 0.5 * qerr, (w, a, err, qerr)
        else:  # weights-only (quantized offline, identical bits): float summation noise only
            assert err < 1e-4, (w, a, err, qerr)


@pytest.mark.parametrize("w,a", [("fp8_e4m3", "bf16"), ("int8", "fp16"), ("bf16", "fp8_e5m2"), ("fp16", "fp32")])
def test_deploy_mixed_assignments(calibrated, w, a):
    m = calibrated.clone()
    units = sorted({n.metadata_props[A.UNIT] for n in A.layer_nodes(m.graph)})
    ApplyPlanPass(Plan(units={u: (w, a) for u in units}))(m)
    rp = RewritePass("deploy")
    out = rp(m).model
    check_model(out)
    mm = next(n for n in out.graph if n.name == "o_proj")
    sixteen = {f for f in (w, a) if f in ("bf16", "fp16")}
    expect = FQ.get_format(sixteen.pop()).onnx_dtype if sixteen and "fp32" not in (w, a) else ir.DataType.FLOAT
    assert mm.outputs[0].dtype in ((expect, None) if expect == ir.DataType.FLOAT else (expect,))
    if "bf16" in (w, a) and expect == ir.DataType.BFLOAT16:
        assert any("Conv has no bfloat16" in s for s in rp.report.notes)
