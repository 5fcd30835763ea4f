"""Gaudi export: the INC FP8 config optimum-habana reads.

Validation method: Intel Neural Compressor (``neural-compressor==3.10``, installed ``--no-deps`` by
``tools/install.sh``; or the interpreter named by ``ONNX_AMP_INC_PYTHON``) parses the written file
with INC's own loaders (``FP8Config.from_json_file`` and ``Fp8cfg.parse``, the parser
``prepare``/``convert`` use) and module names are run through INC's own matcher
``should_quantize``. INC refuses non-QDQ FP8 on a CPU device, so the parser check adds
``use_qdq: true`` to its in-memory copy (the file stays as Gaudi needs it). Without INC the
INC-specific test is skipped with that reason and the documented schema checks still run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import onnx_ir as ir
import pytest

from onnx_amp.passes import annotations as ann
from onnx_amp.runtime.gaudi import build_gaudi_config, gaudi_config, module_regex, write_gaudi_config
from onnx_amp.runtime.onnx_io import OnnxAmpError

INC_CHECK = r'''
import json, sys
cfg_path = sys.argv[1]; names = json.loads(sys.argv[2])
from neural_compressor.torch.quantization import FP8Config
from neural_compressor.torch.algorithms.fp8_quant._quant_common.quant_config import Fp8cfg
from neural_compressor.torch.algorithms.fp8_quant._core.utils import should_quantize, update_mod_dict
c = FP8Config.from_json_file(cfg_path)
d = json.load(open(cfg_path)); d["use_qdq"] = True  # INC refuses non-QDQ FP8 on a CPU device
p = Fp8cfg.parse(d)
update_mod_dict(p)
res = {n: bool(should_quantize(p, "Linear", n)) for n in names}
print("RESULT" + json.dumps({"mode": c.mode, "fp8_config": str(p.cfg["fp8_config"]),
      "scale_method": str(c.scale_method), "observer": c.observer, "quantize": res}))
'''


def _inc_python() -> str | None:
    env = os.environ.get("ONNX_AMP_INC_PYTHON")
    if env:
        return env
    try:
        import neural_compressor  # noqa: F401
        return sys.executable
    except ImportError:
        return None


def _model(layers: list[tuple[str, str, str | None, tuple[str, str] | None]]) -> ir.Model:
    """Chain of MatMuls; each entry (layer id, kind, module, (w, a) or None)."""
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([2, 4]))
    graph = ir.Graph(inputs=[x], outputs=[], nodes=[], name="g", opset_imports={"": 21})
    cur = x
    for i, (lid, kind, module, assign) in enumerate(layers):
        w = ir.Value(name=f"w{i}", const_value=ir.tensor([[1.0] * 4] * 4, dtype=ir.DataType.FLOAT))
        graph.register_initializer(w)
        other = w if kind == "weight" else cur
        node = ir.node("MatMul", [cur, other], name=f"mm{i}")
        node.outputs[0].name = f"y{i}"
        node.metadata_props[ann.LAYER] = lid
        node.metadata_props[ann.LAYER_KIND] = kind
        node.metadata_props[ann.UNIT] = f"U{i}"
        if module:
            node.metadata_props[ann.MODULE] = module
        if assign:
            node.metadata_props[ann.PRECISION] = ann.format_precision(*assign)
        graph.append(node)
        cur = node.outputs[0]
    graph.outputs.append(cur)
    return ir.Model(graph, ir_version=10)


FP8 = ("fp8_e4m3", "fp8_e4m3")
BF16 = ("bf16", "bf16")


def _twelve_layers():
    # layers.1 kept BF16, layers.10 FP8: the classic prefix trap
    spec = []
    for i in range(12):
        spec.append((f"L{i}", "weight", f"model.layers.{i}.mlp.down_proj", BF16 if i == 1 else FP8))
    return spec


def test_regex_anchoring_layers_1_vs_10():
    cfg = gaudi_config(_model(_twelve_layers()))
    names = cfg["blocklist"]["names"]
    assert names == [r"^model\.layers\.1\.mlp\.down_proj$"]
    pat = names[0]
    assert re.search(pat, "model.layers.1.mlp.down_proj")
    assert not re.search(pat, "model.layers.10.mlp.down_proj")
    assert not re.search(pat, "model.layers.11.mlp.down_proj")
    assert not re.search(pat, "model.layers.1.mlp.down_proj_extra")
    assert not re.search(pat, "model.layersX1.mlp.down_proj")  # dots are literal
    assert module_regex("a.b[0]") == r"^a\.b\[0\]$"


def test_schema_and_fields():
    info = build_gaudi_config(_model(_twelve_layers()), dump_stats_path="/x/measure")
    cfg = info.config
    # the documented QUANT-mode schema (optimum-habana quantization_config/maxabs_quant.json)
    assert cfg["mode"] == "QUANTIZE" and cfg["observer"] == "maxabs" and cfg["scale_method"] == "maxabs_hw"
    assert cfg["fp8_config"] == "E4M3" and cfg["hp_dtype"] == "bf16"
    assert cfg["dump_stats_path"] == "/x/measure"
    for key in ("allowlist", "blocklist"):
        assert set(cfg[key]) == {"types", "names"}
        assert isinstance(cfg[key]["types"], list) and isinstance(cfg[key]["names"], list)
    assert len(info.fp8_modules) == 11 and info.blocked_modules == ["model.layers.1.mlp.down_proj"]


def test_e5m2_int8_unmapped_and_act_act():
    spec = [
        ("L0", "weight", "model.layers.0.self_attn.q_proj", ("fp8_e5m2", "fp8_e5m2")),
        ("L1", "act_act", "model.layers.0.self_attn", ("fp8_e5m2", "fp8_e5m2")),
        ("L2", "act_act", "model.layers.0.self_attn", BF16),
        ("L3", "weight", "model.layers.0.mlp.up_proj", ("int8", "int8")),
        ("L4", "weight", None, ("fp8_e5m2", "fp8_e5m2")),
        ("L5", "weight", "lm_head", None),  # not in the plan -> stays high
    ]
    info = build_gaudi_config(_model(spec))
    cfg = info.config
    assert cfg["fp8_config"] == "E5M2"
    assert cfg["blocklist"]["names"] == [
        r"^model\.layers\.0\.self_attn\.matmul_av$",
        r"^model\.layers\.0\.mlp\.up_proj$",
        r"^lm_head$",
    ]
    assert "model.layers.0.self_attn.matmul_qk" in info.fp8_modules
    assert info.unmapped_layers == ["L4"]
    assert any("int8" in n for n in info.notes)


def test_module_with_mixed_layers_is_blocked():
    spec = [("L0", "weight", "enc.0.fc", FP8), ("L1", "weight", "enc.0.fc", BF16)]
    assert gaudi_config(_model(spec))["blocklist"]["names"] == [r"^enc\.0\.fc$"]


def test_from_plan_dict_and_errors():
    regions = {"version": 1, "regions": [], "layers": {
        "L0": {"node": "a", "op": "MatMul", "kind": "weight", "unit": "U0", "region": "r0", "module": "m.layers.2.fc"},
        "L1": {"node": "b", "op": "MatMul", "kind": "weight", "unit": "U1", "region": "r0", "module": "m.layers.20.fc"},
    }}
    plan = {"version": 1, "target": "gaudi2", "units": {"U1": {"weight": "fp8_e4m3", "activation": "fp8_e4m3"}}}
    cfg = gaudi_config(plan, regions)
    assert cfg["blocklist"]["names"] == [r"^m\.layers\.2\.fc$"]
    with pytest.raises(OnnxAmpError):
        gaudi_config(plan)
    with pytest.raises(OnnxAmpError):
        gaudi_config(_model([]))


def test_round_trip_and_atomic(tmp_path):
    model = _model(_twelve_layers())
    out = tmp_path / "m.gaudi_fp8.json"
    meas = tmp_path / "m.gaudi_fp8_measure.json"
    info = write_gaudi_config(out, model, measure_path=meas, dump_stats_path=str(tmp_path / "st" / "measure"))
    assert json.loads(out.read_text()) == info.config
    m = json.loads(meas.read_text())
    assert m["mode"] == "MEASURE" and m["blocklist"] == info.config["blocklist"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gaudi_fp8.json", "m.gaudi_fp8_measure.json"]
    with pytest.raises(OnnxAmpError):
        write_gaudi_config(tmp_path / "nope" / "x.json", model)
    assert not (tmp_path / "nope").exists()


def test_inc_own_loader_parses_and_matches(tmp_path):
    py = _inc_python()
    if py is None:
        pytest.skip("neural-compressor not installed: only the documented-schema checks above ran")
    model = _model(_twelve_layers())
    out = tmp_path / "m.gaudi_fp8.json"
    write_gaudi_config(out, model, dump_stats_path=str(tmp_path / "st" / "measure"))
    names = [f"model.layers.{i}.mlp.down_proj" for i in range(12)]
    r = subprocess.run([py, "-c", INC_CHECK, str(out), json.dumps(names)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.split("RESULT", 1)[1])
    assert res["mode"] == "QUANTIZE" and res["fp8_config"] == "torch.float8_e4m3fn"
    assert res["scale_method"] == "maxabs_hw" and res["observer"] == "maxabs"
    # INC's own matcher: only layers.1 blocked, layers.10/11 still quantized
    assert res["quantize"] == {n: (n != "model.layers.1.mlp.down_proj") for n in names}

    # control: an unanchored name would block layers.10 and 11 too (why we anchor)
    bad = json.loads(out.read_text())
    bad["blocklist"]["names"] = ["model.layers.1."]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    r = subprocess.run([py, "-c", INC_CHECK, str(tmp_path / "bad.json"), json.dumps(names)], capture_output=True,
                       text=True, timeout=300)
    res = json.loads(r.stdout.split("RESULT", 1)[1])
    assert not res["quantize"]["model.layers.10.mlp.down_proj"]
