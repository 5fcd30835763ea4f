"""The ``openvino`` target measured on OpenVINO itself: region profiling, whole-model timing, plan
evaluation (exact sessions), the preflight check, and the pipeline's executed-precision check.

Real OpenVINO sessions on small hand-built models (``tools.synthetic``) and the tiny exported MLP of
``test_pipeline``; seconds each.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest

ov = pytest.importorskip("openvino")

from onnx_amp.core import annotations as A  # noqa: E402
from onnx_amp.core.errors import OnnxAmpError  # noqa: E402
from onnx_amp.core.targets import load_target  # noqa: E402
from onnx_amp.runtime.backends import MEASURED_BACKENDS, get_backend  # noqa: E402
from onnx_amp.runtime.backends import openvino as OV  # noqa: E402
from onnx_amp.tools import synthetic as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))


def _typed(model):
    """The model with every value typed (ONNX shape inference): regions are extracted on types."""
    import onnx
    import onnx_ir as ir

    return ir.from_proto(onnx.shape_inference.infer_shapes(ir.to_proto(model)))


@pytest.fixture(scope="module")
def mlp():
    model, feeds = F.small_mlp(d=64, h=128, tokens=16, blocks=2, heads=2, seed=3)
    model = _typed(model)
    F.annotate_amax(model, feeds)
    return model, feeds


@pytest.fixture(scope="module")
def convnet():
    model, feeds = F.small_convnet(c=16, size=16, seed=4)
    model = _typed(model)
    F.annotate_amax(model, feeds)
    return model, feeds


def _mixed(model, lowering: dict, seed: int):
    """``model`` with every unit in a random format of the openvino target, lowered as the pipeline ships it."""
    from onnx_amp.passes.plan import ApplyPlanPass, Plan
    from onnx_amp.passes.rewrite import rewrite

    rng = random.Random(seed)
    units = sorted({n.metadata_props[A.UNIT] for n in A.layer_nodes(model.graph)})
    m = model.clone()
    plan = Plan(target="openvino", strategy="test", units={u: (f, f) for u in units
                                                              for f in [rng.choice(["fp32", "bf16", "int8"])]
                                                              if f != "fp32"})
    ApplyPlanPass(plan, target="openvino")(m)
    return m, rewrite(m, "emulate", **lowering)[0]


def test_openvino_is_a_measured_backend():
    from onnx_amp.runtime import pipeline
    from onnx_amp.runtime.timing import backend_of

    assert "openvino_cpu" in MEASURED_BACKENDS and pipeline.MEASURED_BACKENDS == MEASURED_BACKENDS
    assert backend_of(load_target("openvino")) == "openvino_cpu"
    assert backend_of(load_target("cpu")) == "ort_cpu" and backend_of(load_target("h100")) == "ort_cpu"


def test_profile_on_openvino_shares_structures(mlp):
    from onnx_amp.passes.gains import GainsPass, read_gains
    from onnx_amp.runtime.profile import profile_model

    stack = F.deep_stack(3, 32, widths=(64, 64, 48))
    res = profile_model(stack, "openvino", batch_size=8, repeats=2, warmup=1, progress=False)
    assert res.backend == "openvino_cpu" and "openvino_cpu sessions" in res.summary()
    assert (res.n_regions, res.n_unique, res.n_sessions) == (3, 2, 2 * 9)  # 2 units x {fp32, bf16, int8}
    assert [v["time_s"] for v in res.measured["r0"].values()] == [v["time_s"] for v in res.measured["r1"].values()]
    model, feeds = mlp
    res = profile_model(model, "openvino", feeds=feeds, repeats=2, warmup=1, progress=False)
    for tab in res.measured.values():
        assert all(v["time_s"] > 0 and v["rounds"] == 2 for v in tab.values())
        assert any("bf16" in k for k in tab) and any("int8" in k for k in tab)
    m = model.clone()
    GainsPass("openvino", res.measured, batch_size=1)(m)
    assert all(r["time_source"] == "measured" for r in read_gains(m)["regions"].values())


def test_profiled_configuration_runs_at_its_precision(mlp):
    """The profiler's lowering of a region configuration is the backend's: OpenVINO runs it as planned."""
    from onnx_amp.passes.gains import region_units
    from onnx_amp.passes.partition import extract_region, partition
    from onnx_amp.runtime.profile import lower_config

    model, _ = mlp
    be = get_backend("openvino_cpu")
    part = partition(model)
    target = load_target("openvino")
    for r in A.get_json(model, A.REGIONS)["regions"]:
        units = region_units(r)
        if not units:
            continue
        for fmt in ("bf16", "int8"):
            low = lower_config(extract_region(model, r["id"], part), {u: (fmt, fmt) for u in units}, target,
                               lowering=be.lowering)
            assert OV.precision_mismatches(low, be.session(low)) == [], (r["id"], fmt)


def test_time_model_on_openvino(mlp):
    from onnx_amp.runtime.timing import time_model

    model, feeds = mlp
    _, low = _mixed(model, get_backend("openvino_cpu").lowering, seed=0)
    tm = time_model([model, low], feeds, repeats=3, backend="openvino_cpu")
    assert len(tm.times) == 2 and all(len(t) == 3 and min(t) > 0 for t in tm.times)
    with pytest.raises(OnnxAmpError, match="ONNX Runtime options"):
        time_model([model], feeds, backend="openvino_cpu", disabled_optimizers=["NchwcTransformer"])


def test_plan_evaluator_runs_exact_openvino_sessions(mlp):
    from onnx_amp.runtime.evaluate import PlanEvaluator, evaluate_models

    model, feeds = mlp
    batches = [{"x": feeds["x"] + 0.1 * i} for i in range(2)]
    ev = PlanEvaluator(model, batches, loss=lambda out, b: (out ** 2).mean(-1), target="openvino")
    assert ev.backend == "openvino_cpu" and ev.lowering == {"bf16_compute": True, "bf16_chains": True}
    units = sorted({n.metadata_props[A.UNIT] for n in A.layer_nodes(model.graph)})
    plan = {u: {"weight": "int8", "activation": "int8"} for u in units}
    first = ev.evaluate(plan)
    assert first["measured_mse"] > 0
    ev.cache.clear()
    assert ev.evaluate(plan) == first  # exact sessions: deterministic
    # ORT evaluation of the cpu target is unchanged: ORT's exact_qdq sessions
    from onnx_amp.passes.rewrite import ORT_CPU_LOWERING

    ev_cpu = PlanEvaluator(model, batches, loss=lambda out, b: (out ** 2).mean(-1), target="cpu")
    assert ev_cpu.backend == "ort_cpu" and ev_cpu.lowering == ORT_CPU_LOWERING
    _, low = _mixed(model, {}, seed=1)
    mse, metric = evaluate_models(model, low, batches, loss=lambda out, b: (out ** 2).mean(-1),
                                  backend="openvino_cpu", exact=False)
    assert np.isfinite(mse) and metric["name"]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("which", ["mlp", "convnet"])
def test_mixed_plans_ship_without_precision_mismatches(which, seed, request):
    """Every layer of a mixed FP32/BF16/INT8 plan, lowered as the pipeline ships it, runs at its
    planned precision on OpenVINO (the executed-precision check of every run)."""
    model, _ = request.getfixturevalue(which)
    be = get_backend("openvino_cpu")
    planned, low = _mixed(model, be.lowering, seed)
    pc = be.plan_check(planned, be.session(low))
    assert pc["mismatches"] == [], pc["text"]
    assert pc["layers"] == len(A.layer_nodes(model.graph)) and sum(pc["executed"].values()) == pc["layers"]


def test_preflight_checks_openvino_and_catches_a_wrong_kernel(monkeypatch):
    from onnx_amp.runtime import preflight

    t = load_target("openvino")
    assert preflight.check_backend(t) == []
    be = get_backend("openvino_cpu")
    real_session = type(be).session

    class Wrong:
        def __init__(self, s):
            self.s = s

        def run(self, feeds, outputs=None):
            return {k: v * 3 for k, v in self.s.run(feeds, outputs).items()}

    monkeypatch.setattr(type(be), "session", lambda self, m, exact=False, **kw:
                        real_session(self, m, exact=exact, **kw) if exact else Wrong(real_session(self, m, **kw)))
    with pytest.raises(OnnxAmpError, match="computes bf16 wrongly") as e:
        preflight.check_backend(t)
    assert "\n" not in str(e.value)


def test_pipeline_on_openvino_measures_there_and_checks_precision(tmp_path):
    import onnx_amp
    from test_pipeline import _data, _export_tiny

    res = onnx_amp.optimize(_export_tiny(), calibration_data=_data(48), output_dir=tmp_path, name="tiny",
                            target="openvino", profile_repeats=3, progress=False, verbose=False, accuracy_drop=0.5)
    assert res.backend == "openvino_cpu"
    # the plan was timed against the uniform plans within the bound before it shipped (runtime.uniform_guard)
    assert any("uniform plans within the bound" in n or n.startswith("shipped uniform-") for n in res.notes)
    assert any(n.startswith("region gains scaled to each format's end-to-end gain") for n in res.notes)
    assert res.precision_check is not None and res.precision_check["mismatches"] == []
    assert res.precision_check["layers"] == 5
    s = res.summary()
    assert "(OpenVINO, held-out)" in s and "measured on OpenVINO" in s and "executed precision" in s
    assert res.time_ref_s and res.time_amp_s
    md = (tmp_path / "report.md").read_text()
    assert "executed precision" in md and "measured loss MSE (OpenVINO, held-out)" in md
    import json

    rj = json.loads((tmp_path / "report.json").read_text())
    assert rj["backend"] == "OpenVINO" and rj["precision_check"]["mismatches"] == []


def test_ort_fused_int8_check_reads_the_optimized_graph():
    """The cpu target's executed-precision check: which INT8 layers ORT fused into integer kernels."""
    from onnx_amp.passes.plan import ApplyPlanPass, uniform_plan
    from onnx_amp.passes.rewrite import ORT_CPU_LOWERING, rewrite
    from onnx_amp.runtime.preflight import _tiny_model

    model, _, _ = _tiny_model()
    ApplyPlanPass(uniform_plan(model, "int8", "int8"))(model)
    low, _ = rewrite(model, "emulate", **ORT_CPU_LOWERING)
    pc = get_backend("ort_cpu").fused_int8(model, low)
    assert pc["int8_planned"] == 2 and pc["layers"] == 2
    # fc2 (its input quantized after Relu) fuses to MatMulIntegerToFloat; fc1 reads the graph input
    # through DQ and ORT keeps a float MatMul there
    assert pc["executed"]["int8"] + len(pc["mismatches"]) == 2
    assert all(m["kind"] == "not_fused" and m["layer_type"] == "MatMul" for m in pc["mismatches"])
    assert "fc2" not in {m["node"] for m in pc["mismatches"]}


