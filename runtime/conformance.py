"""ONNX's conformance node cases run through the ONNX->torch interpreter (:mod:`runtime.torch_graph`).

ONNX ships, inside its wheel, one small model per operator behaviour with inputs and expected outputs
(``onnx.backend.test.case.node.collect_testcases``). :func:`run_cases` runs each through
``TorchGraph`` and sorts it into ``pass``, ``unsupported`` (the interpreter raised an ``OnnxAmpError``
saying what it does not support), ``wrong`` (a different result, or any other error) or
``out_of_scope`` (:data:`OUT_OF_SCOPE`: what real exporters do not emit for float models).
``tests/test_conformance.py`` asserts the numbers; ``python -m onnx_amp.tools.bench.conformance``
prints them.
"""

from __future__ import annotations

import re
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import torch

from onnx_amp.core.errors import OnnxAmpError

# The ONE list of what is out of scope, each with its reason. A selector is ``op:<OpType>``,
# ``domain:<domain>`` or ``case:<regex on the case name>``; everything else is in scope.
OUT_OF_SCOPE: list[tuple[str, str]] = [
    ("op:StringConcat", "string op: text pre-processing, not part of exported float networks"),
    ("op:StringNormalizer", "string op: text pre-processing, not part of exported float networks"),
    ("op:StringSplit", "string op: text pre-processing, not part of exported float networks"),
    ("op:RegexFullMatch", "string op: text pre-processing, not part of exported float networks"),
    ("op:TfIdfVectorizer", "text featurizer of classical-ML converters, not emitted for neural float models"),
    ("case:^test_equal_string", "string comparison: string tensors have no torch form"),
    ("op:SequenceInsert", "sequence type: exporters of float models emit tensors only"),
    ("op:SequenceMap", "sequence type: exporters of float models emit tensors only"),
    ("op:SplitToSequence", "sequence type: exporters of float models emit tensors only"),
    ("case:^test_(identity_sequence|if_seq|loop13_seq|loop16_seq_none|sequence_)",
     "sequence type: exporters of float models emit tensors only"),
    ("op:OptionalGetElement", "optional type: exporters of float models emit tensors only"),
    ("op:OptionalHasElement", "optional type: exporters of float models emit tensors only"),
    ("case:^test_(identity_opt|if_opt)", "optional type: exporters of float models emit tensors only"),
    ("op:Bernoulli", "random op: its samples cannot match a reference bit for bit"),
    ("case:^test_training_dropout(_default|_mask|_default_mask)?$",
     "Dropout in training mode: a random mask that cannot match a reference"),
    ("op:ImageDecoder", "image decoding: input pre-processing, not part of exported float networks"),
    ("domain:ai.onnx.preview.training", "training ops (optimizer updates): not in inference graphs"),
    ("domain:ai.onnx.preview", "preview domain (FlexAttention): experimental, no released exporter emits it"),
    ("domain:ai.onnx.ml", "classical-ML operator set (trees, label encoders): no neural layers to calibrate"),
]

_FLOAT8 = {
    onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E4M3FNUZ, onnx.TensorProto.FLOAT8E5M2,
    onnx.TensorProto.FLOAT8E5M2FNUZ, onnx.TensorProto.FLOAT4E2M1,
}
_FLOAT8 |= {onnx.TensorProto.FLOAT8E8M0} if hasattr(onnx.TensorProto, "FLOAT8E8M0") else set()
_SUBBYTE_INT = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
_SUBBYTE_INT |= {getattr(onnx.TensorProto, n) for n in ("INT2", "UINT2") if hasattr(onnx.TensorProto, n)}
# (rtol, atol) per expected element type. float32 / double: ONNX's own rtol (its expected values are
# often written to 4 decimals), atol 1e-6 for float32-vs-float64 cancellation near zero; float16 /
# bfloat16 references are computed in that type, the interpreter in float32: about 2 of its ulps;
# 8- and 4-bit floats and integers: exact
TOLERANCES = {
    onnx.TensorProto.FLOAT: (1e-3, 1e-6),
    onnx.TensorProto.DOUBLE: (1e-3, 1e-6),
    onnx.TensorProto.FLOAT16: (2e-3, 2e-3),
    onnx.TensorProto.BFLOAT16: (1.6e-2, 1.6e-2),
}


