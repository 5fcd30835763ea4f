"""The measured-error pass (the "actual error" and "shift" loss models): a second forward+backward
over the calibration data that records, per layer operand and format, the first-order loss change
of the operand's actual rounding error under the rewrite's scales, and (``shift``) its
second-order mean loss change through a curvature probe. See :func:`measure_format_errors`."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import onnx_ir as ir
import torch
from tqdm.auto import tqdm

from onnx_amp.core import annotations as A
from onnx_amp.core.errors import OnnxAmpError
from onnx_amp.runtime.calibrate import CalibrationResult, _per_sample, _to_torch
from onnx_amp.runtime.data import load_calibration_data
from onnx_amp.runtime.losses import LossSpec, resolve_loss
from onnx_amp.runtime.torch_graph import TorchGraph


def _output_q_layers(model: ir.Model, int8_output_q: bool | str) -> set[str]:
    """Layer nodes whose INT8 lowering puts a ``QuantizeLinear -> DequantizeLinear`` on the output
    (``passes.rewrite``: ``int8_output_q=True`` on every layer, ``"conv"`` on Conv/ConvTranspose)."""
    if not int8_output_q:
        return set()
    return {n.name for n in A.layer_nodes(model.graph)
            if int8_output_q is True or n.op_type in ("Conv", "ConvTranspose")}


class _ErrorTerms:
    """Hooks of the measured-error pass: for each layer operand (and INT8 output Q) and format, the
    per-sample first-order loss change ``t_n = <dL_n/dx, Q_f(x) - x>``, one array per batch."""

    def __init__(self, result: CalibrationResult, formats: list[str], output_q: set[str]):
        self.by_node = {st.node: st for st in result.layers.values()}
        self.formats, self.output_q = list(formats), output_q
        self.terms: dict[tuple[str, str, str], list[np.ndarray]] = {}
        self.curv: dict[tuple[str, str, str], list[np.ndarray]] = {}
        self.mode = "loss"
        self.shift = False  # the curvature probe runs (the shift loss model)
        self.wq_cache: dict[tuple[str, str], torch.Tensor] = {}
        self.B = 1
        self.inputs: dict[str, dict[int, torch.Tensor]] = {}

    def _watch(self, t: torch.Tensor, lid: str, slot: str,
               errs: dict[str, torch.Tensor] | Callable[[], dict[str, torch.Tensor]]) -> torch.Tensor:
        """``t`` (or a view of it) whose gradient hook records ``<g, err_f>`` per sample, into
        ``terms`` on the loss's backward and into ``curv`` on the curvature probe's (``mode``).
        ``errs`` may be a function that computes them in the hook (less memory held per layer)."""
        t2 = t.view_as(t) if t.requires_grad else t.detach().requires_grad_(True)
        B = self.B

        def hook(g):
            gs = _per_sample(g.detach(), B).double()
            into = self.terms if self.mode == "loss" else self.curv
            for f, e in (errs() if callable(errs) else errs).items():
                per = (gs * _per_sample(e, B).double()).sum(1)
                into.setdefault((lid, slot, f), []).append(per.numpy())

        t2.register_hook(hook)
        return t2

    def operand_hook(self, node: ir.Node, j: int, t: torch.Tensor) -> torch.Tensor:
        from onnx_amp.runtime.fakequant import apply_operand_format

        st = self.by_node.get(node.name)
        if st is None:
            return t
        self.inputs.setdefault(node.name, {})[j] = t.detach()
        if j >= 2 or (st.kind != "act_act" and j == int(node.metadata_props.get(A.WEIGHT_INPUT, "1"))):
            return t
        slot = ("a" if j == 0 else "b") if st.kind == "act_act" else "a"
        amax = st.amax_a if slot == "a" else st.amax_b
        x, fmts = t.detach(), self.formats
        return self._watch(t, st.layer, slot, lambda: {f: apply_operand_format(x, f, amax=amax) - x for f in fmts})

    def _weight_deltas(self, node: ir.Node, y0: torch.Tensor) -> dict[str, torch.Tensor]:
        """``f(A, Q(W)) - f(A, W)`` per format: the weight's error seen at the layer output."""
        from onnx_amp.runtime.fakequant import apply_operand_format
        from onnx_amp.runtime.torch_graph import OPS

        wi = int(node.metadata_props.get(A.WEIGHT_INPUT, "1"))
        axis = int(node.metadata_props.get(A.WEIGHT_AXIS, "-1"))
        ins = self.inputs.get(node.name, {})
        out = {}
        for f in self.formats:
            key = (node.name, f)
            if key not in self.wq_cache:
                self.wq_cache[key] = apply_operand_format(ins[wi], f, axis=axis)
            args = [ins.get(k) for k in range(len(node.inputs))]
            args[wi] = self.wq_cache[key]
            with torch.no_grad():
                out[f] = OPS[node.op_type](node, args) - y0
        return out

    def output_hook(self, node: ir.Node, j: int, y: torch.Tensor) -> torch.Tensor:
        from onnx_amp.runtime.fakequant import apply_operand_format

        st = self.by_node.get(node.name)
        if st is None or j != 0 or not y.requires_grad:
            return y
        y0 = y.detach()
        if st.kind == "weight":
            y = self._watch(y, st.layer, "w", self._weight_deltas(node, y0))
        if node.name in self.output_q and "int8" in self.formats and st.amax_y:
            y = self._watch(y, st.layer, "y", {"int8": apply_operand_format(y0, "int8", amax=st.amax_y) - y0})
        return y

    def per_sample(self) -> dict[tuple[str, str, str], np.ndarray]:
        return {k: np.concatenate(v) for k, v in self.terms.items()}


