"""The pass contract: results in PassResult subclasses, modified computed, preconditions in
requires() as one-line errors (also through onnx_ir's PassManager), and passes free of torch,
ONNX Runtime and OpenVINO."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_amp.passes
from onnx_amp.core import annotations as A
from onnx_amp.core.errors import OnnxAmpError, describe
from onnx_amp.passes.base import PassPreconditionError
from onnx_amp.passes.gains import GainsPass, GainsResult
from onnx_amp.passes.partition import PartitionPass, PartitionResult
from onnx_amp.passes.plan import ApplyPlanPass, PlanResult, uniform_plan
from onnx_amp.passes.rewrite import RewritePass, RewriteResult
from onnx_amp.passes.solve import SolvePass, SolveResult


def mlp() -> ir.Model:
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(3):
        inits.append(numpy_helper.from_array((rng.standard_normal((16, 16)) * 0.3).astype(np.float32), f"w{i}"))
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"fc{i}"),
                  helper.make_node("Relu", [f"h{i}"], [f"r{i}"], name=f"act{i}")]
        x = f"r{i}"
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 16])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["B", 16])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    return ir.from_proto(m)


def calibrated() -> ir.Model:
    m = mlp()
    PartitionPass()(m)
    for n in A.layer_nodes(m.graph):  # sensitivities and maxima as calibration writes them
        for key, v in ((A.SENS_A, 1e-3), (A.SENS_W, 2e-3), (A.GSQ_A, 1e-2), (A.AMAX_A, 3.0), (A.AMAX_Y, 4.0)):
            A.set_float(n, key, v)
        A.set_json(n, A.GSQ_W, [1e-3] * 16)
        A.set_json(n, A.AMAX_W, [0.9] * 16)
    return m


def test_results_travel_in_the_pass_result_and_modified_is_computed():
    m = mlp()
    r = PartitionPass()(m)
    assert isinstance(r, PartitionResult) and r.modified and len(r.partition.layers) == 3
    again = PartitionPass()(m)
    assert not again.modified, "re-partitioning an unchanged model changes no annotation"
    m = calibrated()
    g = GainsPass("gaudi2", batch_size=8, seq_len=16)(m)
    assert isinstance(g, GainsResult) and g.modified and set(g.gains["regions"]) == {r["id"] for r in
                                                                                     A.get_json(m, A.REGIONS)["regions"]}
    assert A.get_json(m, A.TARGET)["name"] == "gaudi2"  # the whole target travels with the model
    s = SolvePass("ip", tau_relative=0.5, metric="memory")(m)
    assert isinstance(s, SolveResult) and s.modified and s.plan.units and s.solution.feasible
    assert not SolvePass("ip", tau_relative=0.5, metric="memory")(m).modified  # same plan again
    p = ApplyPlanPass(uniform_plan(m, "fp8_e4m3", "fp8_e4m3"))(m)
    assert isinstance(p, PlanResult) and p.modified and len(p.plan.units) == 3
    out = RewritePass("emulate")(m)
    assert isinstance(out, RewriteResult) and out.model is not m and out.report.inserted > 0


@pytest.mark.parametrize("make_pass, model_fn, expect", [
    (lambda: GainsPass("cpu"), mlp, "run the partition pass"),
    (lambda: SolvePass("ip", tau=1.0), mlp, "run the partition pass"),
    (lambda: ApplyPlanPass(uniform_plan(calibrated(), "int8", "int8")), mlp, "run the partition pass"),
    (lambda: RewritePass("emulate"), lambda: PartitionPass()(mlp()).model, "no onnx_amp.precision"),
])
def test_preconditions_are_one_line_errors_also_through_the_pass_manager(make_pass, model_fn, expect):
    with pytest.raises(PassPreconditionError, match=expect) as info:
        make_pass()(model_fn())
    assert isinstance(info.value, OnnxAmpError) and isinstance(info.value, ir.passes.PreconditionError)
    with pytest.raises(Exception) as wrapped:
        ir.passes.PassManager([make_pass()])(model_fn())
    msg, expected = describe(wrapped.value)
    assert expected and expect in msg and "\n" not in msg


def test_importing_the_passes_loads_no_runtime():
    names = [f"onnx_amp.passes.{m.name}" for m in pkgutil.iter_modules(onnx_amp.passes.__path__)]
    code = ("import importlib, json, sys\n"
            f"for n in {names!r}: importlib.import_module(n)\n"
            "print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] in "
            "('torch', 'onnxruntime', 'openvino', 'matplotlib') or k.startswith(('onnx_amp.runtime', 'onnx_amp.tools')))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [], "passes must depend only on onnx_amp.core, onnx_ir and numpy"
    assert len(names) >= 10