@dataclass
class CaseResult:
    name: str
    op: str
    status: str  # pass | unsupported | wrong | out_of_scope
    detail: str = ""
    seconds: float = 0.0


@dataclass
class Summary:
    results: list[CaseResult]
    by_status: Counter = field(default_factory=Counter)

    def __post_init__(self):
        self.by_status = Counter(r.status for r in self.results)

    @property
    def in_scope(self) -> int:
        return len(self.results) - self.by_status["out_of_scope"]

    def ops(self, status: str) -> Counter:
        return Counter(r.op for r in self.results if r.status == status)

    def ops_all_pass(self) -> list[str]:
        ops: dict[str, set[str]] = {}
        for r in self.results:
            if r.status != "out_of_scope":
                ops.setdefault(r.op, set()).add(r.status)
        return sorted(op for op, st in ops.items() if st == {"pass"})

    def op_types(self) -> list[str]:
        return sorted({r.op for r in self.results if r.status != "out_of_scope"})


def load_cases() -> list[Any]:
    """ONNX's node conformance cases (generated in-process by the onnx wheel; a few seconds)."""
    from onnx.backend.test.case import node

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return list(node.collect_testcases(None))


def case_ops(cases: list[Any]) -> dict[str, str]:
    """case name -> the operator it tests (an ``_expanded`` case: the operator it is the body of)."""
    first = {}
    for c in cases:
        nd = c.model.graph.node[0] if c.model.graph.node else None
        first[c.name] = (nd.domain + "::" if nd is not None and nd.domain else "") + (nd.op_type if nd else "")
    return {c.name: first.get(re.sub(r"_expanded(_ver\d+)?$", "", c.name), first[c.name]) for c in cases}


def _domains(graph: onnx.GraphProto) -> set[str]:
    out = set()
    for nd in graph.node:
        out.add(nd.domain)
        for a in nd.attribute:
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                out |= _domains(g)
    return out


def scope_reason(case: Any, op: str) -> str | None:
    """Why a case is out of scope (:data:`OUT_OF_SCOPE`), or None when it is in scope. ``op:`` matches the
    operator the case tests, ``domain:`` any node of its graph, ``case:`` its name."""
    op_type = op.rpartition("::")[2]
    domains = _domains(case.model.graph)
    for sel, reason in OUT_OF_SCOPE:
        kind, _, pat = sel.partition(":")
        if (kind == "op" and op_type == pat) or (kind == "domain" and pat in domains) or (
                kind == "case" and re.search(pat, case.name)):
            return reason
    return None


def _to_numpy(v: Any) -> Any:
    if isinstance(v, onnx.TensorProto):
        return onnx.numpy_helper.to_array(v)
    return v


def _elem_type(vi: onnx.ValueInfoProto) -> int:
    return vi.type.tensor_type.elem_type if vi.type.HasField("tensor_type") else 0


def _as_float64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).astype(np.float32).astype(np.float64) if a.dtype.kind == "V" or a.dtype.name.startswith(
        ("float8", "float4", "bfloat16")) else np.asarray(a, dtype=np.float64)


def compare(got: torch.Tensor, exp: np.ndarray, elem_type: int) -> str:
    """'' when ``got`` matches the expected output, else what differs."""
    if not isinstance(got, torch.Tensor):
        return f"returned {type(got).__name__}, expected a tensor"
    g = got.detach()
    if tuple(g.shape) != tuple(exp.shape):
        return f"shape {tuple(g.shape)} != expected {tuple(exp.shape)}"
    kind = "f" if elem_type in TOLERANCES or elem_type in _FLOAT8 else "i" if elem_type in _SUBBYTE_INT else (
        exp.dtype.kind)
    if kind == "b":
        if g.dtype != torch.bool:
            return f"dtype {g.dtype}, expected bool"
        return "" if np.array_equal(g.numpy(), exp) else "values differ"
    if kind in "iu":
        if g.is_floating_point() or g.dtype == torch.bool:
            return f"dtype {g.dtype}, expected an integer type"
        ok = np.array_equal(g.to(torch.int64).numpy(), np.asarray(exp).astype(np.int64))
        return "" if ok else "values differ"
    if not g.is_floating_point():
        return f"dtype {g.dtype}, expected a float type"
    gv, ev = g.to(torch.float64).numpy(), _as_float64(exp)
    rtol, atol = TOLERANCES.get(elem_type, (0.0, 0.0))
    if np.allclose(gv, ev, rtol=rtol, atol=atol, equal_nan=True):
        return ""
    with np.errstate(all="ignore"):
        err = np.nanmax(np.where(np.isnan(gv) == np.isnan(ev), np.abs(gv - ev), np.inf)) if gv.size else 0.0
    return f"max abs error {err:.3g} (rtol {rtol}, atol {atol})"


