"""Real ORT profiling on small models (seconds): sharing, paired timing, gains annotation."""
import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_amp.passes import annotations as ann
from onnx_amp.passes.gains import GainsPass, config_key, read_gains
from onnx_amp.runtime.onnx_io import OnnxAmpError, load_model, save_model
from onnx_amp.runtime.profile import Timing, dedicate_dq, profile_model, structural_hash, time_paired
from onnx_amp.runtime.targets import load_target
from onnx_amp.tools.synthetic import deep_stack


def residual_stack(nblocks=3, d=64, h=256, seed=0, widths=None):
    """x -> nblocks x (MatMul -> Relu -> MatMul -> Add residual): one region per block (the
    benchmark's builder, block widths ``widths`` or ``h`` throughout), partitioned."""
    return deep_stack(nblocks, d, widths=tuple(widths or (h,)), seed=seed)


def test_structural_sharing_and_measured_table():
    model = residual_stack(nblocks=3, widths=[256, 256, 128])
    res = profile_model(model, "cpu", batch_size=32, repeats=3, warmup=1, progress=False)
    assert res.n_regions == 3
    assert res.n_unique == 2  # blocks 0 and 1 share; block 2 has another width
    assert res.n_sessions == 2 * 4  # 2 structures x 4 configurations (2 units, fp32/int8)
    shared = [rid for rid, tab in res.measured.items() if any(v["shared_with"] for v in tab.values())]
    assert len(shared) == 1
    for tab in res.measured.values():
        assert len(tab) == 4
        base = next(v for k, v in tab.items() if "int8" not in k)
        assert base["time_gain_s"] == 0 and base["time_s"] > 0
        for v in tab.values():
            assert v["spread"] >= 0 and v["rounds"] == 3 and isinstance(v["noisy"], bool)
    # identical structures got identical numbers
    r0, r1 = res.measured["r0"], res.measured["r1"]
    assert [v["time_s"] for v in r0.values()] == [v["time_s"] for v in r1.values()]
    # feeding into GainsPass makes time_gain_s the measured one
    GainsPass("cpu", res.measured, batch_size=32)(model)
    g = read_gains(model)
    assert all(r["time_source"] == "measured" for r in g["regions"].values())
    row = g["regions"]["r2"]["configs"][3]
    key = config_key({u: tuple(a) for u, a in row["assign"].items()}, g["regions"]["r2"]["units"])
    assert row["time_gain_s"] == res.measured["r2"][key]["time_gain_s"]


def test_share_off_measures_each_region():
    model = residual_stack(nblocks=2)
    res = profile_model(model, "cpu", batch_size=8, repeats=2, warmup=1, progress=False, share=False)
    assert res.n_unique == 2 and res.n_sessions == 8


def test_structural_hash_sees_attributes_and_shapes():
    a = helper.make_node("Transpose", ["x"], ["y"], perm=[1, 0])
    b = helper.make_node("Transpose", ["x"], ["y"], perm=[0, 1])
    na, nb = ir.serde.deserialize_node(a), ir.serde.deserialize_node(b)
    assert structural_hash([na], {}, []) != structural_hash([nb], {}, [])
    assert structural_hash([na], {"x": "FLOAT(2, 3)"}, []) != structural_hash([na], {"x": "FLOAT(3, 3)"}, [])
    assert structural_hash([na], {"x": "FLOAT(2, 3)"}, []) == structural_hash([na], {"x": "FLOAT(2, 3)"}, [])


def test_int8_region_is_lowered_and_fused():
    """The INT8 configuration really runs quantized (outputs differ from fp32, error small)."""
    from onnx_amp.passes.partition import extract_region
    from onnx_amp.runtime.profile import annotate_amax_from_run, lower_config, make_ort_session, run_with_values, sample_feeds

    model = residual_stack(nblocks=1, d=64, h=128)
    feeds = sample_feeds(model, batch_size=16)
    vals = run_with_values(model, feeds, ["x", "h0", "r0", "o0", "y0"])
    region = extract_region(model, "r0")
    annotate_amax_from_run(region, vals)
    assert ann.get_float(next(n for n in region.graph if n.name == "mm1_0"), ann.AMAX_A) == pytest.approx(
        np.abs(feeds["x"]).max())
    low = lower_config(region, {"U0": ("int8", "int8"), "U1": ("int8", "int8")}, load_target("cpu"))
    ops = [n.op_type for n in low.graph]
    assert ops.count("QuantizeLinear") >= 2 and "DequantizeLinear" in ops
    y = make_ort_session(low).run(None, {"x": feeds["x"]})[0]
    err = np.abs(y - vals["y0"]).max()
    assert 0 < err < 0.1 * np.abs(vals["y0"]).max()