def test_scale_gains_by_format():
    from onnx_amp.runtime.gain_scaling import _lowered_formats, scale_gains

    t = load_target("openvino")
    assert _lowered_formats("U0=fp32/fp32,U1=int8/int8,U2=bf16/bf16", t.high) == ["int8", "bf16"]
    measured = {"r0": {"U0=fp32/fp32,U1=fp32/fp32": {"time_gain_s": 0.0},
                       "U0=int8/int8,U1=fp32/fp32": {"time_gain_s": 1.0},
                       "U0=int8/int8,U1=bf16/bf16": {"time_gain_s": 2.0}}}
    n = scale_gains(measured, {"int8": {"factor": 2.0}, "bf16": {"factor": 1.0}}, t)
    rows = measured["r0"]
    assert n == 2 and rows["U0=fp32/fp32,U1=fp32/fp32"] == {"time_gain_s": 0.0}
    assert rows["U0=int8/int8,U1=fp32/fp32"]["time_gain_s"] == 2.0
    assert rows["U0=int8/int8,U1=bf16/bf16"] == {"time_gain_s": 3.0, "time_gain_raw_s": 2.0}


def test_format_gain_factors_on_openvino():
    from onnx_amp.passes.gains import config_key, region_units
    from onnx_amp.runtime.gain_scaling import format_gain_factors
    from onnx_amp.runtime.profile import profile_model

    model = F.deep_stack(2, 32, widths=(64, 64))
    feeds = {"x": np.random.default_rng(0).standard_normal((8, 32)).astype(np.float32)}
    res = profile_model(model, "openvino", feeds=feeds, repeats=2, warmup=1, progress=False)
    from onnx_amp.runtime.region_inputs import annotate_amax_from_run, run_with_values

    names = [v.name for n in A.layer_nodes(model.graph) for v in list(n.inputs[:2]) + [n.outputs[0]] if v is not None]
    annotate_amax_from_run(model, run_with_values(model, feeds, names))
    f = format_gain_factors(model, load_target("openvino"), res.measured, feeds, "openvino_cpu",
                            get_backend("openvino_cpu").lowering, repeats=2)
    assert set(f) == {"bf16", "int8"}
    for fmt, v in f.items():
        units_of = {r["id"]: region_units(r) for r in A.get_json(model, A.REGIONS)["regions"]}
        rs = sum(res.measured[r][config_key({u: (fmt, fmt) for u in us}, us)]["time_gain_s"] for r, us in units_of.items())
        assert v["region_sum_s"] == rs and 0.25 <= v["factor"] <= 4.0


