"""Per-sample losses L_n (a ``[B]`` tensor) for calibration and measured loss MSE.

- :func:`causal_lm_loss`: next-token cross-entropy, mean over the tokens of each sample
  (positions where ``attention_mask`` is 0 are ignored when a mask is given).
- :func:`classification_loss`: cross-entropy against ``labels``, or, unlabeled, against the
  full-precision model's own prediction (its argmax; pass ``reference_logits`` to use another
  model's, e.g. the fp32 model's when scoring a quantized one).
- :func:`resolve_loss`: ``None``/``"auto"`` (detect from the model's output and inputs),
  ``"causal_lm"``, ``"classification"``, or a user callable ``fn(output, batch) -> [B]`` where
  ``output`` is the chosen graph output tensor and ``batch`` the dict of torch inputs (+ ``labels``).

A resolved loss is a :class:`LossSpec`: ``spec(outputs: dict, batch: dict) -> Tensor[B]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import onnx_ir as ir
import torch
import torch.nn.functional as F

from onnx_amp.core.errors import OnnxAmpError

TASKS = ("causal_lm", "classification")


def causal_lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token CE per sample: ``mean_t CE(logits[:, t], input_ids[:, t+1])`` -> ``[B]``."""
    if logits.dim() != 3 or input_ids.dim() != 2 or logits.shape[:2] != input_ids.shape:
        raise OnnxAmpError(
            f"causal LM loss needs logits [B,T,V] and input_ids [B,T]; got {tuple(logits.shape)} and {tuple(input_ids.shape)}"
        )
    if logits.shape[1] < 2:
        raise OnnxAmpError("causal LM loss needs sequences of at least 2 tokens")
    lg = logits[:, :-1].float()
    tgt = input_ids[:, 1:].long()
    ce = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tgt.reshape(-1), reduction="none").view(tgt.shape)
    if attention_mask is None:
        return ce.mean(1)
    m = attention_mask[:, 1:].to(ce.dtype)
    return (ce * m).sum(1) / m.sum(1).clamp(min=1.0)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor | None = None,
                        reference_logits: torch.Tensor | None = None) -> torch.Tensor:
    """CE per sample against ``labels``; unlabeled: against argmax of ``reference_logits`` (default: ``logits``)."""
    if logits.dim() != 2:
        raise OnnxAmpError(f"classification loss needs logits [B,C]; got {tuple(logits.shape)}")
    if labels is None:
        ref = logits if reference_logits is None else reference_logits
        labels = ref.detach().argmax(-1)
    labels = torch.as_tensor(labels).long().reshape(-1)
    if labels.shape[0] != logits.shape[0]:
        raise OnnxAmpError(f"labels have {labels.shape[0]} entries for a batch of {logits.shape[0]}")
    if int(labels.max()) >= logits.shape[1] or int(labels.min()) < 0:
        raise OnnxAmpError(f"labels must lie in [0, {logits.shape[1]}) for logits with {logits.shape[1]} classes")
    return F.cross_entropy(logits.float(), labels, reduction="none")


@dataclass
class LossSpec:
    """A per-sample loss bound to one graph output."""

    name: str  # "causal_lm" | "classification" | "custom:<fn name>"
    output: str  # graph output the loss reads
    fn: Callable[[torch.Tensor, dict[str, Any]], torch.Tensor]

    def __call__(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        if self.output not in outputs:
            raise OnnxAmpError(f"loss {self.name}: graph output {self.output!r} missing; outputs are {sorted(outputs)}")
        out = self.fn(outputs[self.output], batch)
        if not isinstance(out, torch.Tensor) or out.dim() != 1:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise OnnxAmpError(
                f"loss {self.name} must return a per-sample tensor [B] (reduction='none'); it returned {shape}"
            )
        return out

    def to_json(self) -> dict:
        return {"name": self.name, "output": self.output}


def _causal(output, batch):
    return causal_lm_loss(output, batch["input_ids"], batch.get("attention_mask"))


def _classif(output, batch):
    return classification_loss(output, batch.get("labels"), batch.get("reference_logits"))


def _float_outputs(model: ir.Model) -> list[ir.Value]:
    floats = {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE}
    return [v for v in model.graph.outputs if v.dtype in floats or v.dtype is None]


def detect_task(model: ir.Model, output_name: str | None = None,
                sample_outputs: dict[str, torch.Tensor] | None = None) -> tuple[str, str]:
    """(task, output name): an output named ``logits`` wins; rank-3 output + ``input_ids`` input
    and a vocabulary-sized last dim -> causal LM; rank-2 -> classification."""
    input_names = {v.name for v in model.graph.inputs}
    cands = _float_outputs(model)
    if output_name is not None:
        cands = [v for v in model.graph.outputs if v.name == output_name]
        if not cands:
            raise OnnxAmpError(f"--loss_output {output_name!r} is not a graph output; outputs: {[v.name for v in model.graph.outputs]}")
    cands = sorted(cands, key=lambda v: v.name != "logits")

    def rank(v):
        if sample_outputs is not None and v.name in sample_outputs:
            return sample_outputs[v.name].dim()
        return len(v.shape) if v.shape is not None else None

    def last_dim(v):
        if sample_outputs is not None and v.name in sample_outputs:
            return sample_outputs[v.name].shape[-1]
        d = v.shape[-1] if v.shape is not None and len(v.shape) else None
        return d if isinstance(d, int) else None

    for v in cands:
        r = rank(v)
        if r == 3 and "input_ids" in input_names:
            ld = last_dim(v)
            if v.name == "logits" or output_name is not None or (ld is not None and ld >= 1000):
                return "causal_lm", v.name
        if r == 2:
            return "classification", v.name
    raise OnnxAmpError(
        "cannot tell the model's task from its outputs "
        f"{[(v.name, None if v.shape is None else str(v.shape)) for v in model.graph.outputs]}; "
        "pass loss='causal_lm'|'classification' with output_name=..., or your own loss function"
    )


def resolve_loss(loss: str | Callable | LossSpec | None, model: ir.Model, output_name: str | None = None,
                 sample_outputs: dict[str, torch.Tensor] | None = None) -> LossSpec:
    if isinstance(loss, LossSpec):
        return loss
    if callable(loss):
        out = output_name
        if out is None:
            try:
                out = detect_task(model, None, sample_outputs)[1]
            except OnnxAmpError:
                out = model.graph.outputs[0].name
        return LossSpec(f"custom:{getattr(loss, '__name__', type(loss).__name__)}", out, loss)
    if loss in (None, "auto"):
        task, out = detect_task(model, output_name, sample_outputs)
    elif loss in TASKS:
        task = loss
        out = output_name or detect_task(model, None, sample_outputs)[1]
    else:
        raise OnnxAmpError(f"unknown loss {loss!r}; use 'auto', 'causal_lm', 'classification' or a callable(output, batch) -> [B]")
    return LossSpec(task, out, _causal if task == "causal_lm" else _classif)