def curvature_probe(spec: LossSpec, outs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                    gen: torch.Generator) -> torch.Tensor | None:
    """A per-sample probe loss ``P_n`` whose gradient ``g'`` gives the Gauss-Newton curvature of the
    cross-entropy: ``E[(g'.dz)^2] = mean_t dz_t^T H_t dz_t = 2 E[dL_n]`` to second order, for an
    output perturbation ``dz`` (``H_t = diag(p_t) - p_t p_t^T`` on logits). Labels are drawn from the
    model's own distribution and each token gets a random sign over ``sqrt(T)``, so cross terms
    vanish in expectation. ``None`` for losses without a cross-entropy (output_mse, custom)."""
    from onnx_amp.runtime.losses import log_probs

    if spec.name not in ("causal_lm", "classification"):
        return None
    x = outs[spec.output]
    if spec.name == "causal_lm":
        lp = log_probs(x[:, :-1], spec.kind)
        mask = batch.get("attention_mask")
        m = mask[:, 1:].to(lp.dtype) if mask is not None else torch.ones(lp.shape[:2], dtype=lp.dtype)
    else:
        lp = log_probs(x.reshape(x.shape[0], -1), spec.kind).unsqueeze(1)
        m = torch.ones(lp.shape[:2], dtype=lp.dtype)
    p = lp.detach().exp().reshape(-1, lp.shape[-1]).clamp_min(0)
    y = torch.multinomial(p, 1, generator=gen).view(lp.shape[:2])
    ce = -lp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    sign = torch.randint(0, 2, ce.shape, generator=gen).to(ce.dtype) * 2 - 1
    return (ce * sign * m).sum(1) / m.sum(1).clamp(min=1).sqrt()


