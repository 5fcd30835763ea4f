"""Sensitivity calibration: Taylor loss-MSE figures per layer from one forward+backward per batch.

The ONNX graph itself runs in torch autograd (:class:`~onnx_amp.runtime.torch_graph.TorchGraph`),
so every annotated layer (``onnx_amp.layer``) maps to its torch operation by node name. Per layer:

- ``s_a``/``s_b`` = mean_n ||x (.) dL_n/dx||^2 for the activation operand(s): the gradient of the
  per-sample loss sum w.r.t. a tensor of sample n *is* dL_n/dx (inference mode, no cross-sample
  ops), taken on a private view of the operand so siblings reading the same tensor don't mix.
- ``s_w`` = mean_n ||W (.) dL_n/dW||^2: dL/dW sums over the batch, so per-sample weight gradients
  are rebuilt from the layer input A and the output gradient G, a chunk of samples at a time
  (MatMul with a 2-D weight: ``einsum(A_n, G_n)``; Gemm/Conv/other: ``vmap(vjp)``).
- ``gsq_*`` = mean_n ||dL_n/dx||^2 (per output channel for W), ``amax`` of A/B (per tensor), W (per
  output channel), and of the layer output Y (``amax_y``).

Batches whose loss is NaN/Inf raise ``OnnxAmpError`` naming the batch. Layers that cannot be
matched or measured are listed in ``CalibrationResult.unmatched`` (and in the model summary); the
solver keeps them in high precision. An op the interpreter cannot run does not stop calibration:
it runs opaquely (``TorchGraph(fallback=True)``: forward only, no gradient through it), it is
listed in ``CalibrationResult.opaque``, and the layers upstream of it, whose sensitivities would be
incomplete, are listed as unmatched.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx_ir as ir
import torch
from tqdm.auto import tqdm

from onnx_amp.core import annotations as A
from onnx_amp.runtime.data import CalibrationData, load_calibration_data
from onnx_amp.runtime.losses import LossSpec, resolve_loss
from onnx_amp.passes.lossmodel import LayerStats
from onnx_amp.core.errors import OnnxAmpError
from onnx_amp.runtime.torch_graph import TorchGraph

CHUNK_BYTES = 64 * 2**20  # per-sample weight-gradient chunk budget


@dataclass
class CalibrationResult:
    layers: dict[str, LayerStats]
    unmatched: list[dict[str, str]] = field(default_factory=list)  # [{"layer","node","reason"}]
    no_gradient: list[str] = field(default_factory=list)  # matched layers whose gradient is 0 (off the loss path)
    opaque: list[str] = field(default_factory=list)  # nodes run without gradient (the interpreter lacks their op)
    samples: int = 0
    batches: int = 0
    loss: dict[str, Any] = field(default_factory=dict)
    mean_loss: float = float("nan")
    seconds: float = 0.0
    source: str = ""
    #: per-sample first-order loss changes {(layer, slot, format): t[N]} (``measure_format_errors``)
    terms: dict[tuple[str, str, str], np.ndarray] = field(default_factory=dict, repr=False)
    curv_terms: dict[tuple[str, str, str], np.ndarray] = field(default_factory=dict, repr=False)
    spec: LossSpec | None = field(default=None, repr=False)  # the resolved loss (reused by the second pass)

    def summary(self) -> dict[str, Any]:
        return {
            "version": 1, "samples": self.samples, "batches": self.batches, "loss": self.loss,
            "mean_loss": self.mean_loss, "seconds": round(self.seconds, 3), "data": self.source,
            "layers": len(self.layers), "unmatched": self.unmatched, "no_gradient": self.no_gradient,
            "opaque_nodes": self.opaque,
        }


class _Acc:
    """Running sums for one layer."""

    def __init__(self, lid: str, node: ir.Node, kind: str, w_index: int | None, w_axis: int | None):
        self.lid, self.node, self.kind = lid, node, kind
        self.w_index, self.w_axis = w_index, w_axis
        self.act_inputs = [0, 1] if kind == "act_act" else [0 if w_index != 0 else 1]
        self.s = {"a": 0.0, "b": 0.0, "w": 0.0}
        self.gsq = {"a": 0.0, "b": 0.0}
        self.gsq_w: torch.Tensor | None = None
        self.amax = {"a": 0.0, "b": 0.0, "y": 0.0}
        self.amax_w: torch.Tensor | None = None
        self.grad_seen = False
        self.fired = False
        self.error: str | None = None
        # per batch
        self.inputs: dict[int, torch.Tensor] = {}

    def slot(self, j: int) -> str | None:
        if j >= 2:
            return None  # bias (Gemm C, Conv B)
        if self.kind == "act_act":
            return "a" if j == 0 else "b"
        return "w" if j == self.w_index else "a"


def _per_sample(t: torch.Tensor, B: int) -> torch.Tensor:
    """[B, rest] view of a tensor whose leading dim is the batch (or batch x rows)."""
    if t.dim() == 0 or t.shape[0] % B != 0:
        raise ValueError(f"operand of shape {tuple(t.shape)} has no leading batch axis of size {B}")
    return t.reshape(B, -1)


def _layer_fn(node: ir.Node, w_index: int,
              inputs: dict[int, torch.Tensor]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """f(a_sample, w) -> y_sample for one sample (leading axis kept, size 1)."""
    from onnx_amp.runtime.torch_graph import OPS

    n_in = len(node.inputs)

    def f(a, w):
        args = [inputs.get(j) for j in range(n_in)]
        args[w_index] = w
        args[1 - w_index] = a
        return OPS[node.op_type](node, args)

    return f


class _Calibrator:
    def __init__(self, tg: TorchGraph, accs: dict[str, _Acc], chunk_bytes: int):
        self.tg = tg
        self.by_node = {a.node.name: a for a in accs.values()}
        self.accs = accs
        self.chunk_bytes = chunk_bytes
        self.B = 1

    # -- forward hooks
    def operand_hook(self, node: ir.Node, j: int, t: torch.Tensor) -> torch.Tensor:
        acc = self.by_node.get(node.name)
        if acc is None or acc.error:
            return t
        acc.fired = True
        slot = acc.slot(j)
        if slot is None:
            acc.inputs[j] = t.detach()
            return t
        if slot == "w":
            if acc.amax_w is None:
                ax = acc.w_axis % t.dim()
                dims = [d for d in range(t.dim()) if d != ax]
                acc.amax_w = t.detach().abs().amax(dim=dims).double() if dims else t.detach().abs().double()
            acc.inputs[j] = t.detach()
            return t
        acc.amax[slot] = max(acc.amax[slot], float(t.detach().abs().max()) if t.numel() else 0.0)
        try:
            _per_sample(t, self.B)
        except ValueError as e:
            acc.error = str(e)
            return t
        x = t.detach()
        acc.inputs[j] = x
        t2 = t.view_as(t) if t.requires_grad else t.detach().requires_grad_(True)
        B = self.B

        def hook(g, acc=acc, slot=slot, x=x, B=B):
            g = g.detach()
            acc.grad_seen = True
            gs = _per_sample(g, B).float()
            xs = _per_sample(x, B).float()
            xg = xs * gs
            acc.s[slot] += float(torch.linalg.vecdot(xg, xg).double().sum())
            acc.gsq[slot] += float(torch.linalg.vecdot(gs, gs).double().sum())

        t2.register_hook(hook)
        return t2

    def output_hook(self, node: ir.Node, j: int, y: torch.Tensor) -> torch.Tensor:
        acc = self.by_node.get(node.name)
        if acc is None or j != 0 or acc.error:
            return y
        acc.amax["y"] = max(acc.amax["y"], float(y.detach().abs().max()) if y.numel() else 0.0)
        if acc.kind != "weight" or not y.requires_grad:
            return y
        y2 = y.view_as(y)
        y2.register_hook(lambda g, acc=acc: self._weight_products(acc, g.detach()))
        return y2

    # -- per-sample weight products
    def _weight_products(self, acc: _Acc, g: torch.Tensor) -> None:
        try:
            self._weight_products_impl(acc, g)
        except Exception as e:  # recorded, reported as unmatched: never silently dropped
            acc.error = f"per-sample weight gradient failed: {type(e).__name__}: {e}"

    def _weight_products_impl(self, acc: _Acc, g: torch.Tensor) -> None:
        B = self.B
        node = acc.node
        wi = acc.w_index
        ai = 1 - wi
        W = acc.inputs[wi]
        Ain = acc.inputs[ai]
        ax = acc.w_axis % W.dim()
        other = [d for d in range(W.dim()) if d != ax]
        if acc.gsq_w is None:
            acc.gsq_w = torch.zeros(W.shape[ax], dtype=torch.float64)
        W2 = (W.float() ** 2)
        per_bytes = W.numel() * 4
        chunk = max(1, min(B, self.chunk_bytes // max(per_bytes, 1)))
        if node.op_type == "MatMul" and W.dim() == 2 and wi == 1:
            K, N = W.shape
            As = Ain.reshape(B, -1, K)
            Gs = g.reshape(B, -1, N)
            for s in range(0, B, chunk):
                gw = torch.einsum("brk,brn->bkn", As[s:s + chunk].float(), Gs[s:s + chunk].float())
                self._accumulate(acc, gw, W2, ax, other)
            return
        if node.op_type == "MatMul" and W.dim() == 2 and wi == 0:
            M, K = W.shape
            As = Ain.reshape(B, -1, K, Ain.shape[-1]) if Ain.dim() >= 2 else None
            Gs = g.reshape(B, -1, M, g.shape[-1])
            for s in range(0, B, chunk):
                gw = torch.einsum("brmn,brkn->bmk", Gs[s:s + chunk].float(), As[s:s + chunk].float())
                self._accumulate(acc, gw, W2, ax, other)
            return
        # generic: vjp of the layer op w.r.t. W, one sample at a time inside a vmap'd chunk
        f = _layer_fn(node, wi, acc.inputs)
        rows = Ain.shape[0] // B
        Ab = Ain.reshape((B, rows) + tuple(Ain.shape[1:]))
        Gb = g.reshape((B, g.shape[0] // B) + tuple(g.shape[1:]))

        def one(a, gg):
            _, vjp = torch.func.vjp(lambda w: f(a, w), W)
            return vjp(gg)[0]

        for s in range(0, B, chunk):
            try:
                gw = torch.func.vmap(one)(Ab[s:s + chunk], Gb[s:s + chunk])
            except Exception:
                gw = torch.stack([one(Ab[i], Gb[i]) for i in range(s, min(B, s + chunk))])
            self._accumulate(acc, gw.float(), W2, ax, other)

    @staticmethod
    def _accumulate(acc: _Acc, gw: torch.Tensor, W2: torch.Tensor, ax: int, other: list[int]) -> None:
        acc.grad_seen = True
        g2 = gw * gw
        acc.s["w"] += float((g2 * W2.unsqueeze(0)).sum(dim=tuple(range(1, g2.dim()))).double().sum())
        dims = [d + 1 for d in other]
        acc.gsq_w += g2.sum(dim=dims).double().sum(0)


def _layers_of(model: ir.Model) -> list[tuple[str, ir.Node]]:
    return [(n.metadata_props[A.LAYER], n) for n in model.graph if A.LAYER in n.metadata_props]


def ensure_partitioned(model: ir.Model) -> ir.Model:
    """Run ``PartitionPass`` (in place) when the model has no layer annotations."""
    if not _layers_of(model):
        from onnx_amp.passes.partition import PartitionPass
        PartitionPass()(model)
    return model


def _to_torch(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}


def _accumulators(model: ir.Model, tg: TorchGraph) -> tuple[dict[str, _Acc], list[dict[str, str]]]:
    """One :class:`_Acc` per layer the torch graph can run; the others listed as unmatched."""
    graph_nodes = {n.name: n for n in tg.nodes}
    accs: dict[str, _Acc] = {}
    unmatched: list[dict[str, str]] = []
    for lid, node in _layers_of(model):
        p = node.metadata_props
        kind = p.get(A.LAYER_KIND, "weight")
        if node.name not in graph_nodes:
            unmatched.append({"layer": lid, "node": node.name, "reason": "node not found in the torch graph"})
            continue
        wi = int(p[A.WEIGHT_INPUT]) if A.WEIGHT_INPUT in p else (1 if kind == "weight" else None)
        wa = int(p[A.WEIGHT_AXIS]) if A.WEIGHT_AXIS in p else (-1 if kind == "weight" else None)
        if kind == "weight" and wi not in (0, 1):
            unmatched.append({"layer": lid, "node": node.name, "reason": f"weight input {wi} not supported"})
            continue
        accs[lid] = _Acc(lid, graph_nodes[node.name], kind, wi, wa)
    return accs, unmatched


def _check_loss(L: torch.Tensor, spec: LossSpec, B: int, bi: int, n_seen: int, opaque: bool = False) -> None:
    """A calibration batch's per-sample loss: one finite value per sample, depending on the layers."""
    if L.shape[0] != B:
        raise OnnxAmpError(f"loss {spec.name} returned {L.shape[0]} values for a batch of {B} samples")
    if not torch.isfinite(L).all():
        bad = [i for i in range(B) if not math.isfinite(float(L[i].detach()))]
        raise OnnxAmpError(
            f"calibration batch {bi} (samples {n_seen}..{n_seen + B - 1}): loss is NaN/Inf for sample(s) "
            f"{[n_seen + i for i in bad][:8]}; check the data (e.g. padding-only rows, out-of-vocabulary ids) "
            "and the model"
        )
    if not L.requires_grad and not opaque:
        raise OnnxAmpError("the loss does not depend on any layer of the model (no gradient); check output_name/loss")


