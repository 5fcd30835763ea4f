"""Partition pass on hand-built graphs with known answers."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnx_amp.passes import annotations as ann
from onnx_amp.passes.partition import (
    PartitionPass,
    extract_region,
    partition,
    partition_summary,
)
from onnx_amp.runtime.onnx_io import OnnxAmpError
from onnx_amp.tools.synthetic import G, synthetic_transformer, transformer


def region_nodes(p, rid):
    return [p.names[n] for n in p.region(rid).nodes]


def regions_of_layers(p):
    """[[layer node names] per region]"""
    return [[p.layers[l].name for l in r.layers] for r in p.regions]


# ---------------------------------------------------------------------------- structure


def test_chain():
    g = G()
    x = g.input("x", [2, 8])
    a = g.mm(x, name="mm1")
    a = g.op("Relu", [a], name="relu1")
    a = g.mm(a, name="mm2")
    a = g.op("Relu", [a], name="relu2")
    a = g.mm(a, name="mm3")
    a = g.op("Relu", [a], name="relu3")
    p = partition(g.model([a]))
    assert regions_of_layers(p) == [["mm1"], ["mm2"], ["mm3"]]
    # a layerless segment joins the NEXT region; trailing layerless ones join the previous
    assert region_nodes(p, "r0") == ["mm1"]
    assert region_nodes(p, "r1") == ["relu1", "mm2"]
    assert region_nodes(p, "r2") == ["relu2", "mm3", "relu3"]
    assert [n.name for n in p.cut_points] == ["mm1", "relu1", "mm2", "relu2", "mm3", "relu3"]
    assert p.region("r0").entry_names == ["x"]
    assert p.region("r1").entry_names == [p.region("r0").exit_names[0]]
    assert p.region("r2").exit_names == [a]
    assert all(L.kind == "weight" and L.weight_input == 1 and L.weight_axis == 1 for L in p.layers.values())
    assert [len(u) for u in p.units.values()] == [1, 1, 1]


def test_residual_blocks_with_side_inputs():
    """Mask and rotary tables feed every block; they must not merge blocks."""
    g, out = transformer(n_blocks=3)
    p = partition(g.model([out]))
    assert len(p.regions) == 6
    for b in range(3):
        att, mlp = p.regions[2 * b], p.regions[2 * b + 1]
        assert [p.layers[l].name for l in att.layers] == [f"b{b}.{n}" for n in ("q", "k", "v", "qk", "pv", "o")]
        assert [p.layers[l].name for l in mlp.layers] == [f"b{b}.{n}" for n in ("gate", "up", "down")]
        assert att.exit_names == [n.outputs[0].name for n in p.order if n.name == f"b{b}.add1"]
        assert mlp.exit_names == [n.outputs[0].name for n in p.order if n.name == f"b{b}.add2"]
        # q/k/v one unit, gate/up one unit, act_act layers alone
        units = [[p.layers[l].name.split(".")[1] for l in ls] for ls in att.units.values()]
        assert units == [["q", "k", "v"], ["qk"], ["pv"], ["o"]]
        units = [[p.layers[l].name.split(".")[1] for l in ls] for ls in mlp.units.values()]
        assert units == [["gate", "up"], ["down"]]
    kinds = {p.layers[l].name: p.layers[l].kind for l in p.layers}
    assert kinds["b1.qk"] == kinds["b1.pv"] == "act_act" and kinds["b1.q"] == "weight"
    # side nodes: mask/rotary go to the region of their first consumer (block 0 attention)
    for name in ("mask.sub", "mask.unsq", "rot.shape", "rot.range", "rot.cos"):
        assert p.region_of[next(n for n in p.order if n.name == name)] == "r0"
    side = {n.name for n in p.side_nodes}
    assert {"mask.mul", "rot.freqs", "b2.shape"} <= side
    assert "b1.mask_add" not in side and "embed_scale" not in side  # embed: promoted primary stream
    # the per-block Shape(h) feeding a Reshape is side and attached to its consumer's region
    assert p.region_of[next(n for n in p.order if n.name == "b2.shape")] == "r4"
    # ids in topological order, units numbered in first-layer order
    assert list(p.layers) == [f"L{i}" for i in range(len(p.layers))]
    assert list(p.units) == [f"U{i}" for i in range(len(p.units))]


def test_side_inputs_without_norm_or_embedding():
    """Block input read straight from a graph input: first block's residual still counts."""
    g = G()
    x = g.input("x", [1, 4, 8])
    g.input("mask", [1, 4, 4])
    h = x
    for b in range(2):
        q = g.mm(h, name=f"b{b}.q")
        k = g.mm(h, name=f"b{b}.k")
        s = g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 2, 1])], name=f"b{b}.qk")
        s = g.op("Add", [s, "mask"], name=f"b{b}.mask_add")  # graph input mask read in every block
        o = g.mm(g.op("Softmax", [s], axis=-1), name=f"b{b}.o")
        h = g.op("Add", [h, o], name=f"b{b}.res")
    p = partition(g.model([h]))
    assert regions_of_layers(p) == [["b0.q", "b0.k", "b0.qk", "b0.o"], ["b1.q", "b1.k", "b1.qk", "b1.o"]]
    assert p.region("r0").entry_names == ["x"]


