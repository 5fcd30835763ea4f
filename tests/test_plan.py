"""Plans: JSON round trip, atomic save, validation errors, ORT-style uniform plans, ApplyPlanPass."""

from __future__ import annotations


import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh

from onnx_amp.passes import annotations as A
from onnx_amp.passes.partition import PartitionPass
from onnx_amp.passes.plan import ApplyPlanPass, Plan, layer_assignments, target_info, uniform_plan, validate_plan
from onnx_amp.runtime.onnx_io import OnnxAmpError


def _mlp() -> ir.Model:
    """x -> (gate, up share x: one unit) -> Mul -> down -> + x -> Gemm head."""
    g = np.random.default_rng(0)
    f = lambda *s: (g.standard_normal(s) * 0.3).astype(np.float32)  # noqa: E731
    nodes = [h.make_node("MatMul", ["x", "wg"], ["a"], name="gate"),
             h.make_node("MatMul", ["x", "wu"], ["b"], name="up"),
             h.make_node("Mul", ["a", "b"], ["c"], name="mul"),
             h.make_node("MatMul", ["c", "wd"], ["d"], name="down"),
             h.make_node("Add", ["d", "x"], ["r"], name="resid"),
             h.make_node("Gemm", ["r", "wh"], ["y"], transB=1, name="head")]
    graph = h.make_graph(nodes, "mlp", [h.make_tensor_value_info("x", TP.FLOAT, [4, 8])],
                         [h.make_tensor_value_info("y", TP.FLOAT, [4, 3])],
                         [nh.from_array(f(8, 16), "wg"), nh.from_array(f(8, 16), "wu"),
                          nh.from_array(f(16, 8), "wd"), nh.from_array(f(3, 8), "wh")])
    m = ir.from_proto(h.make_model(graph, opset_imports=[h.make_opsetid("", 18)]))
    PartitionPass()(m)
    return m


@pytest.fixture
def mlp():
    return _mlp()


def _ids(m):
    return {n.name: (n.metadata_props[A.LAYER], n.metadata_props[A.UNIT]) for n in A.layer_nodes(m.graph)}


def test_partition_units(mlp):
    ids = _ids(mlp)
    assert ids["gate"][1] == ids["up"][1] != ids["down"][1]  # siblings reading x share a unit


def test_json_round_trip_and_atomic_save(tmp_path, mlp):
    ids = _ids(mlp)
    p = Plan(target="h100", strategy="ip", tau=1e-3, units={ids["gate"][1]: ("fp8_e4m3", "fp8_e4m3")},
             predicted_mse=2.5e-4, predicted_gain={"time_s": 0.1}, extra={"note": "x"})
    d = p.to_json()
    assert d["units"] == {ids["gate"][1]: {"weight": "fp8_e4m3", "activation": "fp8_e4m3"}} and d["note"] == "x"
    f = tmp_path / "plan.json"
    p.save(f)
    q = Plan.load(f)
    assert q == p
    assert [x.name for x in tmp_path.iterdir()] == ["plan.json"]  # no temp files left
    assert f.stat().st_mode & 0o777 == 0o644  # readable like any other output, not mkstemp's 0600
    with pytest.raises(OnnxAmpError, match="output folder"):
        p.save(tmp_path / "missing" / "plan.json")
    # other spellings of an assignment
    r = Plan.from_json({"version": 1, "units": {"U0": ["fp8", "bf16"], "U1": "int8", "U2": {"weight": "e5m2"}}})
    assert r.units == {"U0": ("fp8", "bf16"), "U1": ("int8", "int8"), "U2": ("e5m2", "e5m2")}
    assert r.canonical().units["U0"] == ("fp8_e4m3", "bf16")


@pytest.mark.parametrize("text,msg", [
    ("{not json", "not valid JSON"),
    ('{"version": 1}', "'units' must be an object"),
    ('{"version": 7, "units": {}}', "version 7 not supported"),
    ('{"units": {"U0": 5}}', "expected"),
    ("[]", "a plan is a JSON object"),
])
def test_bad_plan_files(tmp_path, text, msg):
    f = tmp_path / "p.json"
    f.write_text(text)
    with pytest.raises(OnnxAmpError, match=msg) as e:
        Plan.load(f)
    assert str(f) in str(e.value)
    with pytest.raises(OnnxAmpError, match="no such plan file"):
        Plan.load(tmp_path / "missing.json")


