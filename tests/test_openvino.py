"""OpenVINO CPU backend: sessions, the lowering per format, the executed-precision check, exactness.

Real OpenVINO sessions on small hand-built models (``tools.bench.openvino_forms``: an MLP with an
attention block, a conv net with depthwise and 1x1 convs) through the real partition, plan and
rewrite passes; ONNX Runtime (``exact_qdq=True``) is the reference for the Q/DQ math.
"""

from __future__ import annotations

import sys

import ml_dtypes
import numpy as np
import onnx_ir as ir
import pytest

ov = pytest.importorskip("openvino")

from onnx_amp.core import annotations as A  # noqa: E402
from onnx_amp.core.errors import OnnxAmpError  # noqa: E402
from onnx_amp.runtime.backends import get_backend  # noqa: E402
from onnx_amp.runtime.backends import openvino as OV  # noqa: E402
from onnx_amp.runtime.ort_session import make_session, run  # noqa: E402
from onnx_amp.tools import synthetic as F  # noqa: E402

FORMATS = ("bf16", "int8", "fp8_e4m3", "fp8_e5m2")


@pytest.fixture(scope="module")
def be():
    b = get_backend("openvino_cpu")
    b.check()
    return b


@pytest.fixture(scope="module")
def mlp():
    model, feeds = F.small_mlp(d=128, h=256, tokens=32, blocks=1, heads=2, seed=1)
    F.annotate_amax(model, feeds)
    return model, feeds


@pytest.fixture(scope="module")
def convnet():
    model, feeds = F.small_convnet(c=32, size=28, seed=2)
    F.annotate_amax(model, feeds)
    return model, feeds


def _rel(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max() / (np.abs(b).max() or 1.0))


def _layers(model: ir.Model) -> list[str]:
    return [n.name for n in model.graph if A.LAYER in n.metadata_props and A.INSERTED_BY not in n.metadata_props]


# ---------------------------------------------------------------------------------------------
# backend basics
# ---------------------------------------------------------------------------------------------