def test_nested_skips():
    g = G()
    x = g.input("x", [2, 8])
    a = g.mm(x, name="A")
    b = g.mm(a, name="B")
    c = g.mm(b, name="C")
    d = g.op("Add", [c, b], name="inner")  # skip B -> inner
    e = g.mm(d, name="E")
    f = g.op("Add", [e, a], name="outer")  # skip A -> outer
    h = g.mm(f, name="H")
    p = partition(g.model([h]))
    assert [n.name for n in p.cut_points] == ["A", "outer", "H"]
    assert regions_of_layers(p) == [["A"], ["B", "C", "E"], ["H"]]
    assert region_nodes(p, "r1") == ["B", "C", "inner", "E", "outer"]


def test_parallel_branches_concat():
    g = G()
    x = g.input("x", [2, 8])
    a = g.mm(x, name="stem")
    l1 = g.op("Relu", [g.mm(a, name="left")], name="lrelu")
    r1 = g.op("Relu", [g.mm(a, name="right")], name="rrelu")
    r2 = g.mm(r1, name="right2")
    c = g.op("Concat", [l1, r2], name="cat", axis=-1)
    out = g.mm(c, name="head", w=g.weight((16, 8)))
    p = partition(g.model([out]))
    assert regions_of_layers(p) == [["stem"], ["left", "right", "right2"], ["head"]]
    assert region_nodes(p, "r1") == ["left", "lrelu", "right", "rrelu", "right2", "cat"]
    # left and right read the same activation: one unit; right2 its own
    r = p.region("r1")
    assert [[p.layers[l].name for l in u] for u in r.units.values()] == [["left", "right"], ["right2"]]


def test_shape_side_branches():
    """Shape of an early tensor feeding a late Reshape / ConstantOfShape must not merge regions."""
    g = G()
    x = g.input("x", [2, 8])
    a = g.mm(x, name="A")
    shp = g.op("Shape", [a], name="shapeA")
    n0 = g.op("Gather", [shp, g.weight(arr=np.array([0], np.int64))], name="g0", axis=0)
    tgt = g.op("Concat", [n0, g.weight(arr=np.array([-1], np.int64))], name="tgt", axis=0)
    zeros = g.op("ConstantOfShape", [shp], name="zeros", value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.5]))
    b = g.mm(a, name="B")
    c = g.mm(b, name="C")
    c = g.op("Reshape", [c, tgt], name="late_reshape")
    c = g.op("Add", [c, zeros], name="late_add")
    d = g.mm(c, name="D")
    p = partition(g.model([d]))
    assert regions_of_layers(p) == [["A"], ["B"], ["C"], ["D"]]
    side = {n.name for n in p.side_nodes}
    assert {"shapeA", "g0", "tgt", "zeros"} <= side
    # first consumer late_reshape/late_add: after cut point C, in D's region
    assert region_nodes(p, "r3") == ["shapeA", "g0", "tgt", "zeros", "late_reshape", "late_add", "D"]


def test_mid_graph_output():
    """A graph output that is also consumed inside the graph adds no bypass edge to the sink."""
    g = G()
    x = g.input("x", [2, 8])
    a = g.mm(x, name="A")
    b = g.mm(g.op("Relu", [a], name="r"), name="B")
    c = g.mm(b, name="C")
    p = partition(g.model([a, c]))  # A's output is a graph output
    assert regions_of_layers(p) == [["A"], ["B"], ["C"]]
    assert p.region("r0").exit_names == [a]
    assert p.region("r2").exit_names == [c]


def test_dead_end_main_node_goes_to_sink():
    """A main node whose result only leaves the graph (a second head) is a sink edge: it spans."""
    g = G()
    x = g.input("x", [2, 8])
    a = g.mm(x, name="A")
    aux = g.mm(a, name="aux_head")  # output only
    b = g.mm(a, name="B")
    c = g.mm(b, name="C")
    p = partition(g.model([c, aux]))
    assert regions_of_layers(p) == [["A"], ["aux_head", "B", "C"]]


