import json

import pytest

from onnx_amp.runtime.onnx_io import OnnxAmpError
from onnx_amp.runtime.targets import TARGET_DIR, available_targets, load_target


@pytest.mark.parametrize("name", ["cpu", "gaudi2", "gaudi3", "h100", "h200"])
def test_builtin_targets_load(name):
    t = load_target(name)
    assert t.name == name
    assert t.high in t.assignments
    assert t.low_assignments, "every target offers at least one lower-precision assignment"
    for f in t.formats:
        assert t.peak(f) > 0
        assert t.sources[f"peak_flops.{f}"]
    assert t.memory_bandwidth > 0 and t.sources["memory_bandwidth"]


def test_target_contents():
    assert set(available_targets()) >= {"cpu", "gaudi2", "gaudi3", "h100", "h200"}
    cpu = load_target("cpu")
    assert cpu.assignments == (("fp32", "fp32"), ("int8", "int8")) and cpu.measured_backend == "ort_cpu"
    g2 = load_target("gaudi2")
    assert ("fp8_e4m3", "fp8_e4m3") in g2.assignments and g2.high == ("bf16", "bf16")
    h = load_target("H100")  # case-insensitive name
    assert h.peak("fp8_e4m3") == 2 * h.peak("bf16")  # dense FP8 = 2x BF16 on Hopper
    assert h.lowering["fp8_e4m3"] == "qdq" and h.lowering["bf16"] == "cast"
    assert h.compute_format(("fp8_e4m3", "bf16")) == "bf16"


def test_copy_and_edit_target(tmp_path):
    data = json.loads((TARGET_DIR / "h100.json").read_text())
    data["name"] = "my_h100"
    data["memory_bandwidth"]["value"] = 1e12
    p = tmp_path / "my.json"
    p.write_text(json.dumps(data))
    t = load_target(p)
    assert t.name == "my_h100" and t.memory_bandwidth == 1e12


@pytest.mark.parametrize(
    "edit, msg",
    [
        (lambda d: d.pop("peak_flops"), "missing key 'peak_flops'"),
        (lambda d: d["assignments"].append(["int4", "int4"]), "unknown format 'int4'"),
        (lambda d: d.__setitem__("high", ["fp32", "fp32"]), "not in formats"),
        (lambda d: d["peak_flops"]["bf16"].pop("source"), "peak_flops.bf16.source is missing"),
        (lambda d: d["peak_flops"]["bf16"].__setitem__("value", -1), "peak_flops.bf16.value must be > 0"),
        (lambda d: d["lowering"].__setitem__("fp8_e4m3", "cast"), "lowering['fp8_e4m3'] must be 'qdq'"),
        (lambda d: d["peak_flops"].pop("fp16"), "no entry for format 'fp16'"),
    ],
)
def test_bad_target_file_clear_error(tmp_path, edit, msg):
    data = json.loads((TARGET_DIR / "h100.json").read_text())
    edit(data)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(data))
    with pytest.raises(OnnxAmpError) as e:
        load_target(p)
    assert msg in str(e.value) and str(p) in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_and_unparsable(tmp_path):
    with pytest.raises(OnnxAmpError, match="unknown target 'tpu'.*cpu"):
        load_target("tpu")
    p = tmp_path / "x.json"
    p.write_text("{not json")
    with pytest.raises(OnnxAmpError, match="not valid JSON"):
        load_target(p)
    with pytest.raises(OnnxAmpError, match="not found"):
        load_target(tmp_path / "missing.json")
