"""The report renders from a saved annotated model + a results dict: files exist, numbers are in it."""

from __future__ import annotations


import onnx_ir as ir
import torch

from onnx_amp.passes import annotations as ann


def _planned_model(tmp_path, tiny_models) -> ir.Model:
    from onnx_amp.passes.gains import GainsPass
    from onnx_amp.passes.partition import PartitionPass
    from onnx_amp.passes.plan import ApplyPlanPass, Plan
    from onnx_amp.runtime.onnx_io import load_model, save_model

    module, args = tiny_models.tiny_attention()
    model = torch.onnx.export(module, kwargs=args, dynamo=True, opset_version=21).model
    PartitionPass()(model)
    GainsPass("gaudi2", None, 1, 5)(model)  # roofline table
    layers = ann.layer_nodes(model.graph)
    units = sorted({n.metadata_props[ann.UNIT] for n in layers})
    plan = Plan.from_json({"version": 1, "target": "gaudi2", "strategy": "ip", "tau": 1e-3,
                           "units": {units[0]: {"weight": "fp8_e4m3", "activation": "fp8_e4m3"}}})
    ApplyPlanPass(plan, target="gaudi2")(model)
    save_model(model, tmp_path / "planned.onnx")
    return load_model(tmp_path / "planned.onnx"), units


def test_report_files_and_numbers(tmp_path, tiny_models):
    from onnx_amp.runtime.report import chosen_region_gains, unit_precisions, write_report

    model, units = _planned_model(tmp_path, tiny_models)
    regions, prec = unit_precisions(model)
    assert prec[units[0]] == ("fp8_e4m3", "fp8_e4m3")
    assert all(prec[u] == ("bf16", "bf16") for u in units[1:])
    rows = chosen_region_gains(model, prec)
    assert rows and all(r is not None for r in rows.values())  # the plan's configs are in the gain table
    results = {
        "model": "tiny", "target": "gaudi2", "strategy": "ip", "metric": "tt", "tau": 1e-3,
        "predicted_mse": 3.25e-4, "measured_mse": 4.5e-4, "predicted_gain": 1.5e-6, "predicted_gain_s": 1.5e-6,
        "time_ref_s": 0.0123, "time_amp_s": 0.0101, "measured_gain_s": 0.0022,
        "task": {"name": "accuracy", "before": 0.875, "after": 0.8125, "higher_is_better": True},
        "pareto": [{"strategy": s, "tau": t, "gain": g, "predicted_mse": t * 0.9}
                   for s in ("ip", "greedy") for t, g in ((1e-4, 1e-7), (1e-3, 1.5e-6), (1e-2, 2e-6))],
        "stage_seconds": {"calibrate": 1.25}, "notes": ["a note"],
    }
    md = write_report(tmp_path / "rep", model, results)
    for f in ("precision_map.png", "loss_mse.png", "pareto.png", "time_gains.png", "task_metric.png"):
        p = tmp_path / "rep" / f
        assert p.exists() and p.stat().st_size > 2000 and p.read_bytes()[:4] == b"\x89PNG", f
    text = md.read_text()
    for s in ("0.000325", "0.00045", "12.3 ms", "10.1 ms", "2.2 ms", "0.875 / 0.8125", "fp8_e4m3: 1",
              f"regions / units | {len(regions)} / {len(units)}", "a note", "![pareto](pareto.png)"):
        assert s in text, s


def test_report_without_measurements(tmp_path, tiny_models):
    from onnx_amp.runtime.report import write_report

    model, _ = _planned_model(tmp_path, tiny_models)
    md = write_report(tmp_path / "r2", model, {})
    names = sorted(p.name for p in (tmp_path / "r2").iterdir())
    assert "precision_map.png" in names and "pareto.png" not in names and "loss_mse.png" not in names
    assert "n/a" in md.read_text()