def test_constant_node_weights_and_axes():
    g = G()
    x = g.input("x", [2, 8])
    wc = g.op("Constant", [], name="wconst", value=helper.make_tensor("w", TensorProto.FLOAT, [8, 8], np.eye(8).ravel()))
    a = g.op("MatMul", [x, wc], name="mm_constnode")
    wt = g.op("Transpose", [g.op("Cast", [wc], name="cast_w", to=TensorProto.FLOAT)], name="t_w", perm=[1, 0])
    b = g.op("MatMul", [a, wt], name="mm_chain")
    wq = g.weight(arr=np.ones((8, 8), np.int8))
    wdq = g.op("DequantizeLinear", [wq, g.weight(arr=np.array(0.1, np.float32))], name="dq_w")
    c = g.op("MatMul", [b, wdq], name="mm_dq")
    d = g.op("Gemm", [c, g.weight((4, 8))], name="gemm_tb", transB=1)
    e = g.op("Gemm", [d, g.weight((4, 6))], name="gemm")
    f = g.op("MatMul", [g.weight((3, 2)), e], name="mm_left")  # W @ X
    f = g.op("Reshape", [f, g.weight(arr=np.array([1, 1, 3, 6], np.int64))], name="rs")
    h = g.op("Conv", [f, g.weight((5, 1, 1, 1))], name="conv")
    k = g.op("ConvTranspose", [h, g.weight((5, 2, 1, 1))], name="convT")
    p = partition(g.model([k]))
    got = {L.name: (L.kind, L.weight_input, L.weight_axis) for L in p.layers.values()}
    assert got == {
        "mm_constnode": ("weight", 1, 1),
        "mm_chain": ("weight", 1, 1),
        "mm_dq": ("weight", 1, 1),
        "gemm_tb": ("weight", 1, 0),
        "gemm": ("weight", 1, 1),
        "mm_left": ("weight", 0, 0),
        "conv": ("weight", 1, 0),
        "convT": ("weight", 1, 1),
    }
    assert {"wconst", "cast_w", "t_w", "dq_w"} <= {n.name for n in p.side_nodes}


def test_rotary_matmul_from_shapes_is_not_a_layer():
    """inv_freq @ positions where positions come from Shape/Range: shape arithmetic, not a layer."""
    g = G()
    x = g.input("x", [1, 4, 8])
    n = g.op("Gather", [g.op("Shape", [x]), g.weight(arr=np.array([1], np.int64))], axis=0)
    pos = g.op("Cast", [g.op("Range", [g.weight(arr=np.array(0, np.int64)), g.op("Squeeze", [n]),
                                        g.weight(arr=np.array(1, np.int64))])], to=TensorProto.FLOAT)
    pos = g.op("Unsqueeze", [pos, g.weight(arr=np.array([0], np.int64))])
    inv = g.op("Expand", [g.weight(arr=np.ones((4, 1), np.float32)), g.op("Shape", [x])], name="inv_exp")
    fr = g.op("MatMul", [g.weight(arr=np.ones((4, 1), np.float32)), pos], name="rot_mm_const")
    y = g.mm(x, name="q")
    y = g.op("Add", [y, g.op("ReduceSum", [fr], keepdims=0)], name="use")
    p = partition(g.model([y, inv]))
    assert [L.name for L in p.layers.values()] == ["q"]


def test_act_act_with_graph_position_input_layer_rule():
    """MatMul(shape-derived, data): rotary table from a position_ids input is side, not a layer."""
    g = G()
    x = g.input("x", [1, 4, 8])
    pos = g.input("position_ids", [1, 1, 4])
    inv = g.op("Expand", [g.weight(arr=np.ones((4, 1), np.float32)), g.op("Shape", [pos])], name="inv_exp")
    fr = g.op("MatMul", [inv, pos], name="rot_mm")
    y = g.mm(x, name="q")
    y = g.op("Add", [y, g.op("ReduceSum", [fr], keepdims=0)], name="use")
    p = partition(g.model([y]))
    assert [L.name for L in p.layers.values()] == ["q"]
    assert "rot_mm" in {n.name for n in p.side_nodes}


def test_no_layer_raises():
    g = G()
    x = g.input("x", [2, 8])
    y = g.op("Relu", [x])
    y = g.op("Add", [y, g.weight(arr=np.ones(8, np.float32))])
    with pytest.raises(OnnxAmpError, match=r"^toy.onnx: no quantizable layer \(MatMul/Gemm/Conv\) found"):
        partition(g.model([y]), source="toy.onnx")
    # a MatMul of two constants is constant folding, not a layer
    g2 = G()
    g2.input("x", [2, 8])
    y2 = g2.op("Add", ["x", g2.op("MatMul", [g2.weight(), g2.weight()])])
    with pytest.raises(OnnxAmpError, match="no quantizable layer"):
        partition(g2.model([y2]))


