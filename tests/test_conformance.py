"""ONNX's conformance node cases (shipped in the onnx wheel) through the ONNX->torch interpreter.

What is out of scope is the one list ``runtime.conformance.OUT_OF_SCOPE`` (each with its reason);
everything else must pass, or raise a clear "not supported" ``OnnxAmpError``: a wrong result
fails the test, and so does a pass rate under 95 %, an in-scope case newly unsupported, or a
differentiable op that stops passing gradients. ``python -m onnx_amp.tools.bench.conformance``
prints the same numbers.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import onnx
import pytest

from onnx_amp.runtime import conformance as C

# in-scope cases allowed to be unsupported (case-name regex -> why); keep it empty or justified
KNOWN_UNSUPPORTED: dict[str, str] = {}
# ops whose float outputs carry no gradient to their float inputs, because the math has none
NON_DIFFERENTIABLE = {
    "Hardmax": "a one-hot of the argmax: piecewise constant",
    "QuantizeLinear": "quantized output (integers or 8-bit floats): piecewise constant",
    "MelWeightMatrix": "a constant table computed from scalar arguments",
}


@pytest.fixture(scope="module")
def cases():
    return C.load_cases()


@pytest.fixture(scope="module")
def summary(cases):
    return C.run_cases(cases)


def _fmt(results, n=15):
    return "; ".join(f"{r.name} ({r.op}): {r.detail}" for r in results[:n])


def test_no_wrong_result(summary):
    wrong = [r for r in summary.results if r.status == "wrong"]
    assert not wrong, f"{len(wrong)} in-scope cases give a wrong result: {_fmt(wrong)}"


def test_pass_rate_and_no_new_unsupported(summary):
    passed, in_scope = summary.by_status["pass"], summary.in_scope
    assert in_scope > 1500, f"only {in_scope} conformance cases in scope: did the onnx wheel change?"
    assert passed / in_scope >= 0.95, f"{passed}/{in_scope} in-scope cases pass, under 95 %"
    new = [r for r in summary.results if r.status == "unsupported"
           and not any(re.search(p, r.name) for p in KNOWN_UNSUPPORTED)]
    assert not new, f"{len(new)} in-scope cases are unsupported: implement them or list them: {_fmt(new)}"


def test_unsupported_errors_name_the_op(summary):
    for r in summary.results:
        if r.status == "unsupported":
            assert "not supported" in r.detail and ("node " in r.detail or "data type" in r.detail), r


def test_out_of_scope_list_is_explicit_and_live(cases):
    ops = C.case_ops(cases)
    used = set()
    for c in cases:
        used.add(C.scope_reason(c, ops[c.name]))
    for sel, reason in C.OUT_OF_SCOPE:
        assert re.match(r"^(op|domain|case):\S", sel), sel
        assert reason.strip() and "\n" not in reason, sel
        assert reason in used, f"out-of-scope entry {sel!r} matches no conformance case: remove it"


def test_out_of_scope_cases_are_never_wrong(cases):
    """Out of scope only means "may be unsupported": an op the interpreter does run must be right."""
    ops = C.case_ops(cases)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        res = [C.run_case(c, ops[c.name]) for c in cases if C.scope_reason(c, ops[c.name])]
    wrong = [r for r in res if r.status == "wrong"]
    assert not wrong, _fmt(wrong)


def _numeric_tensors(case) -> bool:
    g = case.model.graph
    for vi in list(g.input) + list(g.output):
        if not vi.type.HasField("tensor_type") or vi.type.tensor_type.elem_type == onnx.TensorProto.STRING:
            return False
    return True


# not expected to match under fallback either (op -> why)
_FALLBACK_SKIP = {
    "Bernoulli": "random samples",
    "ai.onnx.ml::TreeEnsemble": "double inputs reach it rounded to float32 (the interpreter's carriers) and "
                                "its thresholds compare them exactly",
}


def test_fallback_runs_what_the_interpreter_does_not(cases):
    """fallback=True: the unsupported numeric cases (classical ML, training, preview ops, image decoding)
    run as opaque steps and give the reference result."""
    ops = C.case_ops(cases)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        res = [C.run_case(c, ops[c.name], fallback=True) for c in cases
               if C.scope_reason(c, ops[c.name]) and _numeric_tensors(c) and ops[c.name] not in _FALLBACK_SKIP
               and C.run_case(c, ops[c.name]).status == "unsupported"]
    assert len(res) > 30
    bad = [r for r in res if r.status != "pass"]
    assert not bad, _fmt(bad)


def test_gradients_reach_float_inputs(cases, summary):
    """Every passing case with float inputs and outputs is differentiable end to end (autograd reaches
    an input), except the ops in NON_DIFFERENTIABLE."""
    ops = C.case_ops(cases)
    passing = {r.name for r in summary.results if r.status == "pass"}
    bad = []
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for c in cases:
            if c.name in passing and ops[c.name] not in NON_DIFFERENTIABLE:
                why = C.gradient_check(c)
                if why:
                    bad.append(f"{c.name}: {why}")
    assert not bad, "; ".join(bad[:15])