def test_check_formats_lowering(be):
    caps = be.capabilities()
    fm = be.formats()
    assert "fp32" in fm and "FP32" in caps
    assert set(fm) == {OV.CAPABILITY_FORMATS[c] for c in caps if c in OV.CAPABILITY_FORMATS}
    assert not any(f.startswith("fp8") for f in fm)  # no FP8 arithmetic: FP8 runs as bf16 (EXECUTES_AS)
    assert be.lowering == {"bf16_compute": True, "bf16_chains": True}
    cfg = OV.compile_config(timing=True, threads=1)
    assert cfg["INFERENCE_PRECISION_HINT"] == "f32" and cfg["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == 0
    assert cfg["INFERENCE_NUM_THREADS"] == 1 and cfg["NUM_STREAMS"] == 1


def test_check_without_openvino(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(OnnxAmpError) as e:
        OV.OpenVinoCpuBackend().check()
    assert "openvino" in str(e.value) and "\n" not in str(e.value)


def test_fp32_matches_ort_memory_path_external(be, mlp, tmp_path):
    model, feeds = mlp
    ref = run(make_session(model), feeds)["y"]
    s = be.session(model, threads=1)
    assert s.input_names == ["x"] and s.output_names == ["y"]
    out = s.run({**feeds, "labels": np.zeros(3)})  # extra keys ignored
    assert _rel(out["y"], ref) < 1e-5
    # a path, and an in-memory model whose weights are external data
    p = tmp_path / "m.onnx"
    ir.save(model, p, external_data="m.onnx.data")
    assert _rel(be.session(p, timing=True).run(feeds)["y"], ref) < 1e-5
    loaded = ir.load(p)
    assert any(isinstance(v.const_value, ir.ExternalTensor) for v in loaded.graph.initializers.values())
    assert _rel(be.session(loaded).run(feeds, outputs=["y"])["y"], ref) < 1e-5
    with pytest.raises(OnnxAmpError, match="missing"):
        s.run({})
    # FP32 layers really run in f32 (not the plugin's default bf16), all found in the runtime graph
    ran = be.executed_precisions(s)
    assert set(ran) == set(_layers(model)) and set(ran.values()) == {"fp32"}


# ---------------------------------------------------------------------------------------------
# the lowering: each format runs at its precision
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("which", ["mlp", "convnet"])
def test_format_executes_at_its_precision(be, fmt, which, request):
    model, feeds = request.getfixturevalue(which)
    low = F.lowered(model, fmt, fmt, be.lowering)
    s = be.session(low)
    assert OV.precision_mismatches(low, s) == []
    ran = be.executed_precisions(s)
    assert set(ran) == set(_layers(model))
    assert set(ran.values()) == {OV.EXECUTES_AS[fmt]}
    ex = OV.executed_layers(s)
    if fmt == "int8":  # int8 weights stay int8 in memory
        assert {e["weights"] for e in ex.values() if e["weights"]} == {"int8"}
    # and the result is the format's rounding of the fp32 model's, not something else
    ref = run(make_session(model), feeds)["y"]
    assert _rel(s.run(feeds)["y"], ref) < {"bf16": 0.05, "int8": 0.1, "fp8_e4m3": 0.25, "fp8_e5m2": 0.4}[fmt]


def test_int8_weights_with_float_activations(be, mlp):
    """w=int8,a=fp32: an f32 kernel with int8 weights, activations not quantized on the fly."""
    model, feeds = mlp
    low = F.lowered(model, "int8", "fp32", be.lowering)
    s = be.session(low)
    assert OV.precision_mismatches(low, s) == []
    ex = OV.executed_layers(s)
    weight_layers = [n.name for n in model.graph if n.metadata_props.get(A.LAYER_KIND, "weight") == "weight"
                     and A.LAYER in n.metadata_props]
    assert all(ex[n]["compute"] == "fp32" and ex[n]["weights"] == "int8" for n in weight_layers)
    # the reference is ORT unoptimized: with exact_qdq ORT still fuses DQ(int8 W) -> MatMul into
    # MatMulNBits, 0.4% off the Q/DQ math here
    ref = run(make_session(low, optimize=False), feeds)["y"]
    assert _rel(s.run(feeds)["y"], ref) < 1e-5  # DYNAMIC_QUANTIZATION_GROUP_SIZE=0: no int8 rounding


# ---------------------------------------------------------------------------------------------
# the checker reports what did not run as planned
# ---------------------------------------------------------------------------------------------

def test_checker_reports_cast_pair_bf16_as_upcast(be, convnet):
    model, _ = convnet
    low = F.lowered(model, "bf16", "bf16", {})  # the emulate form's Cast pair: OpenVINO runs f32
    mm = OV.precision_mismatches(low, be.session(low))
    assert {m["node"] for m in mm} == set(_layers(model))
    assert {(m["kind"], m["expected"], m["executed"]) for m in mm} == {("upcast", "bf16", "fp32")}
    assert "upcast" in OV.format_mismatches(mm)


def test_checker_reports_uint8_attention_as_upcast(be, mlp):
    model, _ = mlp
    low = F.lowered(model, "int8", "int8", {"ort_int8_layout": True})  # ORT's u8 layout
    mm = OV.precision_mismatches(low, be.session(low))
    kinds = {n.name: n.metadata_props.get(A.LAYER_KIND) for n in model.graph if A.LAYER in n.metadata_props}
    assert mm and all(kinds[m["node"]] == "act_act" and m["kind"] == "upcast" and m["executed"] == "fp32" for m in mm)


def test_checker_reports_plugin_bf16_hint_as_downcast(be, mlp):
    model, _ = mlp
    planned = F._with_plan(model, "fp32", "fp32")
    ovm, _, outs, info = OV._read(model)
    compiled = OV._core().compile_model(ovm, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
    mm = OV.precision_mismatches(planned, OV.OpenVinoSession(compiled, info, outs))
    assert len(mm) == len(_layers(model))
    assert {(m["kind"], m["executed"]) for m in mm} == {("downcast", "bf16")}


def test_checker_strict_fp8_and_fused_away(be, mlp):
    model, _ = mlp
    low = F.lowered(model, "fp8_e4m3", "fp8_e4m3", be.lowering)
    s = be.session(low)
    strict = OV.precision_mismatches(low, s, strict=True)
    assert len(strict) == len(_layers(model)) and {m["kind"] for m in strict} == {"upcast"}
    # a layer no runtime op names is reported as fused away
    renamed = low.clone()
    node = next(n for n in renamed.graph if n.name == _layers(model)[0])
    node.name = "not_in_the_runtime_graph"
    mm = OV.precision_mismatches(renamed, s)
    assert [(m["node"], m["kind"]) for m in mm] == [("not_in_the_runtime_graph", "fused_away")]


# ---------------------------------------------------------------------------------------------
# exactness
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["int8", "fp8_e4m3", "fp8_e5m2"])
@pytest.mark.parametrize("which", ["mlp", "convnet"])
def test_exact_session_matches_ort_exact(be, fmt, which, request):
    model, feeds = request.getfixturevalue(which)
    low = F.lowered(model, fmt, fmt, {})  # float compute: ORT can run it
    # the Q/DQ math: ORT unoptimized. ORT's exact_qdq session still folds the attention scale into
    # FusedMatMul: the float rounding moves, and on the MLP one int8 step of the Softmax output flips
    ref = run(make_session(low, optimize=False), feeds)["y"]
    exact = be.session(low, exact=True).run(feeds)["y"]
    assert _rel(exact, ref) < 2e-5
    assert _rel(exact, run(make_session(low, exact_qdq=True), feeds)["y"]) < 0.02


def _qdq_proto(dtype: int, npd, scale: float, shape):
    from onnx import helper, numpy_helper

    z = np.array(0).astype(npd)
    zt = helper.make_tensor("z", dtype, [], z.tobytes(), raw=True) if dtype in (17, 19) else \
        numpy_helper.from_array(z, "z")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    inits = [numpy_helper.from_array(np.array(scale, np.float32), "s"), zt]
    return F._model(nodes, inits, {"x": list(shape)}, list(shape))


@pytest.mark.parametrize("fmt", ["int8", "fp8_e4m3", "fp8_e5m2"])
def test_exact_qdq_is_bit_exact(be, fmt):
    """Ties, values next to a rounding boundary, saturation, subnormals: the exact session gives the
    ONNX definition bit for bit; the plugin's own Q/DQ (reciprocal multiply; FP8 through f16) does not."""
    from onnx import TensorProto as T

    dtype, npd, qmax = {"int8": (T.INT8, np.int8, 127.0), "fp8_e4m3": (T.FLOAT8E4M3FN, ml_dtypes.float8_e4m3fn, 448.0),
                        "fp8_e5m2": (T.FLOAT8E5M2, ml_dtypes.float8_e5m2, 57344.0)}[fmt]
    rng = np.random.default_rng(0)
    s = np.float32(0.0123)
    if fmt == "int8":
        grid = np.arange(-130, 131, dtype=np.float32)
    else:  # every value of the format and every midpoint between neighbours
        vals = np.unique(np.arange(256, dtype=np.uint8).view(npd).astype(np.float32))
        vals = vals[np.isfinite(vals)]
        grid = np.concatenate([vals, (vals[1:] + vals[:-1]) / 2])
    x = np.concatenate([grid * s, (grid + 0.5) * s, rng.standard_normal(20000).astype(np.float32) * qmax * s / 3,
                        np.array([qmax * 2 * s, -qmax * 2 * s, 0.0], np.float32)]).astype(np.float32)
    x = x.reshape(1, -1)
    proto = _qdq_proto(dtype, npd, float(s), x.shape)
    model = ir.from_proto(proto)
    if fmt == "int8":
        want = (np.clip(np.round(x / s), -128, 127) * s).astype(np.float32)
    else:
        want = (np.clip(x / s, -qmax, qmax).astype(npd).astype(np.float32) * s).astype(np.float32)
    ort_y = run(make_session(model, exact_qdq=True), {"x": x})["y"]
    assert np.array_equal(ort_y, want)
    exact = be.session(model, exact=True).run({"x": x})["y"]
    assert np.array_equal(exact, want)
    plain = be.session(model).run({"x": x})["y"]
    assert not np.array_equal(plain, want)  # what exact=True is for


def test_int8_kernels_are_exact(be, mlp):
    """Away from rounding ties OpenVINO's int8 kernels (int32 accumulation) give the Q/DQ result up
    to f32 rounding: its integer arithmetic is exact on this CPU (VNNI, no int16 saturation)."""
    model, feeds = mlp
    low = F.lowered(model, "int8", "int8", {})
    ref = run(make_session(low, optimize=False), feeds)["y"]
    s = be.session(low)
    assert set(be.executed_precisions(s).values()) == {"int8"}
    assert _rel(s.run(feeds)["y"], ref) < 1e-4


# ---------------------------------------------------------------------------------------------
# the rewrite option
# ---------------------------------------------------------------------------------------------

def test_bf16_compute_lowering(convnet, mlp):
    model, _ = convnet
    low = F.lowered(model, "bf16", "bf16", {"bf16_compute": True})
    convs = [n for n in low.graph if n.op_type in ("Conv", "Gemm") and A.INSERTED_BY not in n.metadata_props]
    assert convs and all(n.inputs[0].dtype == ir.DataType.BFLOAT16 and n.inputs[1].dtype == ir.DataType.BFLOAT16
                         for n in convs)
    assert all(n.outputs[0].dtype == ir.DataType.BFLOAT16 for n in convs)
    model, _ = mlp
    low = F.lowered(model, "fp8_e4m3", "fp8_e4m3", {"bf16_compute": True})
    for n in [n for n in low.graph if n.op_type == "MatMul"]:
        for v in n.inputs:  # float Q/DQ, then one Cast to bf16
            assert v.dtype == ir.DataType.BFLOAT16 and v.producer().op_type == "Cast"
            assert v.producer().inputs[0].producer().op_type == "DequantizeLinear"
    # INT8 layers and the default are unchanged: float compute
    for low in (F.lowered(model, "int8", "int8", {"bf16_compute": True}), F.lowered(model, "bf16", "bf16", {})):
        assert all(n.outputs[0].dtype in (None, ir.DataType.FLOAT) for n in low.graph if n.op_type == "MatMul")


def _runtime_ops(session) -> int:
    return len(session.compiled.get_runtime_model().get_ops())


def test_bf16_chains_keep_activations_in_bf16_between_bf16_layers(be, convnet):
    """OpenVINO's lowering keeps the tensor between two BF16 convs in bf16 (the Relu runs on it), and
    only there: the last Relu feeds a float GlobalAveragePool and stays float. OpenVINO runs those
    Relus inside the bf16 convolutions (the unchained plan's convert-relu-convert kernels are gone)
    and gives the unchained plan's outputs to bf16 rounding."""
    from onnx_amp.passes.bf16_chains import keep_bf16

    model, feeds = convnet
    assert OV.LOWERING.get("bf16_chains") and OV.LOWERING.get("bf16_compute")
    plain = F.lowered(model, "bf16", "bf16", {"bf16_compute": True})
    chained = F.lowered(model, "bf16", "bf16", OV.LOWERING)
    casts = [sum(n.op_type == "Cast" for n in m.graph) for m in (plain, chained)]
    assert casts[1] == casts[0] - 6, casts  # 3 tensors: their Cast to float and back both gone
    relu_in = [n.inputs[0].dtype for n in chained.graph if n.op_type == "Relu"]
    assert relu_in == [ir.DataType.BFLOAT16] * 3 + [ir.DataType.FLOAT], relu_in
    again = chained.clone()
    assert keep_bf16(again, lambda s: s + "_x")["tensors"] == 0  # nothing left to chain
    s0, s1 = be.session(plain), be.session(chained)
    y0, y1 = s0.run(feeds)["y"], s1.run(feeds)["y"]
    assert np.abs(y1 - y0).max() <= 2e-2 * np.abs(y0).max()
    assert _runtime_ops(s1) <= _runtime_ops(s0) - 3, (_runtime_ops(s0), _runtime_ops(s1))


def test_bf16_chains_leave_float_consumers_float(convnet):
    """A tensor that any float op or graph output reads keeps its float values: with the convs in
    FP32 nothing is chained, and the graph is the unchained one."""
    model, _ = convnet
    fp = F.lowered(model, "fp32", "fp32", OV.LOWERING)
    assert not any(n.op_type == "Cast" for n in fp.graph)
    assert all(n.outputs[0].dtype in (None, ir.DataType.FLOAT) for n in fp.graph if n.op_type == "Relu")


# ---------------------------------------------------------------------------------------------
# the target file
# ---------------------------------------------------------------------------------------------

def test_openvino_target(be):
    from onnx_amp.core.targets import load_target

    t = load_target("openvino")
    assert t.measured_backend == "openvino_cpu"
    assert set(t.formats) <= set(be.formats())
    assert t.peak("int8") > t.peak("bf16") > t.peak("fp32")
    assert all("measured" in src for k, src in t.sources.items() if k.startswith("peak_flops"))