def test_control_flow_is_opaque():
    g = G()
    x = g.input("x", [2, 8])
    g.input("cond", [], dtype=TensorProto.BOOL)
    a = g.mm(x, name="A")
    w_in = g.weight()
    then_g = helper.make_graph(
        [helper.make_node("MatMul", [a, w_in], ["t_out"], name="inner_mm")], "then", [],
        [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, None)])
    else_g = helper.make_graph(
        [helper.make_node("Relu", [a], ["e_out"], name="inner_relu")], "else", [],
        [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, None)])
    # the If reads A's output only through its subgraphs (outer-scope capture)
    y = g.op("If", ["cond"], name="branch", then_branch=then_g, else_branch=else_g)
    b = g.mm(y, name="B")
    model = g.model([b])
    p = partition(model)
    assert [L.name for L in p.layers.values()] == ["A", "B"]  # inner_mm is not ours
    assert regions_of_layers(p) == [["A"], ["B"]]
    assert p.region_of[next(n for n in p.order if n.name == "branch")] == "r1"
    assert "branch" in {n.name for n in p.main_nodes}
    PartitionPass()(model)
    then_nodes = list(next(n for n in model.graph if n.name == "branch").attributes["then_branch"].as_graph())
    assert not any(k.startswith("onnx_amp.") for k in then_nodes[0].metadata_props)
    _check_extracted_regions(model, {"x": np.ones((2, 8), np.float32), "cond": np.array(True)})


def test_unsorted_graph_is_handled():
    g, out = transformer(n_blocks=2)
    proto = g.proto([out])
    nodes = list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(reversed(nodes))
    p = partition(ir.serde.deserialize_model(proto))
    ref = partition(g.model([out]))
    assert [sorted(x) for x in regions_of_layers(p)] == [sorted(x) for x in regions_of_layers(ref)]
    assert [n.name for n in p.cut_points] == [n.name for n in ref.cut_points]


# ---------------------------------------------------------------------------- annotations


def test_pass_annotations_and_json():
    g, out = transformer(n_blocks=2)
    proto = g.proto([out])
    # empty and duplicate names, foreign metadata that must survive
    proto.graph.node[0].name = ""
    proto.graph.node[5].name = proto.graph.node[6].name
    for n in proto.graph.node:
        if n.name == "b1.q":
            n.metadata_props.add(key=ann.MODULE, value="model.layers.1.self_attn.q_proj")
            n.metadata_props.add(key="pkg.torch.onnx.name_scopes", value='["", "layers.1"]')
    model = ir.serde.deserialize_model(proto)
    result = PartitionPass()(model)
    assert result.modified
    nodes = list(model.graph)
    names = [n.name for n in nodes]
    assert all(names) and len(set(names)) == len(names)
    assert names[0] == f"{nodes[0].op_type}_0"
    assert all(ann.REGION in n.metadata_props for n in nodes)
    q1 = next(n for n in nodes if n.name == "b1.q")
    assert q1.metadata_props["pkg.torch.onnx.name_scopes"] == '["", "layers.1"]'
    assert q1.metadata_props[ann.LAYER] == "L9" and q1.metadata_props[ann.UNIT] == "U6"
    assert q1.metadata_props[ann.LAYER_KIND] == "weight"
    assert q1.metadata_props[ann.WEIGHT_INPUT] == "1" and q1.metadata_props[ann.WEIGHT_AXIS] == "1"
    qk = next(n for n in nodes if n.name == "b1.qk")
    assert qk.metadata_props[ann.LAYER_KIND] == "act_act" and ann.WEIGHT_INPUT not in qk.metadata_props
    data = ann.get_json(model, ann.REGIONS)
    assert data["version"] == 1 and [r["id"] for r in data["regions"]] == ["r0", "r1", "r2", "r3"]
    r2 = data["regions"][2]
    assert r2["layers"] == ["L9", "L10", "L11", "L12", "L13", "L14"]
    assert r2["units"] == {"U6": ["L9", "L10", "L11"], "U7": ["L12"], "U8": ["L13"], "U9": ["L14"]}
    assert r2["entry"] == data["regions"][1]["exit"] and isinstance(r2["entry"], str)
    assert set(r2["nodes"]) == {n.name for n in nodes if n.metadata_props[ann.REGION] == "r2"}
    assert data["layers"]["L9"] == {
        "node": "b1.q", "op": "MatMul", "kind": "weight", "unit": "U6", "region": "r2",
        "module": "model.layers.1.self_attn.q_proj", "weight_input": 1, "weight_axis": 1,
    }
    assert data["layers"]["L0"]["module"] is None
    # every node in exactly one region's list
    listed = [n for r in data["regions"] for n in r["nodes"]]
    assert sorted(listed) == sorted(names)
    # idempotent: running again gives the same JSON, and the model round-trips through protobuf
    before = model.metadata_props[ann.REGIONS]
    PartitionPass()(model)
    assert model.metadata_props[ann.REGIONS] == before
    back = ir.serde.deserialize_model(ir.serde.serialize_model(model))
    assert back.metadata_props[ann.REGIONS] == before
    assert [n.metadata_props.get(ann.REGION) for n in back.graph] == [n.metadata_props[ann.REGION] for n in nodes]
    assert json.loads(before)["layers"]["L9"]["region"] == "r2"