def test_dedicate_dq_splits_shared_activation_dq():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
             helper.make_node("Relu", ["d"], ["a"]), helper.make_node("Neg", ["d"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["y"])]
    g = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], inits)
    m = ir.from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)]))
    assert dedicate_dq(m) == 1
    dqs = [n for n in m.graph if n.op_type == "DequantizeLinear"]
    assert len(dqs) == 2 and all(len(n.outputs[0].uses()) == 1 for n in dqs)


def test_paired_timing_flags_noise():
    import time

    def sleeper(s):
        return lambda: time.sleep(s)

    t = time_paired([sleeper(0.002), sleeper(0.0005), sleeper(0.002)], warmup=0, repeats=7)
    fast, same = t.summary(1), t.summary(2)
    assert fast["time_gain_s"] > 0.001 and not fast["noisy"]
    assert abs(same["time_gain_s"]) < 0.001
    manual = Timing([[1.0, 1.0, 1.0, 1.0], [0.9, 1.1, 0.95, 1.05]])
    assert manual.summary(1)["noisy"] is True  # the gain's sign is not settled


def test_measure_refuses_roofline_targets_and_unpartitioned():
    model = residual_stack(nblocks=1)
    with pytest.raises(OnnxAmpError, match="cannot be measured here"):
        profile_model(model, "h100", progress=False)
    del model.metadata_props[ann.REGIONS]
    with pytest.raises(OnnxAmpError, match="onnx-amp partition"):
        profile_model(model, "cpu", progress=False)


def test_cli_profile_roundtrip(tmp_path):
    from onnx_amp.tools.cli import main

    model = residual_stack(nblocks=2)
    p = tmp_path / "m.onnx"
    save_model(model, p)
    out = tmp_path / "m.cpu.onnx"
    assert main(["profile", str(p), "--target", "cpu", "--measure", "--batch_size", "16", "--repeats", "2",
                 "-o", str(out)]) == 0
    g = read_gains(load_model(out))
    assert g["target"] == "cpu" and g["measured_backend"] == "ort_cpu" and len(g["regions"]) == 2
    out2 = tmp_path / "m.h100.onnx"
    assert main(["profile", str(p), "--target", "h100", "-o", str(out2)]) == 0
    g2 = read_gains(load_model(out2))
    assert g2["high"] == ["bf16", "bf16"] and g2["regions"]["r0"]["time_source"] == "roofline"
    assert len(g2["regions"]["r0"]["configs"]) == 9
    assert main(["profile", str(p), "--target", "h100", "--measure", "-o", str(out2)]) == 2


def test_gpu_profile_dry_run(tmp_path):
    """tools/bench/gpu_profile.py on CPU (--dry-run): no GPU in CI; runs the script end to end as a user does."""
    import json
    import subprocess
    import sys

    model = residual_stack(nblocks=2, d=32, h=64)
    p = tmp_path / "m.onnx"
    save_model(model, p)
    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, "-m", "onnx_amp.tools.bench.gpu_profile", str(p), "--target", "h100",
                        "--dry-run", "--batch_size", "8", "--seq_len", "1", "--repeats", "2", "--warmup", "1",
                        "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())
    assert d["info"]["dry_run"] and d["info"]["distinct_structures"] == 1
    assert set(d["measured"]) == {"r0", "r1"} and len(d["measured"]["r0"]) == 4  # {bf16, fp8}^2
    g = GainsPass("h100", d["measured"], batch_size=8)
    g(model)
    rows = read_gains(model)["regions"]["r0"]["configs"]
    assert len(rows) == 9 and sum(1 for r in rows if "noisy" in r) == 4  # fp16 configs stay roofline
