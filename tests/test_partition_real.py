"""Partition of the real exports: block structure, units, side inputs, and every extracted region
running alone in ONNX Runtime with the same exit tensor as the full model."""

from __future__ import annotations

import os
import re

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from onnx_amp.passes import annotations as ann
from onnx_amp.passes.partition import PartitionPass, extract_region, partition, partition_summary
from onnx_amp.runtime.onnx_io import load_model

pytestmark = pytest.mark.slow


def _mods(p, r):
    return [p.layers[l].module for l in r.layers]


def _session(path_or_bytes, data_dir: str | None = None):
    so = ort.SessionOptions()
    if data_dir:  # model given as bytes: resolve its external data next to the original file
        so.add_session_config_entry("session.model_external_initializers_file_folder_path", data_dir)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(path_or_bytes, so, providers=["CPUExecutionProvider"])


def _full_values(model_path: str, names: list[str], feeds: dict, tmp_path) -> dict:
    """Run the full model once with the requested intermediate tensors exposed as outputs."""
    proto = onnx.load(model_path, load_external_data=False)
    if not proto.graph.value_info:
        proto = onnx.shape_inference.infer_shapes(proto)
    vi = {v.name: v for v in list(proto.graph.value_info) + list(proto.graph.output)}
    have = {o.name for o in proto.graph.output}
    for n in names:
        if n not in have and n not in feeds:
            proto.graph.output.append(vi[n])
            have.add(n)
    sess = _session(proto.SerializeToString(), os.path.dirname(os.path.abspath(model_path)))
    outs = [o.name for o in sess.get_outputs()]
    vals = dict(zip(outs, sess.run(outs, feeds)))
    vals.update(feeds)
    return vals


def _check_regions_run_alone(model_path: str, feeds: dict, tmp_path, region_ids=None, atol=1e-5):
    model = load_model(model_path)
    if any(v.type is None for n in model.graph for v in n.outputs):  # e.g. the ready-made ONNX
        model = ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(ir.serde.serialize_model(model)))
    p = partition(model)
    ids = region_ids or [r.id for r in p.regions]
    subs = {rid: extract_region(model, rid, p) for rid in ids}
    names = sorted({v.name for s in subs.values() for v in list(s.graph.inputs) + list(s.graph.outputs)})
    vals = _full_values(model_path, names, feeds, tmp_path)
    proto_struct = onnx.load(model_path, load_external_data=False)
    if not proto_struct.graph.value_info:
        proto_struct = onnx.shape_inference.infer_shapes(proto_struct)
    for rid, sub in subs.items():
        r = p.region(rid)
        assert [v.name for v in sub.graph.outputs] == r.exit_names
        assert [v.name for v in sub.graph.inputs][: len(r.entry)] == r.entry_names
        path = tmp_path / f"{rid}.onnx"
        ir.save(sub, path, external_data=f"{rid}.onnx.data")
        sess = _session(str(path))
        got = sess.run(None, {i.name: vals[i.name] for i in sess.get_inputs()})
        for o, g in zip(sess.get_outputs(), got):
            ref = vals[o.name]
            assert g.shape == ref.shape, (rid, o.name)
            np.testing.assert_allclose(g, ref, rtol=1e-5, atol=atol, err_msg=f"{rid} exit {o.name}")
        # onnx.utils.Extractor, given the same inputs and exit, needs no node outside the region
        ext = onnx.utils.Extractor(proto_struct).extract_model(
            [i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()])
        assert {n.name for n in ext.graph.node} <= {n.name for n in sub.graph}, rid
    return p


def test_smollm2_regions(smollm2_onnx, tmp_path):
    model = load_model(smollm2_onnx)
    PartitionPass()(model)
    p = partition(model)
    n_layers = 30
    assert len(p.regions) == 2 * n_layers + 1
    for i in range(n_layers):
        att, mlp = p.regions[2 * i], p.regions[2 * i + 1]
        pre = f"model.layers.{i}."
        mods = _mods(p, att)
        assert mods[:3] == [pre + "self_attn.q_proj", pre + "self_attn.k_proj", pre + "self_attn.v_proj"], mods
        assert mods[-1] == pre + "self_attn.o_proj"
        assert [p.layers[l].kind for l in att.layers] == ["weight"] * 3 + ["act_act"] * 2 + ["weight"]
        assert list(att.units.values())[0] == att.layers[:3]  # q/k/v one unit
        assert len(att.units) == 4
        assert _mods(p, mlp) == [pre + "mlp.gate_proj", pre + "mlp.up_proj", pre + "mlp.down_proj"]
        assert list(mlp.units.values()) == [mlp.layers[:2], mlp.layers[2:]]  # gate/up one unit
        assert att.exit == mlp.entry
    assert _mods(p, p.regions[-1]) == ["lm_head"]
    assert p.regions[-1].exit_names == ["logits"]
    # causal mask and rotary tables are side computations attached to the first attention region
    assert len(p.side_nodes) > 10
    assert any(n.op_type in ("Cos", "Sin") for n in p.side_nodes)
    assert all(p.region_of[n] == "r0" for n in p.side_nodes if n.op_type in ("Cos", "Sin"))
    # annotations: every node has a region, layers carry ids/axes, module names survive
    assert all(ann.REGION in n.metadata_props for n in model.graph)
    q0 = next(n for n in model.graph if n.metadata_props.get(ann.LAYER) == "L0")
    assert q0.metadata_props[ann.WEIGHT_AXIS] == "1" and q0.metadata_props[ann.LAYER_KIND] == "weight"
    assert ann.TORCH_NAME_SCOPES in q0.metadata_props
    data = ann.get_json(model, ann.REGIONS)
    assert len(data["regions"]) == 61 and data["layers"]["L0"]["module"] == "model.layers.0.self_attn.q_proj"
    print(partition_summary(p))