def test_summary_text():
    g, out = transformer(n_blocks=2)
    s = partition_summary(g.model([out]))
    assert s.splitlines()[0].startswith("4 regions, 18 layers (14 weight, 4 act_act), 12 units")
    assert "largest region: r0 (6 layers" in s


# ---------------------------------------------------------------------------- extraction


def _full_values(proto: onnx.ModelProto, feeds: dict, names: list[str]) -> dict:
    inferred = onnx.shape_inference.infer_shapes(proto)
    vi = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    have = {o.name for o in proto.graph.output}
    p2 = onnx.ModelProto()
    p2.CopyFrom(proto)
    for nme in names:
        if nme not in have and nme not in feeds:
            p2.graph.output.append(vi[nme])
            have.add(nme)
    sess = ort.InferenceSession(p2.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    vals = dict(zip(outs, sess.run(outs, feeds)))
    vals.update(feeds)
    return vals


def _check_extracted_regions(model: ir.Model, feeds: dict):
    p = partition(model)
    proto = ir.serde.serialize_model(model)
    regions = [(r.id, extract_region(model, r.id, p)) for r in p.regions]
    needed = sorted({v.name for _, m in regions for v in list(m.graph.inputs) + list(m.graph.outputs)})
    vals = _full_values(proto, feeds, needed)
    for rid, sub in regions:
        sp = ir.serde.serialize_model(sub)
        onnx.checker.check_model(sp)
        sess = ort.InferenceSession(sp.SerializeToString(), providers=["CPUExecutionProvider"])
        got = sess.run(None, {i.name: vals[i.name] for i in sess.get_inputs()})
        for o, g_ in zip(sess.get_outputs(), got):
            np.testing.assert_allclose(g_, vals[o.name], rtol=1e-5, atol=1e-5, err_msg=f"{rid} {o.name}")
        # Extractor agrees on the node set needed for the exit
        ext = onnx.utils.Extractor(proto).extract_model([i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()])
        need = {n.name for n in ext.graph.node}
        assert need <= {n.name for n in sub.graph}, rid


def test_extract_region_runs_alone():
    g, out = transformer(n_blocks=2)
    model = g.model([out])
    PartitionPass()(model)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((1, 4, 8)).astype(np.float32),
             "attention_mask": np.array([[1, 1, 1, 0]], np.float32)}
    _check_extracted_regions(model, feeds)
    p = partition(model)
    sub = extract_region(model, "r2", p)
    ins = [v.name for v in sub.graph.inputs]
    assert ins[0] == p.region("r2").entry_names[0]
    # side tensors computed in r0 (mask, rotary cos) are inputs of r2; no graph input x needed
    assert "x" not in ins and len(ins) == 3
    # weights are shared, not copied
    w_sub = next(v for v in sub.graph.initializers.values() if v.const_value.shape == (8, 8))
    assert any(w_sub.const_value is v.const_value for v in model.graph.initializers.values())
    assert len(list(model.graph)) == 55  # original untouched


# ---------------------------------------------------------------------------- scale


def test_large_graphs_partition_like_small_ones():
    """40k nodes: the same block structure as 4k, ten times the regions (speed is a benchmark's
    business: python -m onnx_amp.tools.bench.bench_partition)."""
    small = partition(synthetic_transformer(4_000, seed=1))
    big_model = synthetic_transformer(40_000, seed=1)
    big = partition(big_model)
    assert len(big_model.graph) >= 40_000 and len(big.regions) > 2000
    assert abs(len(big.regions) / len(small.regions) - 10) < 0.5
    assert abs(len(big.layers) / len(small.layers) - 10) < 0.5
