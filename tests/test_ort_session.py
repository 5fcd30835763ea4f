"""make_session (FP8-safe options, INT8 fusion, external data), run, measured_loss_mse; the rewrite CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh

from onnx_amp.passes import annotations as A
from onnx_amp.passes.partition import PartitionPass
from onnx_amp.passes.plan import ApplyPlanPass, Plan, uniform_plan
from onnx_amp.passes.rewrite import RewritePass
from onnx_amp.runtime.losses import classification_loss, resolve_loss
from onnx_amp.runtime.onnx_io import OnnxAmpError, load_model, save_model
from onnx_amp.runtime.ort_session import FP8_DISABLED_OPTIMIZERS, make_session, measured_loss_mse, run


def _classifier(opset: int = 21) -> ir.Model:
    g = np.random.default_rng(0)
    f = lambda *s: (g.standard_normal(s) * 0.4).astype(np.float32)  # noqa: E731
    nodes = [h.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), h.make_node("Relu", ["h"], ["hr"], name="relu"),
             h.make_node("MatMul", ["hr", "w2"], ["logits"], name="fc2")]
    graph = h.make_graph(nodes, "clf", [h.make_tensor_value_info("x", TP.FLOAT, ["B", 32])],
                         [h.make_tensor_value_info("logits", TP.FLOAT, ["B", 5])],
                         [nh.from_array(f(32, 64), "w1"), nh.from_array(f(64, 5), "w2")])
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 10
    model = ir.from_proto(m)
    PartitionPass()(model)
    for n in A.layer_nodes(model.graph):
        n.metadata_props[A.AMAX_A] = "4.0" if n.name == "fc1" else "12.0"
    return model


def _batches(n=4, b=8, seed=0):
    g = np.random.default_rng(seed)
    return [{"x": g.standard_normal((b, 32)).astype(np.float32)} for _ in range(n)]


def _lowered(fmt, form="emulate"):
    m = _classifier()
    ApplyPlanPass(uniform_plan(m, fmt, fmt))(m)
    return RewritePass(form)(m).model


def test_fp8_session_options_give_the_defined_qdq_math():
    """make_session runs FP8 Q/DQ with the QDQ fusions off, and gets exactly the math ONNX defines
    (the same model with every ORT optimization off), whatever ORT's default options do with it: they
    failed at session creation before onnxruntime 1.32; 1.32.0 creates the session but its fused
    kernels return wrong logits (max abs error 10 on this model, measured). Neither is asserted
    here: only that the workaround keeps giving the defined result."""
    out = _lowered("fp8_e4m3")
    proto = ir.to_proto(out).SerializeToString()
    x = _batches(1)[0]
    sess = make_session(out)
    assert sess._onnx_amp_fp8
    ours = run(sess, x)["logits"]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    ok = ort.InferenceSession(proto, so, providers=["CPUExecutionProvider"], disabled_optimizers=FP8_DISABLED_OPTIMIZERS)
    np.testing.assert_array_equal(ok.run(None, x)[0], ours)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(proto, so, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(plain.run(None, x)[0], ours, rtol=1e-5, atol=1e-5)
    # and the FP8 result is the FP8 one: it differs from the FP32 model by more than rounding noise
    fp32 = run(make_session(_classifier()), x)["logits"]
    assert 1e-4 < np.abs(fp32 - ours).max() < 0.2 * np.abs(fp32).max()


def test_external_data_in_memory_and_path(tmp_path):
    out = _lowered("int8")
    p = save_model(out, tmp_path / "m.onnx")  # weights in m.onnx.data
    assert (tmp_path / "m.onnx.data").exists()
    lazy = load_model(p)
    assert any(isinstance(v.const_value, ir.ExternalTensor) for v in lazy.graph.initializers.values())
    x = _batches(1)[0]
    y1 = run(make_session(lazy), x)["logits"]
    y2 = run(make_session(p), x)["logits"]
    y3 = run(make_session(out), x)["logits"]
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(y1, y3)
    with pytest.raises(OnnxAmpError, match="inputs \\['x'\\] missing"):
        run(make_session(p), {"y": x["x"]})
    with pytest.raises(OnnxAmpError, match="no such file"):
        make_session(tmp_path / "nope.onnx")


def test_measured_loss_mse():
    ref = _classifier()
    batches = _batches()
    # identical model: zero
    mse0, d0 = measured_loss_mse(ref, ref.clone(), batches, progress=False)
    assert mse0 == 0.0 and d0.shape == (32,)
    plan = _lowered("fp8_e4m3")
    mse, d = measured_loss_mse(ref, plan, batches, loss_fn="classification", progress=False)
    # by hand: unlabeled classification scores both against the reference's argmax
    r = make_session(ref)
    q = make_session(plan)
    want = []
    for b in batches:
        lr = torch.from_numpy(run(r, b)["logits"])
        lq = torch.from_numpy(run(q, b)["logits"])
        want.append((classification_loss(lq, None, lr) - classification_loss(lr, None, lr)).double().numpy())
    want = np.concatenate(want)
    np.testing.assert_allclose(d, want, rtol=1e-6, atol=1e-9)
    assert mse == pytest.approx(float(np.mean(want ** 2))) and mse > 0
    # coarser format -> larger loss error
    mse8, _ = measured_loss_mse(ref, _lowered("fp8_e5m2"), batches, progress=False)
    mse16, _ = measured_loss_mse(ref, _lowered("bf16"), batches, progress=False)
    assert mse16 < mse and mse16 < mse8
    # labels given: CE against them
    lab = [dict(b, labels=np.arange(8) % 5) for b in batches]
    mse_l, _ = measured_loss_mse(ref, plan, lab, loss_fn=resolve_loss("classification", ref), progress=False)
    assert mse_l > 0 and mse_l != mse
    # an ORT CalibrationDataReader works as the batches
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches)

        def get_next(self):
            return next(self.it, None)

    mse_r, _ = measured_loss_mse(ref, plan, Reader(), loss_fn="classification", progress=False)
    assert mse_r == mse
    with pytest.raises(OnnxAmpError, match="at least one batch"):
        measured_loss_mse(ref, plan, [], progress=False)


def test_measured_loss_nonfinite():
    ref = _classifier()
    bad = [{"x": np.full((2, 32), np.inf, np.float32)}]
    with pytest.raises(OnnxAmpError, match="non-finite"):
        measured_loss_mse(ref, _lowered("bf16"), bad, progress=False)


# ---- the CLI --------------------------------------------------------------------------------------

def _cli(*args):
    return subprocess.run([sys.executable, "-m", "onnx_amp.tools.cli", "rewrite", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def calibrated_file(tmp_path):
    m = _classifier(opset=18)
    return save_model(m, tmp_path / "clf.onnx")


def test_cli_plan_and_uniform(tmp_path, calibrated_file):
    m = load_model(calibrated_file)
    units = sorted({n.metadata_props[A.UNIT] for n in A.layer_nodes(m.graph)})
    Plan(units={units[0]: ("fp8_e4m3", "fp8_e4m3")}).save(tmp_path / "plan.json")
    out = tmp_path / "out.onnx"
    r = _cli(calibrated_file, "--plan", tmp_path / "plan.json", "-o", out)
    assert r.returncode == 0, r.stderr
    om = load_model(out)
    assert sum(n.op_type == "QuantizeLinear" for n in om.graph) == 1 and om.opset_imports[""] == 21
    onnx.checker.check_model(str(out), full_check=True)
    # uniform int8 with an excluded node; default output name <model>.amp.onnx
    r = _cli(calibrated_file, "--quantize_mode", "int8", "--nodes_to_exclude", "fc2", "--save_plan", tmp_path / "u.json")
    assert r.returncode == 0, r.stderr
    om = load_model(tmp_path / "clf.amp.onnx")
    prec = {n.name: n.metadata_props[A.PRECISION] for n in A.layer_nodes(om.graph)}
    assert prec == {"fc1": "w=int8,a=int8", "fc2": "w=fp32,a=fp32"}
    assert Plan.load(tmp_path / "u.json").extra["nodes_to_exclude"] == ["fc2"]
    # deploy bf16
    r = _cli(calibrated_file, "--quantize_mode", "bf16", "--form", "deploy")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "clf.amp.deploy.onnx").exists()


@pytest.mark.parametrize("plan,args,msg", [
    ({"units": {"U77": {"weight": "bf16", "activation": "bf16"}}}, [], "unknown unit/layer ids U77"),
    ({"units": {"U0": {"weight": "fp6", "activation": "fp6"}}}, [], "unknown formats 'fp6'"),
    ({"units": {"U0": {"weight": "int8", "activation": "int8"}}}, ["--target", "gaudi2"], "target gaudi2 lacks"),
    ({"target": "cpu", "units": {"U0": {"weight": "fp8_e4m3", "activation": "fp8_e4m3"}}}, [], "target cpu lacks"),
])
def test_cli_bad_plans(tmp_path, calibrated_file, plan, args, msg):
    import json

    (tmp_path / "p.json").write_text(json.dumps(plan))
    out = tmp_path / "o.onnx"
    r = _cli(calibrated_file, "--plan", tmp_path / "p.json", "-o", out, *args)
    assert r.returncode == 2 and msg in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1  # one line
    assert not out.exists() and not (tmp_path / "o.onnx.data").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clf.onnx", "clf.onnx.data", "p.json"]


def test_cli_missing_amax(tmp_path, calibrated_file):
    m = load_model(calibrated_file)
    for n in A.layer_nodes(m.graph):
        del n.metadata_props[A.AMAX_A]
    raw = save_model(m, tmp_path / "raw.onnx")
    r = _cli(raw, "--quantize_mode", "int8", "-o", tmp_path / "o.onnx")
    assert r.returncode == 2 and "run onnx-amp calibrate first" in r.stderr
    assert not (tmp_path / "o.onnx").exists()
    r = _cli(raw, "--quantize_mode", "fp16", "-o", tmp_path / "o16.onnx")  # no amax needed
    assert r.returncode == 0, r.stderr
    r = _cli(raw, "-o", tmp_path / "x.onnx")  # no --plan: the plan the model carries, and this one carries none
    assert r.returncode == 2 and "carries no plan" in r.stderr and "--plan" in r.stderr


def test_fp8_clip_before_q_runs_with_the_session_options():
    """Conv -> Clip (ReLU6) -> Conv in FP8 runs, as defined, with make_session's options (ORT's
    ClipQuantRewrite aborts on a float8 zero point in the releases we know)."""
    g = np.random.default_rng(1)
    nodes = [h.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             h.make_node("Clip", ["c1", "lo", "hi"], ["r"], name="relu6"),
             h.make_node("Conv", ["r", "w2"], ["y"], name="conv2")]
    graph = h.make_graph(nodes, "cnn", [h.make_tensor_value_info("x", TP.FLOAT, [1, 3, 8, 8])],
                         [h.make_tensor_value_info("y", TP.FLOAT, [1, 4, 8, 8])],
                         [nh.from_array((g.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w1"),
                          nh.from_array((g.standard_normal((4, 8, 1, 1)) * 0.3).astype(np.float32), "w2"),
                          nh.from_array(np.array(0.0, np.float32), "lo"), nh.from_array(np.array(6.0, np.float32), "hi")])
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", 21)])
    m.ir_version = 10
    model = ir.from_proto(m)
    PartitionPass()(model)
    for n in A.layer_nodes(model.graph):
        n.metadata_props[A.AMAX_A] = "3.0"
    ApplyPlanPass(uniform_plan(model, "fp8_e4m3"))(model)
    out = RewritePass("emulate")(model).model
    x = {"x": g.standard_normal((1, 3, 8, 8)).astype(np.float32)}
    y = run(make_session(out), x)["y"]
    y_unopt = run(make_session(out, optimize=False), x)["y"]
    np.testing.assert_array_equal(y, y_unopt)
    # without ClipQuantRewrite disabled, onnxruntime 1.31/1.32 abort at session creation on the float8
    # zero point; a release that builds the session must still give the same result
    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(ir.to_proto(out).SerializeToString(), so, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=["QDQSelectorActionTransformer", "ReluQuantRewrite"])
    except Exception as e:  # noqa: BLE001 (the known failure, nothing else)
        assert any(k in str(e) for k in ("zero_point", "ClipQuant", "float8")), e
    else:
        np.testing.assert_array_equal(sess.run(None, x)[0], y_unopt)
