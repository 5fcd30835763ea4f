"""Per-sample losses L_n (a ``[B]`` tensor) for calibration and measured loss MSE.

- :func:`causal_lm_loss`: next-token cross-entropy, mean over the tokens of each sample
  (positions where ``attention_mask`` is 0 are ignored when a mask is given).
- :func:`classification_loss`: cross-entropy against ``labels``, or, unlabeled, against the
  full-precision model's own prediction (its argmax; pass ``reference_logits`` to use another
  model's, e.g. the fp32 model's when scoring a quantized one).
- :func:`output_mse_loss`: for outputs that are neither class scores nor LM logits (dense maps,
  embeddings, boxes): ``L_n = <u, y_n> / sqrt(numel)`` with one fixed seeded Gaussian direction
  ``u``. Its first-order loss MSE is, in expectation over ``u`` (and over samples whose output
  errors point in different directions), the per-element squared error of the output,
  ``E ||dy_n||^2 / numel``: a distance to the full-precision output that the Taylor model can
  predict (a squared distance itself has zero gradient at the reference).
- Outputs that are already probabilities (a final ``Softmax``) or log-probabilities
  (``LogSoftmax``) are detected: cross-entropy then reads ``log p`` directly instead of applying a
  second softmax, which would silently compress every loss.
- :func:`resolve_loss`: ``None``/``"auto"`` (detect from the model's output and inputs),
  ``"causal_lm"``, ``"classification"``, ``"output_mse"``, ``"module:function"`` (a function
  importable by that name), or a user callable ``fn(output, batch) -> [B]`` where ``output`` is the
  chosen graph output tensor and ``batch`` the dict of torch inputs (+ ``labels``).

A resolved loss is a :class:`LossSpec`: ``spec(outputs: dict, batch: dict) -> Tensor[B]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import onnx_ir as ir
import torch
import torch.nn.functional as F

from onnx_amp.core.errors import OnnxAmpError

TASKS = ("causal_lm", "classification", "output_mse")
#: what a graph output holds
OUTPUT_KINDS = ("logits", "probs", "log_probs")


def log_probs(x: torch.Tensor, kind: str = "logits") -> torch.Tensor:
    """Log-probabilities over the last axis from logits, probabilities or log-probabilities."""
    if kind == "logits":
        return F.log_softmax(x.float(), dim=-1)
    if kind == "probs":
        return torch.log(x.float().clamp_min(1e-30))
    return x.float()


def causal_lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   kind: str = "logits") -> torch.Tensor:
    """Next-token CE per sample: ``mean_t CE(logits[:, t], input_ids[:, t+1])`` -> ``[B]``."""
    if logits.dim() != 3 or input_ids.dim() != 2 or logits.shape[:2] != input_ids.shape:
        raise OnnxAmpError(
            f"causal LM loss needs logits [B,T,V] and input_ids [B,T]; got {tuple(logits.shape)} and {tuple(input_ids.shape)}"
        )
    if logits.shape[1] < 2:
        raise OnnxAmpError("causal LM loss needs sequences of at least 2 tokens")
    if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= logits.shape[-1]):
        bad = int(input_ids.min()) if int(input_ids.min()) < 0 else int(input_ids.max())
        raise OnnxAmpError(f"causal LM loss: input_ids has token id {bad}, outside the model's vocabulary of "
                           f"{logits.shape[-1]} (ids 0..{logits.shape[-1] - 1}); replace negative or padding ids "
                           "with the pad token id and tokenize with the model's own tokenizer")
    lp = log_probs(logits[:, :-1], kind)
    tgt = input_ids[:, 1:].long()
    ce = F.nll_loss(lp.reshape(-1, lp.shape[-1]), tgt.reshape(-1), reduction="none").view(tgt.shape)
    if attention_mask is None:
        return ce.mean(1)
    m = attention_mask[:, 1:].to(ce.dtype)
    return (ce * m).sum(1) / m.sum(1).clamp(min=1.0)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor | None = None,
                        reference_logits: torch.Tensor | None = None, kind: str = "logits") -> torch.Tensor:
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
    return F.nll_loss(log_probs(logits, kind), labels, reduction="none")


def projection(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """The fixed Gaussian direction of :func:`output_mse_loss` for one sample's output of ``shape``
    (no batch axis): the same for every sample, batch and call, so figures do not depend on how the
    samples are batched and reference and plan see the same direction."""
    g = torch.Generator().manual_seed(seed + 7919 * len(shape) + int(np.prod(shape, dtype=np.int64)) % 100003)
    return torch.randn(tuple(shape), generator=g, dtype=torch.float32)


def batch_first(y: torch.Tensor, batch_size: int | None) -> torch.Tensor:
    """``y`` with its batch axis first: an output whose first axis is not the batch (time-major
    sequence outputs ``[T, B, ...]``) has it moved there when exactly one axis has the batch's size."""
    if batch_size is None or y.dim() == 0 or y.shape[0] == batch_size:
        return y
    axes = [i for i, d in enumerate(y.shape) if d == batch_size]
    if len(axes) != 1:
        raise OnnxAmpError(f"output of shape {tuple(y.shape)} has no unique axis of the batch size {batch_size}; "
                           "give a loss (module:function) that reads it")
    return y.movedim(axes[0], 0)