def test_smollm2_regions_run_alone(smollm2_onnx, tmp_path):
    ids = np.array([[1, 504, 3156, 282, 253, 1345, 30, 2]], np.int64)
    _check_regions_run_alone(smollm2_onnx, {"input_ids": ids}, tmp_path, ["r0", "r1", "r2", "r3", "r60"], atol=1e-4)


def test_minilm_regions_and_run_alone(minilm_onnx, tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 5000, size=(2, 12)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 7:] = 0  # padding: the attention mask must not merge layers
    p = _check_regions_run_alone(minilm_onnx, {"input_ids": ids, "attention_mask": mask}, tmp_path)
    assert len(p.regions) == 2 * 6 + 1
    for i in range(6):
        att, mlp = p.regions[2 * i], p.regions[2 * i + 1]
        mods = _mods(p, att)
        assert all(f"layer.{i}.attention" in m for m in mods[:3] + mods[-1:]) and len(mods) == 6
        assert re.search(r"attention\.self\.query$", mods[0]) and re.search(r"attention\.output\.dense$", mods[-1])
        assert list(att.units.values())[0] == att.layers[:3]
        assert [m.split(f"layer.{i}.")[1] for m in _mods(p, mlp)] == ["intermediate.dense", "output.dense"]
    assert p.regions[-1].layers and p.layers[p.regions[-1].layers[0]].op == "Gemm"
    # the mask computation (from the attention_mask input) is side: the attention bias goes with
    # its first consumer (r0), the mean-pooling weights with the head region
    mask_side = {n.name: p.region_of[n] for n in p.side_nodes
                 if any(v is not None and v.name == "attention_mask" for v in n.inputs)}
    assert "r0" in mask_side.values() and set(mask_side.values()) <= {"r0", p.regions[-1].id}, mask_side


def test_effnet_one_region_per_residual_block(effnet_onnx, tmp_path):
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    p = _check_regions_run_alone(effnet_onnx, {"pixel_values": x}, tmp_path, atol=1e-4)
    by_block: dict[int, set] = {}
    for r in p.regions:
        for m in _mods(p, r):
            mb = re.match(r"_blocks\.(\d+)\.", m or "")
            if mb:
                by_block.setdefault(int(mb.group(1)), set()).add(r.id)
    residual = []
    for r in p.regions:
        if any(n.op_type == "Add" for n in r.nodes):
            blocks = {int(re.match(r"_blocks\.(\d+)\.", m).group(1)) for m in _mods(p, r)}
            assert len(blocks) == 1, r.id  # a residual region is exactly one block ...
            (b,) = blocks
            assert by_block[b] == {r.id}  # ... and holds all of that block's convs
            assert len(r.layers) == 3 and r.nodes[-1].op_type == "Add"
            residual.append(b)
    # EfficientNet-Lite0: stride-1 blocks with equal in/out channels have the skip connection
    assert residual == [2, 4, 6, 7, 9, 10, 12, 13, 14]
    # blocks without a skip are plain chains: finest regions, one conv each
    assert all(len(by_block[b]) == len([m for m in p.layers.values() if (m.module or "").startswith(f"_blocks.{b}.")])
               for b in by_block if b not in residual)


def test_paraphrase_ready_made_onnx(paraphrase_onnx, tmp_path):
    model = load_model(paraphrase_onnx)
    p = partition(model)
    assert all(L.module is None for L in p.layers.values())  # not our exporter: no module metadata
    assert len(p.regions) == 6 and [len(r.layers) for r in p.regions] == [6, 2] * 3
    for i, r in enumerate(p.regions):
        blk = i // 2
        assert all(f"layer.{blk}/" in p.layers[l].name for l in r.layers)
    PartitionPass()(model)
    assert all(ann.REGION in n.metadata_props for n in model.graph)
    rng = np.random.default_rng(1)
    ids = rng.integers(1000, 5000, size=(2, 10)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[0, 6:] = 0
    _check_regions_run_alone(paraphrase_onnx, {"input_ids": ids, "attention_mask": mask}, tmp_path, atol=1e-4)