def test_a_plan_that_misses_the_bound_with_real_kernels_steps_back(tmp_path):
    """runtime.verify: the plan is checked with OpenVINO's real kernels before it ships. Uniform INT8
    within a loose bound ships as it is; against a bound no plan can meet (a negative allowed drop)
    it is re-solved at half its predicted loss (at most MAX_TRIES times) until no smaller plan exists,
    and the note says so."""
    from test_pipeline import _data, _export_tiny

    from onnx_amp.passes.plan import ApplyPlanPass
    from onnx_amp.passes.solve import plan_object
    from onnx_amp.runtime import stages as S
    from onnx_amp.runtime.pipeline import RunConfig, _prepare
    from onnx_amp.runtime.uniform_guard import uniform_solution
    from onnx_amp.runtime.verify import MAX_TRIES, verify_bound

    c = RunConfig(source=_export_tiny(), calibration_data=_data(48), output_dir=tmp_path, name="tiny", target="openvino",
                  profile_repeats=3, progress=False, verbose=False, accuracy_drop=0.5, pareto=False, report=False,
                  gaudi=False)
    c.validate()
    st = _prepare(c)
    try:
        for stage in S.STAGES[:7]:  # up to the solve
            stage.run(st)
        uni = uniform_solution(st.problem, "int8", st.solution)
        ApplyPlanPass(plan_object(uni), target=st.target)(st.model)
        st.solution = uni
        assert verify_bound(st) is None and st.solution is uni  # within the loose bound: unchanged
        c.accuracy_drop = -1.0
        note = verify_bound(st)
        assert note is not None and (f"after {MAX_TRIES} steps back" in note or "no plan of lower" in note), note
        assert 1 <= note.count("units:") <= MAX_TRIES
        assert len(st.solution.plan["units"]) < len(uni.plan["units"])
        assert st.real_reference is not None and st.real_reference.exact is False
    finally:
        st.out.release(True)
