"""The ONNX->torch interpreter against ONNX Runtime on real subjects and on a graph of tricky ops."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto

from onnx_amp.runtime.onnx_io import OnnxAmpError, load_model
from onnx_amp.runtime.torch_graph import TorchGraph


def _ort(path_or_proto, feeds):
    src = path_or_proto if isinstance(path_or_proto, str) else path_or_proto.SerializeToString()
    s = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return {o.name: r for o, r in zip(s.get_outputs(), s.run(None, feeds))}


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


def test_unsupported_op_names_node_and_op():
    f = TensorProto.FLOAT
    graph = oh.make_graph([oh.make_node("Hardmax", ["x"], ["y"], name="my_hardmax")], "g",
                          [oh.make_tensor_value_info("x", f, [2, 3])], [oh.make_tensor_value_info("y", f, [2, 3])])
    model = ir.from_proto(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)]))
    with pytest.raises(OnnxAmpError, match="my_hardmax.*Hardmax"):
        TorchGraph(model)
