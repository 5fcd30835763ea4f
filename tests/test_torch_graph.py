"""The ONNX->torch interpreter against ONNX Runtime on real subjects and on a graph of tricky ops."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, numpy_helper

from onnx_amp.runtime.onnx_io import OnnxAmpError, load_model
from onnx_amp.runtime.torch_graph import TorchGraph


def _ort(path_or_proto, feeds):
    src = path_or_proto if isinstance(path_or_proto, str) else path_or_proto.SerializeToString()
    s = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return {o.name: r for o, r in zip(s.get_outputs(), s.run(None, feeds), strict=False)}


def _compare(model, feeds, ref, atol):
    tg = TorchGraph(model)
    with torch.no_grad():
        out = tg(feeds)
    for name, r in ref.items():
        got = out[name].numpy()
        assert got.shape == r.shape, name
        if r.dtype.kind == "f":
            assert np.abs(got.astype(np.float64) - r).max() <= atol * max(1.0, np.abs(r).max()), name
        else:
            np.testing.assert_array_equal(got, r)


@pytest.mark.slow
def test_paraphrase_onnx_only_matches_ort(paraphrase_onnx, minilm_data):
    feeds = {k: minilm_data[k][:4, :24].copy() for k in ("input_ids", "attention_mask")}
    feeds["attention_mask"][2, 10:] = 0  # padding
    _compare(load_model(paraphrase_onnx), feeds, _ort(str(paraphrase_onnx), feeds), 1e-4)


@pytest.mark.slow
def test_minilm_dynamo_export_matches_ort(minilm_onnx, minilm_data):
    feeds = {k: minilm_data[k][:4] for k in ("input_ids", "attention_mask")}
    _compare(load_model(minilm_onnx), feeds, _ort(str(minilm_onnx), feeds), 1e-4)


@pytest.mark.slow
def test_effnet_matches_ort(effnet_onnx, photo_data):
    feeds = {"pixel_values": photo_data["pixel_values"][:2]}
    _compare(load_model(effnet_onnx), feeds, _ort(str(effnet_onnx), feeds), 1e-4)


def _tricky_model() -> onnx.ModelProto:
    f = TensorProto.FLOAT
    i64 = TensorProto.INT64
    inits = [
        oh.make_tensor("w", f, [4, 3, 3, 3], np.random.default_rng(0).standard_normal(108).astype(np.float32)),
        oh.make_tensor("st", i64, [2], [-1, 5]), oh.make_tensor("en", i64, [2], [-100, 0]),
        oh.make_tensor("ax", i64, [2], [3, 2]), oh.make_tensor("sp", i64, [2], [-2, -1]),
        oh.make_tensor("gi", i64, [2], [-1, 0]), oh.make_tensor("pads", i64, [8], [0, 0, 1, 2, 0, 0, 2, 1]),
        oh.make_tensor("ndi", i64, [2, 2], [0, 1, 1, -1]), oh.make_tensor("split", i64, [2], [1, 3]),
        oh.make_tensor("eshape", i64, [3], [2, 1, 1]),
    ]
    nodes = [
        oh.make_node("Conv", ["x", "w"], ["c"], name="conv_same", auto_pad="SAME_UPPER", strides=[2, 2]),
        oh.make_node("Slice", ["c", "st", "en", "ax", "sp"], ["s"], name="slice_neg"),
        oh.make_node("Gather", ["s", "gi"], ["g"], name="gather_neg", axis=1),
        oh.make_node("Pad", ["x", "pads"], ["p"], name="pad_reflect", mode="reflect"),
        oh.make_node("MaxPool", ["p"], ["mp"], name="maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 0, 1]),
        oh.make_node("AveragePool", ["x"], ["ap"], name="avgpool", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
        oh.make_node("GatherND", ["x", "ndi"], ["nd"], name="gathernd"),
        oh.make_node("Split", ["c", "split"], ["s1", "s2"], name="split", axis=1),
        oh.make_node("Expand", ["s1", "eshape"], ["e"], name="expand"),
        oh.make_node("ReduceMax", ["e"], ["rm"], name="reducemax", keepdims=0),
        oh.make_node("Softmax", ["s2"], ["sm"], name="softmax", axis=1),
        oh.make_node("CumSum", ["sm", "gi1"], ["cs"], name="cumsum", reverse=1, exclusive=1),
    ]
    inits.append(oh.make_tensor("gi1", i64, [], [2]))
    outs = ["g", "mp", "ap", "nd", "rm", "cs"]
    graph = oh.make_graph(nodes, "tricky", [oh.make_tensor_value_info("x", f, [2, 3, 7, 9])],
                          [oh.make_tensor_value_info(o, f, None) for o in outs], inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)], ir_version=9)


def test_tricky_ops_match_ort():
    proto = _tricky_model()
    x = np.random.default_rng(1).standard_normal((2, 3, 7, 9)).astype(np.float32)
    ref = _ort(proto, {"x": x})
    _compare(ir.from_proto(proto), {"x": x}, ref, 1e-5)


def test_operand_hook_sees_and_replaces_layer_operands():
    proto = _tricky_model()
    x = np.random.default_rng(1).standard_normal((2, 3, 7, 9)).astype(np.float32)
    tg = TorchGraph(ir.from_proto(proto))
    seen = []

    def hook(node, j, t):
        seen.append((node.name, j, tuple(t.shape)))
        return torch.zeros_like(t) if j == 1 else t

    out = tg({"x": x}, operand_hook=hook)
    assert ("conv_same", 0, (2, 3, 7, 9)) in seen and ("conv_same", 1, (4, 3, 3, 3)) in seen
    assert float(out["g"].abs().max()) == 0.0  # zeroed weight -> zero conv output


def _model(nodes, inputs, outputs, inits=(), opset=21, domains=(), functions=()):
    g = oh.make_graph(nodes, "g", inputs, outputs, list(inits))
    ops = [oh.make_opsetid("", opset)] + [oh.make_opsetid(d, 1) for d in domains]
    return oh.make_model(g, opset_imports=ops, ir_version=10, functions=list(functions))


def _vi(name, shape=None, dt=TensorProto.FLOAT):
    return oh.make_tensor_value_info(name, dt, shape)


def test_unsupported_op_names_node_and_op():
    proto = _model([oh.make_node("Frobnicate", ["x"], ["y"], name="my_frob", domain="my.ops")],
                   [_vi("x", [2, 3])], [_vi("y", [2, 3])], domains=["my.ops"])
    with pytest.raises(OnnxAmpError, match="my_frob.*my.ops::Frobnicate.*fallback=True"):
        TorchGraph(ir.from_proto(proto))


def _opaque_model() -> onnx.ModelProto:
    """x -> mm1 -> com.microsoft::Gelu (opaque) -> mm2 -> + <- mm3 <- x."""
    rng = np.random.default_rng(0)
    inits = [oh.make_tensor(n, TensorProto.FLOAT, [4, 4], rng.standard_normal(16).astype(np.float32))
             for n in ("w1", "w2", "w3")]
    nodes = [
        oh.make_node("MatMul", ["x", "w1"], ["h1"], name="mm1"),
        oh.make_node("Gelu", ["h1"], ["g1"], name="gelu_ms", domain="com.microsoft"),
        oh.make_node("MatMul", ["g1", "w2"], ["y1"], name="mm2"),
        oh.make_node("MatMul", ["x", "w3"], ["y2"], name="mm3"),
        oh.make_node("Add", ["y1", "y2"], ["y"], name="add"),
    ]
    return _model(nodes, [_vi("x", [2, 4])], [_vi("y", [2, 4])], inits, opset=17, domains=["com.microsoft"])


def test_fallback_runs_opaque_node_and_reports_upstream_layers():
    proto = _opaque_model()
    with pytest.raises(OnnxAmpError, match="gelu_ms.*com.microsoft::Gelu"):
        TorchGraph(ir.from_proto(proto))
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    tg = TorchGraph(ir.from_proto(proto), fallback=True)
    assert tg.opaque_nodes == ["gelu_ms"]
    assert [n.name for n in tg.layers_upstream_of_opaque()] == ["mm1"]
    weights = {}

    def hook(node, j, t):
        if j == 1:
            t = t.detach().requires_grad_(True)
            weights[node.name] = t
        return t

    out = tg({"x": x}, operand_hook=hook)
    np.testing.assert_allclose(out["y"].detach().numpy(), _ort(proto, {"x": x})["y"], rtol=1e-5, atol=1e-5)
    out["y"].sum().backward()
    assert weights["mm1"].grad is None  # blocked by the opaque node
    assert weights["mm2"].grad is not None and weights["mm3"].grad is not None


def test_fallback_local_function_and_runtime_unsupported():
    """A model-local function (custom domain) runs through onnx.reference; an op the interpreter
    rejects only for its attributes at run time (GridSample on a 1-D signal) falls back too."""
    body = [oh.make_node("Sigmoid", ["X"], ["s"]), oh.make_node("Mul", ["X", "s"], ["Y"])]
    fn = oh.make_function("my.ops", "Swishy", ["X"], ["Y"], body, [oh.make_opsetid("", 20)])
    nodes = [oh.make_node("Swishy", ["x"], ["a"], name="swishy", domain="my.ops"),
             oh.make_node("GridSample", ["a", "grid"], ["y"], name="gs1d", align_corners=1)]
    proto = _model(nodes, [_vi("x", [1, 1, 5]), _vi("grid", [1, 3, 1])], [_vi("y", None)], opset=20,
                   domains=["my.ops"], functions=[fn])
    x = np.linspace(-2, 2, 5, dtype=np.float32).reshape(1, 1, 5)
    grid = np.array([[[-1.0], [0.25], [1.0]]], dtype=np.float32)
    tg = TorchGraph(ir.from_proto(proto), fallback=True)
    out = tg({"x": x, "grid": grid})
    from onnx.reference import ReferenceEvaluator

    ref = ReferenceEvaluator(proto).run(None, {"x": x, "grid": grid})[0]
    np.testing.assert_allclose(out["y"].numpy(), ref, rtol=1e-5, atol=1e-6)
    assert tg.opaque_nodes == ["swishy", "gs1d"]


def _rnn_model() -> tuple[onnx.ModelProto, dict]:
    rng = np.random.default_rng(0)
    t, b, i, h = 5, 3, 4, 6

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32) * 0.5

    inits = [numpy_helper.from_array(a, n) for n, a in [
        ("lw", r(2, 4 * h, i)), ("lr", r(2, 4 * h, h)), ("lb", r(2, 8 * h)), ("lp", r(2, 3 * h)),
        ("gw", r(1, 3 * h, i)), ("gr", r(1, 3 * h, h)), ("gb", r(1, 6 * h)),
        ("rw", r(1, h, i)), ("rr", r(1, h, h)), ("h0", r(2, b, h)), ("c0", r(2, b, h)),
        ("lens", np.array([5, 2, 4], dtype=np.int32))]]
    nodes = [
        oh.make_node("LSTM", ["x", "lw", "lr", "lb", "lens", "h0", "c0", "lp"], ["ly", "lyh", "lyc"], name="lstm",
                     hidden_size=h, direction="bidirectional"),
        oh.make_node("GRU", ["x", "gw", "gr", "gb", "lens"], ["gy", "gyh"], name="gru", hidden_size=h,
                     direction="reverse", linear_before_reset=1),
        oh.make_node("RNN", ["x", "rw", "rr", "", "lens"], ["ry", "ryh"], name="rnn", hidden_size=h,
                     activations=["Relu"], clip=2.0),
    ]
    outs = ["ly", "lyh", "lyc", "gy", "gyh", "ry", "ryh"]
    proto = _model(nodes, [_vi("x", [t, b, i])], [_vi(o) for o in outs], inits, opset=17)
    return proto, {"x": r(t, b, i)}


def test_recurrent_layers_match_ort():
    proto, feeds = _rnn_model()
    _compare(ir.from_proto(proto), feeds, _ort(proto, feeds), 1e-5)


def _resample_model() -> onnx.ModelProto:
    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    inits = [oh.make_tensor("sc", f, [4], [1, 1, 1.5, 0.6]), oh.make_tensor("sz", i64, [4], [2, 3, 7, 5]),
             oh.make_tensor("gamma", f, [3], [1.0, 0.5, 2.0]), oh.make_tensor("beta", f, [3], [0.1, 0.0, -0.2]),
             oh.make_tensor("slope", f, [3, 1, 1], [0.1, 0.2, 0.3]), oh.make_tensor("k", i64, [1], [3])]
    nodes = [
        oh.make_node("Resize", ["x", "", "sc"], ["r1"], mode="linear"),
        oh.make_node("Resize", ["x", "", "", "sz"], ["r2"], mode="cubic",
                     coordinate_transformation_mode="align_corners"),
        oh.make_node("Resize", ["x", "", "sc"], ["r3"], mode="nearest", coordinate_transformation_mode="asymmetric",
                     nearest_mode="floor"),
        oh.make_node("Resize", ["x", "", "sc"], ["r4"], mode="linear", antialias=1),
        oh.make_node("InstanceNormalization", ["x", "gamma", "beta"], ["inorm"]),
        oh.make_node("LRN", ["x"], ["lrn"], size=3),
        oh.make_node("PRelu", ["x", "slope"], ["prelu"]),
        oh.make_node("TopK", ["x", "k"], ["tv", "ti"], axis=-1),
        oh.make_node("MaxPool", ["x"], ["mp", "mpi"], kernel_shape=[3, 2], strides=[2, 2], ceil_mode=1,
                     dilations=[1, 2], pads=[1, 0, 1, 1]),
        oh.make_node("AveragePool", ["x"], ["ap"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                     count_include_pad=1, ceil_mode=1),
        oh.make_node("Einsum", ["x", "x"], ["es"], equation="bchw,bcwk->bchk"),
    ]
    outs = ["r1", "r2", "r3", "r4", "inorm", "lrn", "prelu", "tv", "ti", "mp", "mpi", "ap", "es"]
    types = {"ti": TensorProto.INT64, "mpi": TensorProto.INT64}
    return _model(nodes, [_vi("x", [2, 3, 6, 6])], [_vi(o, None, types.get(o, TensorProto.FLOAT)) for o in outs],
                  inits, opset=19)


def test_resampling_and_nn_ops_match_ort():
    proto = _resample_model()
    x = np.random.default_rng(2).standard_normal((2, 3, 6, 6)).astype(np.float32)
    _compare(ir.from_proto(proto), {"x": x}, _ort(proto, {"x": x}), 1e-5)


def _loop_model() -> onnx.ModelProto:
    """y = x; 3 times: y = y * w + x (w, x from the outer scope); If (sum(y) > 0) y else -y."""
    f = TensorProto.FLOAT
    body = oh.make_graph(
        [oh.make_node("Mul", ["y_in", "w"], ["yw"]), oh.make_node("Add", ["yw", "x"], ["y_out"]),
         oh.make_node("Identity", ["c_in"], ["c_out"])],
        "body", [_vi("i", [], TensorProto.INT64), _vi("c_in", [], TensorProto.BOOL), _vi("y_in", [3])],
        [_vi("c_out", [], TensorProto.BOOL), _vi("y_out", [3])])
    then_g = oh.make_graph([oh.make_node("Identity", ["y"], ["t"])], "then", [], [_vi("t", [3])])
    else_g = oh.make_graph([oh.make_node("Neg", ["y"], ["e"])], "else", [], [_vi("e", [3])])
    nodes = [
        oh.make_node("Loop", ["n", "cond", "x"], ["y"], name="loop", body=body),
        oh.make_node("ReduceSum", ["y"], ["s"], keepdims=0),
        oh.make_node("Greater", ["s", "zero"], ["pos"]),
        oh.make_node("If", ["pos"], ["out"], name="if", then_branch=then_g, else_branch=else_g),
    ]
    inits = [oh.make_tensor("n", TensorProto.INT64, [], [3]), oh.make_tensor("cond", TensorProto.BOOL, [], [1]),
             oh.make_tensor("w", f, [3], [0.5, -1.0, 2.0]), oh.make_tensor("zero", f, [], [0.0])]
    return _model(nodes, [_vi("x", [3])], [_vi("out", [3])], inits, opset=17)


def test_control_flow_matches_ort_and_is_differentiable():
    proto = _loop_model()
    for x in (np.array([1.0, 2.0, 3.0], np.float32), np.array([-5.0, 1.0, -3.0], np.float32)):
        _compare(ir.from_proto(proto), {"x": x}, _ort(proto, {"x": x}), 1e-6)
    xt = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    TorchGraph(ir.from_proto(proto))({"x": xt})["out"].sum().backward()
    # y3 = x (w^3 + w^2 + w + 1) element-wise
    w = torch.tensor([0.5, -1.0, 2.0])
    torch.testing.assert_close(xt.grad, w ** 3 + w ** 2 + w + 1)


def test_casts_round_and_pass_gradients_straight_through():
    nodes = [oh.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16),
             oh.make_node("Cast", ["x"], ["e"], to=TensorProto.FLOAT8E4M3FN),
             oh.make_node("Cast", ["x"], ["b"], to=TensorProto.BFLOAT16)]
    proto = _model(nodes, [_vi("x", [4])], [_vi("h"), _vi("e"), _vi("b")])
    x = torch.tensor([1.0 + 2 ** -12, 1000.0, -0.3, 70000.0], requires_grad=True)
    out = TorchGraph(ir.from_proto(proto))({"x": x})
    assert out["h"].dtype == torch.float32
    assert out["h"].tolist() == [1.0, 1000.0, float(np.float16(-0.3)), float("inf")]
    assert out["e"].tolist() == [1.0, 448.0, -0.3125, 448.0]  # saturating by default
    (out["h"].clamp(max=1e4) + out["e"] + out["b"]).sum().backward()
    assert x.grad.tolist() == [3.0, 3.0, 3.0, 2.0]


def test_attention_and_rotary_embedding_match_ort():
    """Opset-23 Attention (grouped-query, causal, with a KV cache) and RotaryEmbedding with position ids."""
    nodes = [oh.make_node("Attention", ["q", "k", "v", "", "pk", "pv"], ["y", "pk2", "pv2"], is_causal=1),
             oh.make_node("RotaryEmbedding", ["q", "cos", "sin", "pos"], ["qr"])]
    shapes = {"q": (2, 4, 3, 8), "k": (2, 2, 3, 8), "v": (2, 2, 3, 8), "pk": (2, 2, 5, 8), "pv": (2, 2, 5, 8),
              "cos": (10, 4), "sin": (10, 4)}
    rng = np.random.default_rng(0)
    feeds = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    feeds["pos"] = np.array([[5, 6, 7], [1, 2, 3]], dtype=np.int64)
    inputs = [_vi(k, list(s)) for k, s in shapes.items()] + [_vi("pos", [2, 3], TensorProto.INT64)]
    proto = _model(nodes, inputs, [_vi(o) for o in ("y", "pk2", "pv2", "qr")], opset=23)
    _compare(ir.from_proto(proto), feeds, _ort(proto, feeds), 1e-5)