def run_case(case: Any, op: str, fallback: bool = False) -> CaseResult:
    """Run one conformance case through ``TorchGraph``; never raises."""
    from onnx_amp.runtime.torch_graph import TorchGraph

    t0 = time.perf_counter()
    graph = case.model.graph
    try:
        model = ir.from_proto(case.model)
        tg = TorchGraph(model, fallback=True) if fallback else TorchGraph(model)
        for inputs, outputs in case.data_sets:
            feeds = {vi.name: _to_numpy(v) for vi, v in zip(graph.input, inputs, strict=False)}
            with torch.no_grad():
                out = tg(feeds)
            for vi, exp in zip(graph.output, outputs, strict=False):
                why = compare(out[vi.name], np.asarray(_to_numpy(exp)), _elem_type(vi))
                if why:
                    return CaseResult(case.name, op, "wrong", f"output {vi.name!r}: {why}", time.perf_counter() - t0)
    except OnnxAmpError as e:
        status = "unsupported" if "not supported" in str(e) else "wrong"
        return CaseResult(case.name, op, status, str(e).splitlines()[0], time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001  (any other failure is a wrong result)
        return CaseResult(case.name, op, "wrong", f"{type(e).__name__}: {e}".splitlines()[0], time.perf_counter() - t0)
    return CaseResult(case.name, op, "pass", "", time.perf_counter() - t0)


def run_cases(cases: list[Any] | None = None, fallback: bool = False) -> Summary:
    """Every conformance case, sorted into pass / unsupported / wrong / out_of_scope."""
    cases = load_cases() if cases is None else cases
    ops = case_ops(cases)
    results = []
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for c in cases:
            reason = scope_reason(c, ops[c.name])
            if reason is not None:
                results.append(CaseResult(c.name, ops[c.name], "out_of_scope", reason))
            else:
                results.append(run_case(c, ops[c.name], fallback=fallback))
    return Summary(results)


def gradient_check(case: Any) -> str:
    """'' when gradients reach the case's float inputs from its float outputs (or there is no such pair)."""
    from onnx_amp.runtime.torch_graph import TorchGraph
    from onnx_amp.runtime.torch_ops import numpy_to_torch

    graph = case.model.graph
    tg = TorchGraph(ir.from_proto(case.model))
    inputs, _ = case.data_sets[0]
    feeds = {}
    for vi, v in zip(graph.input, inputs, strict=False):
        t = numpy_to_torch(_to_numpy(v))
        feeds[vi.name] = t.requires_grad_(True) if t.is_floating_point() else t
    float_in = [t for t in feeds.values() if t.requires_grad]
    if any(t.numel() == 0 for t in float_in):
        return ""  # an empty input: nothing to differentiate
    out = tg(feeds)
    float_out = [out[vi.name] for vi in graph.output if out[vi.name].is_floating_point()]
    if not float_in or not float_out:
        return ""
    live = [o for o in float_out if o.requires_grad]
    if not live:
        return "no float output depends on a float input through autograd"
    loss = sum(torch.where(torch.isfinite(o), o, torch.zeros_like(o)).sum() for o in live)
    grads = torch.autograd.grad(loss, float_in, allow_unused=True)
    return "" if any(g is not None for g in grads) else "no gradient reaches a float input"