def _layer_stats(accs: dict[str, _Acc], n_seen: int, unmatched: list[dict[str, str]]
                 ) -> tuple[dict[str, LayerStats], list[str]]:
    """The accumulated sums as per-sample means (:class:`LayerStats`); failed layers join ``unmatched``."""
    layers: dict[str, LayerStats] = {}
    no_grad: list[str] = []
    for lid, a in accs.items():
        if a.error or not a.fired:
            unmatched.append({"layer": lid, "node": a.node.name,
                              "reason": a.error or "the layer never ran (not reached by the graph outputs?)"})
            continue
        if not a.grad_seen:
            no_grad.append(lid)
        st = LayerStats(
            layer=lid, node=a.node.name, kind=a.kind, unit=a.node.metadata_props.get(A.UNIT),
            s_a=a.s["a"] / n_seen, s_b=a.s["b"] / n_seen, s_w=a.s["w"] / n_seen,
            gsq_a=a.gsq["a"] / n_seen, gsq_b=a.gsq["b"] / n_seen,
            amax_a=a.amax["a"], amax_b=a.amax["b"], amax_y=a.amax["y"], weight_axis=a.w_axis,
        )
        if a.kind == "weight":
            st.amax_w = a.amax_w.numpy() if a.amax_w is not None else None
            st.gsq_w = (a.gsq_w / n_seen).numpy() if a.gsq_w is not None else (
                np.zeros_like(st.amax_w) if st.amax_w is not None else None)
        layers[lid] = st
    return layers, no_grad


