"""End-to-end pipeline (``onnx_amp.optimize`` / ``onnx-amp run``) on small real models.

Everything is real: the dynamo exporter, torch-autograd calibration, ORT-timed profiling, the mip
integer program, the rewrite and ORT validation. The tiny MLP keeps the default tests at a few
seconds per stage; the paraphrase-MiniLM-L3 ONNX (not made by our exporter) runs the ONNX-only path
with real sentences.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
import torch

from onnx_amp.passes import annotations as ann
from onnx_amp.runtime.onnx_io import OnnxAmpError


def _load(name: str):
    """A helper module beside this file, without putting ``tests/`` on ``sys.path``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"onnx_amp_tests_{name}", Path(__file__).with_name(f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


tiny_models = _load("tiny_models")


def _export_tiny() -> ir.Model:
    """The export-time pass: passes run on the in-memory ``ir.Model`` of ``torch.onnx.export``."""
    from onnx_amp.passes.modules import AnnotateModulesPass
    from onnx_amp.passes.partition import PartitionPass

    module, args = tiny_models.tiny_mlp()
    prog = torch.onnx.export(module, args, dynamo=True, opset_version=21, dynamic_shapes=({0: "batch"},))
    model = prog.model
    assert isinstance(model, ir.Model)
    AnnotateModulesPass()(model)
    PartitionPass()(model)
    return model


def _data(n: int = 24, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((n, 16)).astype(np.float32)}


def test_export_time_pass_in_memory(tmp_path):
    model = _export_tiny()
    layers = ann.layer_nodes(model.graph)
    assert len(layers) == 5
    assert {n.metadata_props.get(ann.MODULE) for n in layers} >= {"blocks.0.fc1", "blocks.1.fc2", "head"}
    import onnx_amp

    res = onnx_amp.optimize(model, calibration_data=_data(), output_dir=tmp_path, name="tiny", tau_relative=0.5,
                            profile_repeats=3, progress=False, verbose=False)
    names = sorted(p.name for p in tmp_path.iterdir())
    for f in ("tiny.amp.onnx", "tiny.amp.deploy.onnx", "plan.json", "tiny.gaudi_fp8.json", "report.md",
              "precision_map.png", "time_gains.png"):
        assert f in names, names
    assert not [n for n in names if n.startswith(".")], names  # temp folder gone
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["target"] == "cpu" and plan["strategy"] == "ip"
    assert res.predicted_mse <= res.tau * (1 + 1e-6)
    assert np.isfinite(res.measured_mse) and res.measured_mse >= 0
    assert res.task["name"] == "top-1 agreement with high precision" and 0 <= res.task["after"] <= 1
    # the emulate model runs in ORT and the precision annotations survived
    from onnx_amp.runtime.ort_session import make_session, run
    out = run(make_session(tmp_path / "tiny.amp.onnx"), {"x": _data(2)["x"]})
    assert np.isfinite(next(iter(out.values()))).all()
    amp = ir.load(tmp_path / "tiny.amp.onnx")
    assert all(ann.PRECISION in n.metadata_props for n in ann.layer_nodes(amp.graph))
    # Gaudi config names the torch modules kept high (cpu target has no FP8: all of them)
    g = json.loads((tmp_path / "tiny.gaudi_fp8.json").read_text())
    assert r"^blocks\.0\.fc1$" in g["blocklist"]["names"]
    md = (tmp_path / "report.md").read_text()
    assert f"{res.measured_mse:.4g}" in md and f"{res.predicted_mse:.4g}" in md
    assert "measured" in res.summary() and "predicted" in res.summary()


def test_keep_intermediate_and_rerun_from_stage(tmp_path):
    from onnx_amp.runtime.onnx_io import save_model

    src = tmp_path / "in"
    src.mkdir()
    save_model(_export_tiny(), src / "tiny.onnx")
    before = sorted(p.name for p in src.iterdir())
    out = tmp_path / "out"
    res = __import__("onnx_amp").optimize(src / "tiny.onnx", calibration_data=_data(), output_dir=out,
                                          keep_intermediate=True, tau=1e9, measure=False, pareto=False,
                                          progress=False, verbose=False)
    assert sorted(p.name for p in src.iterdir()) == before  # input untouched
    for stage in ("calibrated", "gains", "planned"):
        assert (out / f"tiny.{stage}.onnx").exists(), stage
    assert res.strategy == "ip"
    # re-run from the saved gains stage: partition/calibrate/gains are not redone
    from onnx_amp.runtime.pipeline import optimize

    res2 = optimize(out / "tiny.gains.onnx", calibration_data=_data(), output_dir=tmp_path / "out2", name="again",
                    tau=1e9, measure=False, pareto=False, progress=False, verbose=False, gaudi=False, report=False)
    assert "calibrate" not in res2.stage_seconds
    assert res2.plan["units"] == res.plan["units"]
    assert (tmp_path / "out2" / "again.amp.onnx").exists()


def test_bad_inputs_leave_no_outputs(tmp_path):
    from onnx_amp.runtime.onnx_io import save_model
    from onnx_amp.runtime.pipeline import optimize

    out = tmp_path / "out"
    with pytest.raises(OnnxAmpError, match="no such file"):
        optimize(tmp_path / "missing.onnx", calibration_data=_data(), output_dir=out, verbose=False)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(OnnxAmpError, match="bad.onnx"):
        optimize(bad, calibration_data=_data(), output_dir=out, verbose=False)
    save_model(_export_tiny(), tmp_path / "tiny.onnx")
    wrong = {"y": np.zeros((4, 16), np.float32)}  # the model's input is x
    with pytest.raises(OnnxAmpError):
        optimize(tmp_path / "tiny.onnx", calibration_data=wrong, output_dir=out, verbose=False, progress=False)
    with pytest.raises(OnnxAmpError, match="at most one"):
        optimize(tmp_path / "tiny.onnx", calibration_data=_data(), tau=1.0, tau_relative=0.1, output_dir=out)
    assert not out.exists(), "a failed run leaves no output folder behind"


def test_cli_run(tmp_path, capsys):
    from onnx_amp.runtime.onnx_io import save_model
    from onnx_amp.tools.cli import main

    save_model(_export_tiny(), tmp_path / "tiny.onnx")
    np.savez(tmp_path / "calib.npz", **_data())
    rc = main(["run", str(tmp_path / "tiny.onnx"), "--calibration_data", str(tmp_path / "calib.npz"),
               "--tau_relative", "0.2", "--no-measure", "--no-progress", "--target", "gaudi2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "loss MSE   predicted" in out and "measured" in out
    assert (tmp_path / "tiny.amp.onnx").exists() and (tmp_path / "plan.json").exists()
    g = json.loads((tmp_path / "tiny.gaudi_fp8.json").read_text())
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["target"] == "gaudi2"
    # every module whose unit is not FP8 in the plan is blocked, and only those
    m = ir.load(tmp_path / "tiny.amp.onnx")
    high = {n.metadata_props[ann.MODULE] for n in ann.layer_nodes(m.graph)
            if not ann.parse_precision(n.metadata_props[ann.PRECISION])[1].startswith("fp8")}
    assert sorted(g["blocklist"]["names"]) == sorted("^" + __import__("re").escape(x) + "$" for x in high)


@pytest.mark.slow
def test_paraphrase_onnx_only(paraphrase_onnx, tmp_path):
    """The ready-made ONNX (no torch model, no module paths), real sentences, gaudi2 roofline."""
    from onnx_amp.runtime import subjects as S
    from onnx_amp.runtime.pipeline import optimize

    texts, _ = S.rotten_tomatoes("calib")
    data = S.minilm_tokenize(texts[:12], max_len=32)
    res = optimize(paraphrase_onnx, calibration_data=data, validation_samples=4, target="gaudi2",
                   tau_relative=0.05, output_dir=tmp_path, name="para", progress=False, verbose=False)
    assert (tmp_path / "para.amp.onnx").exists() and (tmp_path / "para.gaudi_fp8.json").exists()
    assert np.isfinite(res.measured_mse)
    assert res.predicted_mse <= res.tau * (1 + 1e-6)
    assert any("no torch module path" in n for n in res.notes)


def test_accuracy_drop_bisection(tmp_path):
    """``accuracy_drop``: bisection over tau with real ORT evaluations of the rewritten model."""
    from onnx_amp.runtime.pipeline import optimize

    res = optimize(_export_tiny(), calibration_data=_data(40), validation_samples=16, accuracy_drop=0.05,
                   target="cpu", metric="memory", measure=False, pareto=False, output_dir=tmp_path, name="tiny",
                   progress=False, verbose=False, report=False)
    assert res.task["name"] == "top-1 agreement with high precision"
    assert res.task["after"] >= 0.95 - 1e-9  # within the allowed drop on the held-out samples
    assert res.tau > 0 and (tmp_path / "tiny.amp.onnx").exists()
    assert len(res.plan["units"]) >= 1  # memory gain: the bisection did lower something


@pytest.mark.parametrize("strategy", ["pareto-greedy", "ip-pairs"])
def test_measured_strategies_in_the_pipeline(tmp_path, strategy):
    """Strategies that measure their inputs (per-unit loss, pair terms) run inside ``optimize``."""
    from onnx_amp.runtime.pipeline import optimize

    res = optimize(_export_tiny(), calibration_data=_data(40), validation_samples=16, accuracy_drop=0.05,
                   strategy=strategy, target="cpu", metric="memory", measure=False, pareto=False,
                   output_dir=tmp_path, name="tiny", progress=False, verbose=False, report=False)
    assert res.plan["strategy"] == strategy and len(res.plan["units"]) >= 1
    assert res.task["after"] >= 0.95 - 1e-9
