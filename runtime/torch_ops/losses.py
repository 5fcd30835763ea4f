"""Training losses that exporters emit (torch's cross_entropy / nll_loss): NegativeLogLikelihoodLoss,
SoftmaxCrossEntropyLoss."""

from __future__ import annotations

import torch

from .common import arg, attr, op


def nll(node, logp: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """ONNX NegativeLogLikelihoodLoss of log-probabilities [N, C, ...] (reference semantics)."""
    ignore = attr(node, "ignore_index")
    reduction = attr(node, "reduction", "mean")
    n, c = logp.shape[:2]
    lp = logp.reshape(n, c, -1)
    tg = target.long().reshape(n, -1)
    valid = tg != ignore if ignore is not None else torch.ones_like(tg, dtype=torch.bool)
    safe = torch.where(valid, tg, torch.zeros_like(tg)).clamp(0, c - 1)
    picked = -torch.gather(lp, 1, safe.unsqueeze(1)).squeeze(1)
    w = weight[safe] if weight is not None else torch.ones_like(picked)
    w = torch.where(valid, w, torch.zeros_like(w))
    loss = (picked * w).reshape(target.shape)
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.sum() / w.sum()
    return loss


@op("NegativeLogLikelihoodLoss")
def _nll(node, x):
    return nll(node, x[0], x[1], arg(x, 2))


@op("SoftmaxCrossEntropyLoss")
def _sce(node, x):
    logp = torch.log_softmax(x[0], dim=1)
    loss = nll(node, logp, x[1], arg(x, 2))
    return [loss, logp][: len(node.outputs)]
