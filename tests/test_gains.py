import json

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_amp.passes import annotations as ann
from onnx_amp.passes.gains import (
    GainsPass, compute_gains, config_key, memory_gain, node_costs, read_gains, region_configs,
    roofline_time, static_shapes,
)
from onnx_amp.runtime.onnx_io import OnnxAmpError, load_model, save_model
from onnx_amp.runtime.targets import TARGET_DIR, load_target, target_from_dict


def mlp_model(m=4, k=8, n=16, symbolic=False, seed=0):
    """x[m,k] -> MatMul W1[k,n] -> Relu -> MatMul W2[n,k] -> Add x, annotated as one region, 2 units."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((k, n)).astype(np.float32)
    w2 = rng.standard_normal((n, k)).astype(np.float32)
    dims = ["batch", k] if symbolic else [m, k]
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("MatMul", ["r", "w2"], ["o"], name="mm2"),
         helper.make_node("Add", ["o", "x"], ["y"], name="add")],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = ir.from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)]))
    for node in model.graph:
        ann.set_str(node, ann.REGION, "r0")
    for i, name in enumerate(["mm1", "mm2"]):
        node = next(nd for nd in model.graph if nd.name == name)
        ann.set_str(node, ann.LAYER, f"L{i}")
        ann.set_str(node, ann.UNIT, f"U{i}")
        ann.set_str(node, ann.LAYER_KIND, "weight")
        ann.set_str(node, ann.WEIGHT_INPUT, "1")
        ann.set_str(node, ann.WEIGHT_AXIS, "1")
    ann.set_json(model, ann.REGIONS, {
        "version": 1,
        "regions": [{"id": "r0", "entry": "x", "exit": "y", "nodes": ["mm1", "relu", "mm2", "add"],
                     "layers": ["L0", "L1"], "units": {"U0": ["L0"], "U1": ["L1"]}}],
        "layers": {"L0": {"node": "mm1", "op": "MatMul", "kind": "weight", "unit": "U0", "region": "r0"},
                   "L1": {"node": "mm2", "op": "MatMul", "kind": "weight", "unit": "U1", "region": "r0"}},
    })
    return model


def toy_target(**over):
    d = json.loads((TARGET_DIR / "cpu.json").read_text())
    d["peak_flops"]["fp32"]["value"] = 1000.0  # FLOP/s
    d["peak_flops"]["int8"]["value"] = 4000.0
    d["memory_bandwidth"]["value"] = 100.0  # B/s
    d["boundary"]["per_element_s"]["value"] = 0.01
    d["boundary"]["per_node_s"]["value"] = 0.5
    for k, v in over.items():
        d[k] = v
    return target_from_dict(d, "toy")


def test_roofline_hand_computed():
    model = mlp_model()
    t = toy_target()
    shapes = static_shapes(model)
    costs = node_costs(model, shapes, t)
    mm1 = costs["mm1"]
    assert mm1.flops == 2 * 4 * 8 * 16 == 1024
    # fp32: bytes = A 32*4 + W 128*4 + out 64*4 = 896 -> 8.96 s; compute 1024/1000 = 1.024 s
    assert roofline_time(mm1, t) == pytest.approx(8.96)
    # int8: bytes = 32 + 128 + 256 = 416 -> 4.16 s; compute 1024/4000; + boundary 0.5 + 32*0.01
    assert roofline_time(mm1, t, ("int8", "int8")) == pytest.approx(4.16 + 0.5 + 0.32)
    # compute-bound when bandwidth is huge
    fast = toy_target(memory_bandwidth={"value": 1e12, "source": "x"})
    assert roofline_time(node_costs(model, shapes, fast)["mm1"], fast) == pytest.approx(1.024, rel=1e-6)
    # elementwise: Relu reads + writes 64 fp32 -> 512 B -> 5.12 s
    assert roofline_time(costs["relu"], t) == pytest.approx(5.12)


def test_memory_gain_exact():
    model = mlp_model()
    t = toy_target()
    costs = node_costs(model, static_shapes(model), t)
    # W1: 128 elements * (4 - 1) bytes - 16 channels * 4 B scale
    assert memory_gain(costs["mm1"], t, ("int8", "int8")) == 128 * 3 - 16 * 4
    assert memory_gain(costs["mm2"], t, ("int8", "int8")) == 128 * 3 - 8 * 4
    assert memory_gain(costs["mm1"], t, ("fp32", "fp32")) == 0
    h100 = load_target("h100")
    c = node_costs(model, static_shapes(model), h100)["mm1"]
    assert memory_gain(c, h100, ("fp8_e4m3", "fp8_e4m3")) == 128 * 1 - 16 * 4  # bf16 -> fp8
    assert memory_gain(c, h100, ("fp16", "fp16")) == 0  # same width, Cast lowering: no scale


def test_config_enumeration_and_cap():
    t = load_target("h100")  # 3 assignments
    cfgs, capped, method = region_configs(["U0", "U1"], t)
    assert len(cfgs) == 9 and not capped and method is None
    assert all(a == t.high for a in cfgs[0].values())
    assert len({tuple(c.values()) for c in cfgs}) == 9
    cfgs, capped, method = region_configs([f"U{i}" for i in range(5)], t)  # 243 > 64
    assert capped and "singles+prefixes" in method
    assert len(cfgs) == 1 + 2 * 5 + 2 * 4 <= 64
    assert all(a == t.high for a in cfgs[0].values())
    cfgs, capped, method = region_configs([f"U{i}" for i in range(40)], t)
    assert capped and "tied" in method and len(cfgs) <= 64
    keys = {tuple(c.values()) for c in cfgs}
    assert len(keys) == len(cfgs)  # no duplicates


def test_gains_pass_and_roundtrip(tmp_path):
    model = mlp_model()
    t = toy_target()
    GainsPass(t)(model)
    g = read_gains(model)
    r = g["regions"]["r0"]
    assert g["target"] == "cpu" and g["high"] == ["fp32", "fp32"]
    assert r["units"] == ["U0", "U1"] and len(r["configs"]) == 4 and r["capped"] is False
    c0 = r["configs"][0]
    assert c0["tt_gain_s"] == 0 and c0["mem_gain_bytes"] == 0 and c0["assign"] == {"U0": ["fp32", "fp32"], "U1": ["fp32", "fp32"]}
    both = next(c for c in r["configs"] if c["assign"] == {"U0": ["int8", "int8"], "U1": ["int8", "int8"]})
    singles = [c for c in r["configs"] if sorted(a[0] for a in c["assign"].values()) == ["fp32", "int8"]]
    # the roofline is additive over layers inside a region (no fusion modelled)
    assert both["tt_gain_s"] == pytest.approx(sum(c["tt_gain_s"] for c in singles))
    assert both["mem_gain_bytes"] == (128 * 3 - 64) + (128 * 3 - 32)
    p = tmp_path / "m.onnx"
    save_model(model, p)
    assert read_gains(load_model(p)) == g


def test_symbolic_shapes_fixed_by_batch():
    model = mlp_model(symbolic=True)
    t = toy_target()
    g1 = compute_gains(model, t, batch_size=1)
    g8 = compute_gains(model, t, batch_size=8)
    assert model.graph.inputs[0].shape[0] == ir.SymbolicDim("batch")  # input left unchanged
    t1 = g1["regions"]["r0"]["configs"][0]["tt_time_s"]
    t8 = g8["regions"]["r0"]["configs"][0]["tt_time_s"]
    assert t8 > t1 > 0


def test_measured_overrides_time_gain():
    model = mlp_model()
    t = toy_target()
    cfgs, _, _ = region_configs(["U0", "U1"], t)
    measured = {"r0": {config_key(c, ["U0", "U1"]): {"time_s": 1.0 - 0.1 * i, "time_gain_s": 0.1 * i,
                                                     "spread": 0.01, "noisy": i == 1}
                       for i, c in enumerate(cfgs)}}
    g = compute_gains(model, t, measured)
    rows = g["regions"]["r0"]["configs"]
    assert g["regions"]["r0"]["time_source"] == "measured"
    assert [r["time_gain_s"] for r in rows] == pytest.approx([0, 0.1, 0.2, 0.3])
    assert rows[1]["noisy"] is True and rows[2]["tt_gain_s"] != rows[2]["time_gain_s"]


def test_errors():
    model = mlp_model()
    del model.metadata_props[ann.REGIONS]
    with pytest.raises(OnnxAmpError, match="onnx-amp partition"):
        GainsPass("cpu")(model)
    with pytest.raises(OnnxAmpError, match="onnx-amp profile"):
        read_gains(mlp_model())