def test_validate_unknown_ids_and_formats(mlp):
    with pytest.raises(OnnxAmpError, match=r"unknown unit/layer ids L42, U99"):
        validate_plan(mlp, Plan(units={"U99": ("bf16", "bf16"), "L42": ("bf16", "bf16")}))
    with pytest.raises(OnnxAmpError, match=r"unknown formats 'fp4'"):
        validate_plan(mlp, Plan(units={"U0": ("fp4", "bf16")}))
    bare = ir.from_proto(h.make_model(h.make_graph([h.make_node("Relu", ["x"], ["y"])], "g",
                                                    [h.make_tensor_value_info("x", TP.FLOAT, [2])],
                                                    [h.make_tensor_value_info("y", TP.FLOAT, [2])])))
    with pytest.raises(OnnxAmpError, match="run onnx-amp partition first"):
        validate_plan(bare, Plan(units={}))


def test_validate_target_formats(mlp):
    ids = _ids(mlp)
    u = ids["down"][1]
    # gaudi2 has no INT8; the cpu target runs only fp32 and int8
    with pytest.raises(OnnxAmpError, match=rf"target gaudi2 lacks the assignments {u}=\(w=int8,a=int8\)"):
        validate_plan(mlp, Plan(target="gaudi2", units={u: ("int8", "int8")}))
    with pytest.raises(OnnxAmpError, match="target cpu lacks"):
        validate_plan(mlp, Plan(units={u: ("fp8_e4m3", "fp8_e4m3")}), target="cpu")
    ok = validate_plan(mlp, Plan(target="gaudi2", units={u: ("fp8", "fp8")}))
    assert ok.units[u] == ("fp8_e4m3", "fp8_e4m3")
    with pytest.raises(OnnxAmpError, match="unknown target|no such|not found|target"):
        validate_plan(mlp, Plan(target="tpu9000", units={}))
    assert target_info("h100").high == ("bf16", "bf16")


def test_uniform_plan_nodes_to_exclude_and_op_types(mlp):
    ids = _ids(mlp)
    p = uniform_plan(mlp, "int8", "int8")
    assert set(p.units) == {u for _, u in ids.values()}
    # excluding one sibling of a unit lists the other layer by id
    p = uniform_plan(mlp, "int8", nodes_to_exclude=["gate"])
    assert ids["gate"][1] not in p.units and p.units[ids["up"][0]] == ("int8", "int8")
    a = layer_assignments(mlp, p)
    assert a[ids["gate"][0]] == ("fp32", "fp32") and a[ids["up"][0]] == ("int8", "int8")
    p = uniform_plan(mlp, "fp8_e4m3", "fp8_e4m3", op_types_to_quantize=["Gemm"])
    assert list(p.units) == [ids["head"][1]]
    with pytest.raises(OnnxAmpError, match="nodes_to_exclude names nodes not in the model: nope"):
        uniform_plan(mlp, "int8", nodes_to_exclude=["nope"])
    with pytest.raises(OnnxAmpError, match="unknown format 'int3'"):
        uniform_plan(mlp, "int3")


def test_apply_plan_pass(mlp):
    ids = _ids(mlp)
    plan = Plan(target="h100", units={ids["gate"][1]: ("fp8_e4m3", "fp8_e4m3"), ids["head"][0]: ("fp16", "fp16")})
    ApplyPlanPass(plan)(mlp)
    prec = {n.name: n.metadata_props[A.PRECISION] for n in A.layer_nodes(mlp.graph)}
    assert prec == {"gate": "w=fp8_e4m3,a=fp8_e4m3", "up": "w=fp8_e4m3,a=fp8_e4m3",
                    "down": "w=bf16,a=bf16",  # unlisted: the target's high-precision default
                    "head": "w=fp16,a=fp16"}  # a layer entry overrides its unit
    stored = A.get_json(mlp, A.PLAN)
    assert stored["target"] == "h100" and stored["high"] == ["bf16", "bf16"]
    assert Plan.from_json(stored).units[ids["gate"][1]] == ("fp8_e4m3", "fp8_e4m3")
    # other metadata untouched
    assert all(A.REGION in n.metadata_props for n in mlp.graph)
    # no target: fp32 default
    m2 = _mlp()
    ApplyPlanPass(Plan(units={ids["down"][1]: ("bf16", "bf16"), ids["head"][0]: ("fp8_e5m2", "bf16")}))(m2)
    prec = {n.name: n.metadata_props[A.PRECISION] for n in A.layer_nodes(m2.graph)}
    assert prec["gate"] == "w=fp32,a=fp32" and prec["head"] == "w=fp8_e5m2,a=bf16"  # untied pairs without a target
