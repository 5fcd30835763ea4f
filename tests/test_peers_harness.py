"""The peer benchmark's pieces that run without the peers' venvs (tools/bench/peers, issue 16): the
bound check, a missing venv becoming that peer's row, the ORT options a variant carries, the report."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from onnx_amp.tools.bench.peers import _common as C
from onnx_amp.tools.bench.peers import evaluate as E
from onnx_amp.tools.bench.peers import report
from onnx_amp.tools.bench.peers import run as R


def test_within_bound_both_directions():
    assert C.within("accuracy", 0.80, 0.792, 0.01)
    assert not C.within("accuracy", 0.80, 0.79, 0.01)
    assert C.within("perplexity", 10.0, 10.1, 0.01)
    assert not C.within("perplexity", 10.0, 10.2, 0.01)


def test_metric_definitions():
    logits = np.array([[0.1, 2.0], [3.0, 0.0], [0.0, 1.0]])
    per = C.sample_losses("accuracy", logits, {})
    assert C.metric_from("accuracy", per, np.array([1, 0, 0])) == 2 / 3
    ids = np.array([[0, 1, 0]])
    lg = np.zeros((1, 3, 2))
    ce = C.sample_losses("perplexity", lg, {"input_ids": ids})
    assert np.isclose(C.metric_from("perplexity", ce, None), 2.0)  # uniform over 2 tokens


def test_missing_venv_is_the_peers_row(tmp_path, monkeypatch):
    monkeypatch.setenv("PEER_ENVS", str(tmp_path / "envs"))
    (tmp_path / "setup-aimet.log").write_text("WARNING: Location 'x' is ignored\nERROR: No matching distribution\n")
    info = {"subject": "minilm-sentiment", "fp32": "m.onnx", "metric": "accuracy", "drop": 0.01}
    args = SimpleNamespace(fresh=False, budget_s=10)
    rows = R.run_peer(info, "aimet", tmp_path, args)
    assert len(rows) == 1 and rows[0]["tool"] == "aimet"
    assert "not set up" in rows[0]["error"] and "No matching distribution" in rows[0]["error"]
    assert "WARNING: Location" not in rows[0]["error"]
    assert not (tmp_path / "minilm-sentiment" / "aimet" / "result.json").exists()


def test_session_options_of_a_variant():
    assert E.disabled_optimizers({"session": "onnx-amp"}) == ("CommonSubexpressionElimination",)
    assert E.disabled_optimizers({"disabled_optimizers": ["QDQPropagationTransformer"]}) == (
        "QDQPropagationTransformer",)
    assert E.disabled_optimizers({}) == ()


def test_report_lists_rows_failures_and_verdicts(tmp_path: Path):
    rows = [
        {"tool": "fp32", "name": "fp32 (ORT)", "backend": "ort_cpu", "metric_val": 0.8, "within_val": True,
         "time_ms": 10.0, "speedup_vs_fp32_ort": 1.0, "speedup_vs_fp32_same_backend": 1.0, "size_mb": 4.0},
        {"tool": "onnx-amp", "name": "onnx-amp", "backend": "ort_cpu", "metric_val": 0.8, "within_val": True,
         "time_ms": 5.0, "speedup_vs_fp32_ort": 2.0, "speedup_vs_fp32_same_backend": 2.0, "size_mb": 1.0},
        {"tool": "ort", "name": "ort-int8", "backend": "ort_cpu", "metric_val": 0.79, "within_val": True,
         "time_ms": 6.0, "speedup_vs_fp32_ort": 1.67, "speedup_vs_fp32_same_backend": 1.67, "size_mb": 1.0},
        {"tool": "aimet", "name": "aimet", "error": "venv /x not set up: no wheel"},
    ]
    res = {"subject": "minilm-sentiment", "metric": "accuracy", "drop": 0.01, "rows": rows,
           "timing": {"skipped": True}, "samples": {"val": 64, "test": 256}}
    md = "\n".join(report.subject_md(res))
    assert "| ort | ort-int8 |" in md and "`venv /x not set up: no wheel`" in md
    assert "vs ort-int8 (within the bound on the held-out samples): onnx-amp wins, 1.20x" in md
    report.write([res], tmp_path, SimpleNamespace(out=str(tmp_path)))
    assert json.loads((tmp_path / "peers.json").read_text())["results"][0]["subject"] == "minilm-sentiment"
