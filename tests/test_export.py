"""torch -> ONNX export: module annotations, and the real subjects really work."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch

from onnx_amp.passes.annotations import MODULE, TORCH_NAME_SCOPES
from onnx_amp.passes.modules import AnnotateModulesPass, module_path, parse_name_scopes
from onnx_amp.runtime import subjects
from onnx_amp.runtime.export import export_model, to_ir

HERE = Path(__file__).parent


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_parse_name_scopes():
    s = "['', 'lm', 'lm.model.layers.0', 'lm.model.layers.0.self_attn.q_proj', 'linear']"
    assert parse_name_scopes(s)[-1] == "linear"
    assert module_path(parse_name_scopes(s)) == "lm.model.layers.0.self_attn.q_proj"
    assert module_path(parse_name_scopes(s), strip_prefix="lm.") == "model.layers.0.self_attn.q_proj"
    assert module_path(parse_name_scopes("['', 'softmax']")) == ""
    assert module_path(parse_name_scopes("['', 'lm', 'softmax']"), strip_prefix="lm.") == ""


def test_module_function_export_annotates_every_module_node(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny_models", HERE / "tiny_models.py")
    tm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tm)
    module, ex = tm.tiny_attention()
    out = export_model(f"{HERE / 'tiny_models.py'}:tiny_attention", tmp_path / "att.onnx", verbose=False)
    assert out.exists() and (tmp_path / "att.onnx.data").exists()
    m = ir.load(out)
    assert m.opset_imports[""] <= 21
    inp = m.graph.inputs[0]
    assert inp.name == "x" and not isinstance(inp.shape[0], int)  # dynamic batch
    mods = {}
    for n in m.graph:
        scopes = n.metadata_props.get(TORCH_NAME_SCOPES)
        assert scopes is not None
        assert MODULE in n.metadata_props
        deepest = [s for s in ast.literal_eval(scopes)[:-1] if s]
        assert n.metadata_props[MODULE] == (deepest[-1] if deepest else "")
        mods.setdefault(n.op_type, []).append(n.metadata_props[MODULE])
    # linear layers carry their own module, the two attention matmuls the attention block
    gemm_like = sorted(mods.get("Gemm", []) + [p for p in mods.get("MatMul", []) if p != "attn"])
    assert set(gemm_like) == {"attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc1", "mlp.fc2", "head"}
    assert mods["MatMul"].count("attn") == 2
    # and the graph computes what torch computes, for another batch size
    x = torch.randn(4, 5, 16)
    with torch.no_grad():
        ref = module(x).numpy()
    got = _session(out).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_annotate_pass_runs_on_in_memory_program(tiny_models):
    """The pass works on the ir.Model that torch.onnx.export returns, before saving."""
    module, ex = tiny_models.tiny_mlp()
    prog = torch.onnx.export(module, ex, dynamo=True, opset_version=21)
    model = prog.model
    assert all(MODULE not in n.metadata_props for n in model.graph)
    result = AnnotateModulesPass()(model)
    assert result.modified
    gemms = [n.metadata_props[MODULE] for n in model.graph if n.op_type in ("Gemm", "MatMul")]
    assert gemms == ["blocks.0.fc1", "blocks.0.fc2", "blocks.1.fc1", "blocks.1.fc2", "head"]
    # idempotent, and the exporter's own keys survive
    assert not AnnotateModulesPass()(model).modified
    assert all(TORCH_NAME_SCOPES in n.metadata_props for n in model.graph)
    # also via to_ir
    m2 = to_ir(module, ex)
    assert [n.metadata_props[MODULE] for n in m2.graph if n.op_type == "Gemm"] == gemms


@pytest.mark.slow
def test_smollm2_onnx_matches_torch(smollm2_onnx, smollm2_data):
    m = ir.load(smollm2_onnx)
    names = [v.name for v in m.graph.inputs]
    assert names == ["input_ids"]
    mods = [n.metadata_props.get(MODULE) for n in m.graph if n.op_type == "MatMul"]
    assert "model.layers.0.self_attn.q_proj" in mods and "model.layers.29.mlp.down_proj" in mods
    assert mods.count("model.layers.3.self_attn") == 2  # QK^T and PV
    ids = smollm2_data["input_ids"][:2, :24]
    got = _session(smollm2_onnx).run(["logits"], {"input_ids": ids})[0]
    model = subjects.load_smollm2()
    with torch.no_grad():
        ref = model(torch.from_numpy(ids)).numpy()
    assert got.shape == ref.shape == (2, 24, 49152)
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=2e-4)
    assert np.abs(got - ref).max() < 1e-3
    # and it is a language model: next-token loss on wikipedia is far below uniform (ln 49152 = 10.8)
    loss = subjects.per_sample_loss("smollm2", torch.from_numpy(got), torch.from_numpy(ids))
    assert float(loss.mean()) < 5.0


@pytest.mark.slow
def test_minilm_sentiment_heldout_accuracy(minilm_onnx):
    batch = subjects.minilm_batch(400, "eval", max_len=64, seed=0)
    sess = _session(minilm_onnx)
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask"]
    logits = sess.run(["logits"], {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})[0]
    assert logits.shape == (400, 2)
    acc = float((logits.argmax(1) == batch["labels"]).mean())
    assert acc > 0.70, acc
    # the test split is disjoint from the sentences the head was fitted on
    train, _ = subjects.rotten_tomatoes("train")
    ev, _ = subjects.rotten_tomatoes("eval")
    assert not set(train) & set(ev)


@pytest.mark.slow
def test_effnet_cat_and_espresso(effnet_onnx):
    m = ir.load(effnet_onnx)
    assert any(n.metadata_props.get(MODULE) == "_blocks.15._project_conv" for n in m.graph if n.op_type == "Conv")
    sess = _session(effnet_onnx)
    batch = subjects.photo_batch(11, "eval")
    names = subjects.photo_names(11, "eval")
    logits = sess.run(["logits"], {"pixel_values": batch["pixel_values"]})[0]
    top = dict(zip(names, logits.argmax(1)))
    cat_classes = {281, 282, 283, 284, 285, 286, 287}  # tabby, tiger cat, Persian, Siamese, Egyptian cat, ...
    assert top["chelsea"] in cat_classes, subjects.imagenet_class_name(top["chelsea"])
    assert subjects.imagenet_class_name(top["coffee"]).startswith("espresso")
    # ONNX Runtime agrees with torch
    model = subjects.load_effnet_lite0()
    with torch.no_grad():
        ref = model(torch.from_numpy(batch["pixel_values"][:4])).numpy()
    np.testing.assert_allclose(logits[:4], ref, rtol=1e-3, atol=1e-3)


def test_subject_data_helpers_shapes():
    b = subjects.minilm_batch(8, "calib", max_len=32, seed=3)
    assert b["input_ids"].shape == (8, 32) and b["attention_mask"].shape == (8, 32)
    assert b["input_ids"].dtype == np.int64 and set(np.unique(b["labels"])) <= {0, 1}
    b2 = subjects.minilm_batch(8, "calib", max_len=32, seed=3)
    np.testing.assert_array_equal(b["input_ids"], b2["input_ids"])  # deterministic
    p = subjects.photo_batch(3, "calib", seed=1)
    assert p["pixel_values"].shape == (3, 3, 224, 224) and p["pixel_values"].dtype == np.float32
    assert -1.0 <= p["pixel_values"].min() and p["pixel_values"].max() <= 1.0