def _batch_size(batch: dict[str, Any]) -> int | None:
    for k, v in batch.items():
        if k not in ("labels", "reference_logits") and hasattr(v, "shape") and len(v.shape):
            return int(v.shape[0])
    return None


def output_mse_loss(output: torch.Tensor, seed: int = 0, batch_size: int | None = None) -> torch.Tensor:
    """``L_n = <u_n, y_n> / sqrt(numel(y_n))`` per sample (see the module doc) -> ``[B]``."""
    y = batch_first(output.float(), batch_size)
    if y.dim() == 0:
        raise OnnxAmpError("output_mse loss needs an output with a batch axis")
    flat = y.reshape(y.shape[0], -1)
    u = projection((flat.shape[1],), seed)
    return (flat * u).sum(1) / math.sqrt(max(flat.shape[1], 1))


@dataclass
class LossSpec:
    """A per-sample loss bound to one graph output."""

    name: str  # "causal_lm" | "classification" | "output_mse" | "custom:<fn name>"
    output: str  # graph output the loss reads
    fn: Callable[[torch.Tensor, dict[str, Any]], torch.Tensor]
    kind: str = "logits"  # what the output holds: logits, probs or log_probs

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
        return {"name": self.name, "output": self.output, "kind": self.kind}


def _causal_fn(output, batch, kind="logits"):
    return causal_lm_loss(output, batch["input_ids"], batch.get("attention_mask"), kind)


def _classification_fn(output, batch, kind="logits"):
    return classification_loss(output, batch.get("labels"), batch.get("reference_logits"), kind)


def _output_mse_fn(output, batch):
    return output_mse_loss(output, batch_size=_batch_size(batch))


def _task_fn(task: str, kind: str) -> Callable[[torch.Tensor, dict[str, Any]], torch.Tensor]:
    """The per-sample loss function of a task (module-level functions: a LossSpec pickles, so it can
    travel between processes)."""
    import functools

    if task == "causal_lm":
        return functools.partial(_causal_fn, kind=kind)
    if task == "classification":
        return functools.partial(_classification_fn, kind=kind)
    return _output_mse_fn


def output_kind(model: ir.Model, output_name: str, sample: torch.Tensor | None = None) -> str:
    """``probs`` when the output comes out of a Softmax (or, sampled, is non-negative and sums to 1
    over the last axis), ``log_probs`` after a LogSoftmax, else ``logits``."""
    v = next((o for o in model.graph.outputs if o.name == output_name), None)
    node = v.producer() if v is not None else None
    while node is not None and node.op_type in ("Identity", "Reshape", "Squeeze", "Flatten", "Cast"):
        node = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
    if node is not None and node.op_type == "Softmax":
        return "probs"
    if node is not None and node.op_type == "LogSoftmax":
        return "log_probs"
    if sample is not None and sample.is_floating_point() and sample.dim() >= 2 and sample.numel():
        s = sample.detach().float()
        if float(s.min()) >= 0 and torch.allclose(s.sum(-1), torch.ones(()), atol=1e-3):
            return "probs"
    return "logits"


def _load_callable(spec: str):
    import importlib

    mod, _, fn = spec.partition(":")
    try:
        m = importlib.import_module(mod)
    except Exception as e:  # noqa: BLE001
        raise OnnxAmpError(f"--loss {spec}: cannot import module {mod!r} ({type(e).__name__}: {e})") from None
    f = getattr(m, fn, None)
    if not callable(f):
        raise OnnxAmpError(f"--loss {spec}: module {mod!r} has no function {fn!r}; give module:function with "
                           "fn(output, batch) -> per-sample loss [B]")
    return f