def measure_format_errors(model: ir.Model, data: Any, result: CalibrationResult, formats: list[str],
                          batch_size: int = 8, max_samples: int | None = None, loss: Any = None,
                          output_name: str | None = None, torch_graph: TorchGraph | None = None,
                          progress: bool = True, int8_output_q: bool | str = False, shift: bool = False,
                          seed: int = 0) -> CalibrationResult:
    """The "actual error" loss model: a second forward+backward pass that, for each layer operand and
    each format f, records the per-sample first-order loss change ``t_n = sum_i g_i e_i`` with
    ``e = Q_f(x) - x`` the operand's *actual* rounding error under the rewrite's scales (per-tensor
    calibration amax for activations, per-channel for weights). For a weight, ``sum_i gW_i e_i`` is
    taken as ``<dL/dY, f(A, W + e) - f(A, W)>`` (exact for a layer linear in W). With
    ``int8_output_q`` (the target's lowering, ``passes.rewrite``) the INT8 output ``Q -> DQ`` of the
    layers that get one is measured too (slot ``"y"``). With ``shift`` (the ``shift`` loss model) a
    second backward of the same forward, through :func:`curvature_probe` (labels drawn from the
    model, random signs, ``seed``), measures each of those errors' second-order mean loss change
    ``mu = mean_n t'_n^2 / 2``. Per layer, ``LayerStats.extra`` gets ``{slot: {format: mean_n t_n^2}}``
    and ``extra["shift"] = {slot: {format: mu}}`` (annotation ``onnx_amp.sens.measured``, read by
    :mod:`onnx_amp.passes.lossmodel`); the result keeps the per-sample terms (``terms``,
    ``curv_terms``: ``{(layer, slot, format): t[N]}``).
    """
    cdata = load_calibration_data(data, model, max_samples=max_samples)
    tg = torch_graph or TorchGraph(model, fallback=True)
    hooks = _ErrorTerms(result, formats, _output_q_layers(model, int8_output_q))
    hooks.shift = shift
    spec: LossSpec | None = loss if isinstance(loss, LossSpec) else getattr(result, "spec", None)
    total = cdata.num_samples if max_samples is None else min(max_samples, cdata.num_samples)
    bar = tqdm(total=total, desc="onnx-amp measured errors", unit="sample", disable=not progress)
    gen = torch.Generator().manual_seed(seed)
    for bi, batch in enumerate(cdata.batches(batch_size, max_samples)):
        feeds = {k: v for k, v in batch.items() if k != "labels"}
        hooks.B = int(next(iter(feeds.values())).shape[0])
        hooks.inputs = {}
        with torch.enable_grad():
            outs = tg(_to_torch(feeds), operand_hook=hooks.operand_hook, output_hook=hooks.output_hook)
            if spec is None:
                spec = resolve_loss(loss, model, output_name, sample_outputs=outs)
            tb = _to_torch(batch)
            L = spec(outs, tb)
            if not torch.isfinite(L).all():
                raise OnnxAmpError(f"measured-error pass batch {bi}: loss is NaN/Inf")
            if not L.requires_grad:  # no layer left to measure (all kept high: unmatched)
                bar.update(hooks.B)
                continue
            probe = curvature_probe(spec, outs, tb, gen) if shift else None
            hooks.mode = "loss"
            L.sum().backward(retain_graph=probe is not None)
            if probe is not None:
                hooks.mode = "curv"
                probe.sum().backward()
        bar.update(hooks.B)
    bar.close()
    hooks.inputs = {}
    _store_terms(result, hooks)
    return result


def _store_terms(result: CalibrationResult, hooks: _ErrorTerms) -> None:
    """Per layer: ``extra[slot][f] = mean_n t_n^2`` and ``extra["shift"][slot][f] = mean_n t'_n^2 / 2``
    (the second-order mean loss change, from the curvature probe); the per-sample terms on the result."""
    result.terms = {k: np.concatenate(v) for k, v in hooks.terms.items()}
    result.curv_terms = {k: np.concatenate(v) for k, v in hooks.curv.items()}
    for st in result.layers.values():
        st.extra = {"shift": {}} if hooks.shift else {}
    for (lid, slot, f), t in result.terms.items():
        result.layers[lid].extra.setdefault(slot, {})[f] = float(np.mean(t * t))
    for (lid, slot, f), t in result.curv_terms.items():
        result.layers[lid].extra.setdefault("shift", {}).setdefault(slot, {})[f] = 0.5 * float(np.mean(t * t))