def _mark_opaque_upstream(tg: TorchGraph, accs: dict[str, _Acc], spec: LossSpec | None) -> None:
    """Layers whose gradient to the loss's output passes through an opaque node are unmatched (an
    opaque node on another output's branch, e.g. a label lookup beside the probabilities, is harmless)."""
    if not getattr(tg, "opaque_nodes", None):
        return
    upstream = {n.name for n in tg.layers_upstream_of_opaque([spec.output] if spec is not None else None)}
    for a in accs.values():
        if a.node.name in upstream and not a.error:
            a.error = (f"its gradient passes through node(s) {', '.join(tg.opaque_nodes[:3])} that the interpreter "
                       "runs without gradient; kept in high precision")


def calibrate(model: ir.Model, data: Any, loss: Any = None, batch_size: int = 8, max_samples: int | None = None,
              tokenizer: Any = None, seq_len: int = 128, output_name: str | None = None,
              chunk_bytes: int = CHUNK_BYTES, progress: bool = True, torch_graph: TorchGraph | None = None) -> CalibrationResult:
    """Per-layer Taylor sensitivities of ``model`` over ``data`` (see module docstring).

    ``model`` gets partitioned in place first if it has no ``onnx_amp.layer`` annotations.
    ``loss``: None/"auto", "causal_lm", "classification", or ``fn(output, batch) -> [B]``; the
    resolved :class:`LossSpec` is kept on the result (``spec``) so later passes use the same loss.
    """
    t0 = time.perf_counter()
    ensure_partitioned(model)
    cdata: CalibrationData = load_calibration_data(data, model, tokenizer=tokenizer, seq_len=seq_len, max_samples=max_samples)
    tg = torch_graph or TorchGraph(model, fallback=True)
    accs, unmatched = _accumulators(model, tg)
    cal = _Calibrator(tg, accs, chunk_bytes)
    spec: LossSpec | None = None if not isinstance(loss, LossSpec) else loss
    total = cdata.num_samples if max_samples is None else min(max_samples, cdata.num_samples)
    n_seen, n_batches, loss_sum = 0, 0, 0.0
    bar = tqdm(total=total, desc="onnx-amp calibrate", unit="sample", disable=not progress)
    for bi, batch in enumerate(cdata.batches(batch_size, max_samples)):
        feeds = {k: v for k, v in batch.items() if k != "labels"}
        cal.B = B = int(next(iter(feeds.values())).shape[0])
        for a in accs.values():
            a.inputs = {}
        with torch.enable_grad():
            outs = tg(_to_torch(feeds), operand_hook=cal.operand_hook, output_hook=cal.output_hook)
            if spec is None:
                spec = resolve_loss(loss, model, output_name, sample_outputs=outs)
            L = spec(outs, _to_torch(batch))
            _check_loss(L, spec, B, bi, n_seen, opaque=bool(getattr(tg, "opaque_nodes", None)))
            if L.requires_grad:  # else every layer is behind an opaque node: all kept high below
                L.sum().backward()
        loss_sum += float(L.detach().double().sum())
        n_seen, n_batches = n_seen + B, n_batches + 1
        bar.update(B)
        for a in accs.values():
            a.inputs = {}
    bar.close()
    if n_seen == 0:
        raise OnnxAmpError("calibration data yielded no samples")
    _mark_opaque_upstream(tg, accs, spec)
    layers, no_grad = _layer_stats(accs, n_seen, unmatched)
    return CalibrationResult(
        layers=layers, unmatched=unmatched, no_gradient=no_grad, samples=n_seen, batches=n_batches,
        loss=spec.to_json() if spec else {}, mean_loss=loss_sum / n_seen, seconds=time.perf_counter() - t0,
        source=cdata.source, opaque=list(getattr(tg, "opaque_nodes", [])), spec=spec,
    )