def _float_outputs(model: ir.Model) -> list[ir.Value]:
    floats = {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE}
    return [v for v in model.graph.outputs if v.dtype in floats or v.dtype is None]


def _producer_through_views(v: ir.Value) -> ir.Node | None:
    node = v.producer()
    while node is not None and node.op_type in ("Identity", "Reshape", "Squeeze", "Flatten", "Cast"):
        node = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
    return node


def _from_softmax(v: ir.Value) -> bool:
    node = _producer_through_views(v)
    return node is not None and node.op_type in ("Softmax", "LogSoftmax")


def _named_as_scores(v: ir.Value) -> bool:
    name = (v.name or "").lower()
    return any(k in name for k in ("logit", "score", "prob", "class", "label", "pred"))


def _from_linear_head(v: ir.Value) -> bool:
    node = _producer_through_views(v)
    if node is not None and node.op_type == "Add":  # MatMul + bias
        node = next((i.producer() for i in node.inputs if i is not None and i.producer() is not None), None)
    return node is not None and node.op_type in ("Gemm", "MatMul")


def detect_task(model: ir.Model, output_name: str | None = None,
                sample_outputs: dict[str, torch.Tensor] | None = None) -> tuple[str, str]:
    """(task, output name): an output named ``logits`` wins; rank-3 output + ``input_ids`` input
    and a vocabulary-sized last dim -> causal LM; rank-2 class scores -> classification (see below);
    anything else -> ``output_mse`` on the first float output."""
    input_names = {v.name for v in model.graph.inputs}
    cands = _float_outputs(model)
    if output_name is not None:
        cands = [v for v in model.graph.outputs if v.name == output_name]
        if not cands:
            raise OnnxAmpError(f"--loss_output {output_name!r} is not a graph output; "
                               f"outputs: {[v.name for v in model.graph.outputs]}")
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
    # class scores: of the rank-2 outputs, one coming out of a Softmax/LogSoftmax, then one named as
    # scores (logits, probabilities, classes), then one out of a linear head; a rank-2 output that is
    # none of these (a pooled embedding, box coordinates) is a dense output
    rank2 = [v for v in cands if rank(v) == 2]
    if output_name is not None and rank2:
        return "classification", rank2[0].name
    for test in (_from_softmax, _named_as_scores, _from_linear_head):
        hit = next((v for v in rank2 if test(v)), None)
        if hit is not None:
            return "classification", hit.name
    # neither class scores nor LM logits (dense maps, embeddings, boxes): distance to the
    # full-precision output, on a rank-2 output when there is one (a pooled embedding is what a
    # sentence encoder is used for, not its per-token states), else the first float output
    dense = rank2[0] if rank2 else (cands[0] if cands else None)
    if dense is not None and rank(dense) is not None and rank(dense) >= 1:
        return "output_mse", dense.name
    raise OnnxAmpError(
        "cannot tell the model's task from its outputs "
        f"{[(v.name, None if v.shape is None else str(v.shape)) for v in model.graph.outputs]}; "
        "pass loss='causal_lm'|'classification' with output_name=..., or your own loss function"
    )


def resolve_loss(loss: str | Callable | LossSpec | None, model: ir.Model, output_name: str | None = None,
                 sample_outputs: dict[str, torch.Tensor] | None = None) -> LossSpec:
    if isinstance(loss, LossSpec):
        return loss
    if isinstance(loss, str) and ":" in loss:
        loss = _load_callable(loss)
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
        raise OnnxAmpError(f"unknown loss {loss!r}; use auto, {', '.join(TASKS)}, module:function, or a "
                           "callable(output, batch) -> [B]")
    kind = "logits"
    if task != "output_mse":
        sample = (sample_outputs or {}).get(out)
        kind = output_kind(model, out, sample)
    return LossSpec(task, out, _task_fn(task, kind), kind)


def calibrated_loss(model: ir.Model, loss: Any = None, output_name: str | None = None) -> LossSpec:
    """The loss a calibrated model was calibrated with (its ``onnx_amp.calibration`` summary names
    it and its output), unless ``loss`` / ``output_name`` name another: later stages run from a
    saved file measure with the same loss the sensitivities were taken with. A custom callable the
    file cannot carry is detected again unless given."""
    from onnx_amp.core import annotations as ann

    saved = (ann.get_json(model, ann.CALIBRATION) or {}).get("loss") or {}
    name = loss if loss not in (None, "auto") else saved.get("name")
    if isinstance(name, str) and name.startswith("custom:"):
        name = None
    return resolve_loss(name, model, output_name or saved.get("output"))
