"""A loss and a task metric for every kind of output, and calibration that degrades gracefully."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh

from onnx_amp.core import annotations as A
from onnx_amp.runtime.losses import output_mse_loss, resolve_loss


def classifier(final: str | None) -> ir.Model:
    """x[B,8] -> MatMul -> (final op) -> y[B,5]."""
    rng = np.random.default_rng(0)
    nodes = [h.make_node("MatMul", ["x", "w"], ["logits" if final is None else "z"], name="fc")]
    if final is not None:
        nodes.append(h.make_node(final, ["z"], ["logits"], axis=-1))
    g = h.make_graph(nodes, "clf", [h.make_tensor_value_info("x", TP.FLOAT, ["B", 8])],
                     [h.make_tensor_value_info("logits", TP.FLOAT, ["B", 5])],
                     [nh.from_array((rng.standard_normal((8, 5)) * 2).astype(np.float32), "w")])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 21)])
    m.ir_version = 10
    return ir.from_proto(m)


def segmenter(custom_op: bool = False, size: int = 16) -> ir.Model:
    """x[B,3,S,S] -> 3 x (Conv 3x3, Relu) -> Conv 1x1 -> Sigmoid -> prob[B,1,S,S]; with ``custom_op``
    a com.microsoft Gelu (which the torch interpreter lacks) replaces the second Relu."""
    rng = np.random.default_rng(1)
    nodes, inits, x = [], [], "x"
    for i, (ci, co) in enumerate([(3, 8), (8, 8), (8, 8)]):
        w = (rng.standard_normal((co, ci, 3, 3)) / np.sqrt(9 * ci)).astype(np.float32)
        inits.append(nh.from_array(w, f"w{i}"))
        nodes.append(h.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1] * 4, name=f"conv{i}"))
        if custom_op and i == 1:
            nodes.append(h.make_node("Gelu", [f"c{i}"], [f"r{i}"], domain="com.microsoft", name="gelu"))
        else:
            nodes.append(h.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        x = f"r{i}"
    inits.append(nh.from_array((rng.standard_normal((1, 8, 1, 1)) / 3).astype(np.float32), "wh"))
    nodes += [h.make_node("Conv", [x, "wh"], ["head"], name="head"), h.make_node("Sigmoid", ["head"], ["prob"])]
    opsets = [h.make_opsetid("", 17)] + ([h.make_opsetid("com.microsoft", 1)] if custom_op else [])
    g = h.make_graph(nodes, "seg", [h.make_tensor_value_info("x", TP.FLOAT, ["B", 3, size, size])],
                     [h.make_tensor_value_info("prob", TP.FLOAT, ["B", 1, size, size])], inits)
    m = h.make_model(g, opset_imports=opsets)
    m.ir_version = 8
    return ir.from_proto(onnx.shape_inference.infer_shapes(m))


@pytest.mark.parametrize("final, kind", [(None, "logits"), ("Softmax", "probs"), ("LogSoftmax", "log_probs")])
def test_probability_outputs_are_detected_and_not_softmaxed_twice(final, kind):
    model = classifier(final)
    spec = resolve_loss(None, model)
    assert spec.name == "classification" and spec.kind == kind
    torch.manual_seed(0)
    z = torch.randn(6, 5)
    out = {None: z, "Softmax": z.softmax(-1), "LogSoftmax": z.log_softmax(-1)}[final]
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    np.testing.assert_allclose(spec({"logits": out}, {"labels": labels}).numpy(),
                               F.cross_entropy(z, labels, reduction="none").numpy(), rtol=1e-5, atol=1e-6)


def test_output_mse_estimates_the_output_error():
    """<u, dy_n>^2 / numel averages to ||dy||^2 / numel over samples (one fixed random direction)."""
    torch.manual_seed(1)
    y = torch.randn(512, 2, 8, 8)
    dy = 1e-2 * torch.randn(512, 2, 8, 8)
    d_loss = output_mse_loss(y + dy) - output_mse_loss(y)
    assert torch.equal(output_mse_loss(y), output_mse_loss(y.clone()))  # the same directions every call
    est, true = float((d_loss ** 2).mean()), float((dy ** 2).mean())
    assert 0.85 < est / true < 1.15, (est, true)


def test_dense_output_run_uses_a_map_metric_and_lowers_layers(tmp_path):
    from onnx_amp.runtime.pipeline import optimize

    rng = np.random.default_rng(0)
    data = {"x": rng.standard_normal((24, 3, 16, 16)).astype(np.float32)}
    res = optimize(segmenter(), calibration_data=data, target="gaudi2", measure=False, metric="memory",
                   output_dir=tmp_path, name="seg",
                   pareto=False, progress=False, verbose=False, report=False, gaudi=False)
    assert res.task["name"].startswith("IoU of the 0.5-thresholded output")
    assert res.task["before"] == 1.0 and res.task["after"] >= 0.99  # the default 1 % bound
    assert res.plan["units"], "the default bound must lower what it safely can on a dense output"
    cal = A.get_json(res.model, A.CALIBRATION)
    assert cal["loss"]["name"] == "output_mse"


def test_an_op_the_interpreter_lacks_keeps_its_upstream_layers_high(tmp_path):
    from onnx_amp.runtime.pipeline import optimize

    rng = np.random.default_rng(0)
    data = {"x": rng.standard_normal((24, 3, 16, 16)).astype(np.float32)}
    res = optimize(segmenter(custom_op=True), calibration_data=data, target="gaudi2", measure=False, metric="memory",
                   tau_relative=1.0, output_dir=tmp_path, name="seg", pareto=False, progress=False, verbose=False,
                   report=False, gaudi=False)
    cal = A.get_json(res.model, A.CALIBRATION)
    assert cal["opaque_nodes"] == ["gelu"]
    kept = {u["layer"] for u in cal["unmatched"]}
    layer_of = {n.name: n.metadata_props[A.LAYER] for n in A.layer_nodes(res.model.graph)}
    assert kept == {layer_of["conv0"], layer_of["conv1"]}  # upstream of the opaque Gelu
    unit_of = {n.metadata_props[A.LAYER]: n.metadata_props[A.UNIT] for n in A.layer_nodes(res.model.graph)}
    lowered = set(res.plan["units"])
    assert lowered and not lowered & {unit_of[lid] for lid in kept}
    assert any("no calibration figures" in n for n in res.notes)


def _two_headed(size: int = 16) -> ir.Model:
    """x[B,8] -> fc1 -> Relu -> fc2 -> Softmax -> probs; beside it fc2's output -> com.microsoft Gelu
    (opaque to the interpreter) -> aux: a second output the loss does not read (like a label lookup)."""
    rng = np.random.default_rng(2)
    nodes = [h.make_node("MatMul", ["x", "w1"], ["h1"], name="fc1"), h.make_node("Relu", ["h1"], ["r1"]),
             h.make_node("MatMul", ["r1", "w2"], ["z"], name="fc2"),
             h.make_node("Softmax", ["z"], ["probs"], axis=-1),
             h.make_node("Gelu", ["z"], ["aux"], domain="com.microsoft", name="gelu")]
    inits = [nh.from_array(rng.standard_normal((8, size)).astype(np.float32) / 3, "w1"),
             nh.from_array(rng.standard_normal((size, 5)).astype(np.float32) / 4, "w2")]
    g = h.make_graph(nodes, "two", [h.make_tensor_value_info("x", TP.FLOAT, ["B", 8])],
                     [h.make_tensor_value_info("probs", TP.FLOAT, ["B", 5]),
                      h.make_tensor_value_info("aux", TP.FLOAT, ["B", 5])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    return ir.from_proto(onnx.shape_inference.infer_shapes(m))


def test_an_opaque_op_on_an_output_the_loss_ignores_keeps_every_layer():
    """Only an opaque node between a layer and the output the loss reads blocks its gradient."""
    from onnx_amp.runtime.calibrate import calibrate
    from onnx_amp.runtime.format_errors import measure_format_errors

    model = _two_headed()
    data = {"x": np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)}
    res = calibrate(model, data, output_name="probs", progress=False)
    assert res.opaque == ["gelu"] and res.spec.output == "probs"
    assert not res.unmatched, res.unmatched
    assert len(res.layers) == 2 and all(st.s_w > 0 for st in res.layers.values())
    measure_format_errors(model, data, res, ["int8"], progress=False)
    assert all(st.extra["w"]["int8"] > 0 for st in res.layers.values())


def test_the_measured_error_pass_survives_a_model_with_no_layer_left():
    """Every layer upstream of the opaque node: nothing to measure, and no crash on backward."""
    from onnx_amp.runtime.calibrate import calibrate
    from onnx_amp.runtime.format_errors import measure_format_errors

    model = _two_headed()
    data = {"x": np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)}
    res = calibrate(model, data, loss="output_mse", output_name="aux", progress=False)
    assert {u["node"] for u in res.unmatched} == {"fc1", "fc2"} and not res.layers
    measure_format_errors(model, data, res, ["int8"], progress=False)
    assert res.terms == {}


def test_a_loss_named_module_function(tmp_path, monkeypatch):
    (tmp_path / "my_losses.py").write_text(
        "def l1(output, batch):\n    return output.abs().reshape(output.shape[0], -1).mean(1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = resolve_loss("my_losses:l1", classifier(None))
    assert spec.name == "custom:l1" and spec.output == "logits"
    assert torch.allclose(spec({"logits": torch.ones(3, 5)}, {}), torch.ones(3))
    from onnx_amp.core.errors import OnnxAmpError

    with pytest.raises(OnnxAmpError, match="has no function 'nope'"):
        resolve_loss("my_losses:nope", classifier(None))


def test_run_cli_loss_flags_reach_every_stage(tmp_path):
    """``onnx-amp run --loss output_mse --loss_output z``: calibration and the held-out measurement
    use that loss on that output (not the one detection would pick), and a bad name is one line."""
    import subprocess
    import sys

    m = _two_headed()
    m.graph.outputs.pop()  # drop the opaque head: the model runs everywhere
    m.graph.node(4).outputs[0].name = "unused"
    m.graph.remove(m.graph.node(4), safe=True)
    z = next(n for n in m.graph if n.name == "fc2").outputs[0]
    m.graph.outputs.append(z)
    from onnx_amp.core.onnx_io import save_model

    save_model(m, tmp_path / "two.onnx")
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).standard_normal((24, 8)).astype(np.float32))
    cmd = [sys.executable, "-m", "onnx_amp.tools.cli", "run", str(tmp_path / "two.onnx"), "--calibration_data",
           str(tmp_path / "d.npz"), "--target", "gaudi2", "--no-pareto", "--tau_relative", "0.5", "-o", str(tmp_path / "o"),
           "--no-progress"]
    r = subprocess.run(cmd + ["--loss", "output_mse", "--loss_output", "z"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    from onnx_amp.core.onnx_io import load_model

    out = load_model(tmp_path / "o" / "two.amp.onnx")
    assert A.get_json(out, A.CALIBRATION)["loss"] == {"name": "output_mse", "output": "z", "kind": "logits"}
    bad = subprocess.run(cmd + ["--loss", "nope"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--loss" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_the_accuracy_search_announces_each_evaluation(tmp_path, capsys):
    """The search for the accuracy bound runs real evaluations; each one is a line (never silent)."""
    from onnx_amp.runtime.pipeline import optimize

    data = {"x": np.random.default_rng(0).standard_normal((24, 8)).astype(np.float32)}
    optimize(classifier(None), calibration_data=data, target="gaudi2", measure=False, metric="memory",
             output_dir=tmp_path, name="clf", pareto=False, progress=False, verbose=True, report=False, gaudi=False)
    lines = [x for x in capsys.readouterr().out.splitlines() if "accuracy bound, evaluation" in x]
    assert lines and lines[0].startswith("[onnx-amp]   accuracy bound, evaluation 1:"), lines
    assert all("unit(s) lowered" in x and "allowed drop 1.00%" in x for x in lines)
