"""The task metric a plan is predicted to reach, from its predicted loss figures: what lets the
accuracy bound be met by one solve and a verification (``passes.search.solve_to_bound``) instead
of a bisection with a dozen real evaluations.

A plan's predicted figures are ``V`` (summed variance terms of the per-sample loss change) and
``M`` (summed mean shifts, the ``shift`` loss model of ``passes.lossmodel``). On the held-out
samples the reference already ran on (``runtime.evaluate.PlanEvaluator.reference``):

- **perplexity** (causal LM): ``exp(mean_n L_n)``, so the plan's is the reference's times
  ``exp(mean_n dL_n)``, and ``E[dL_n] = M``: predicted drop ``before * (exp(M) - 1)``.
- **accuracy / top-1 agreement** (classification): a sample's prediction flips when its logit
  margin is crossed. The logit perturbation is modelled as isotropic Gaussian noise, its
  variance ``s^2`` set so that the per-sample loss change has the predicted variance:
  ``V = s^2 mean_n ||p_n - e_{y_n}||^2`` (the loss's gradient on the logits). Each sample flips
  from its top class ``a`` to a class ``k`` with probability ``Phi(-(z_a - z_k) / (sqrt(2) s))``;
  accuracy loses the correct samples that flip and wins the wrong ones whose label overtakes.
- **cosine similarity** (dense outputs, ``output_mse`` loss): the loss MSE is the output's
  per-element squared error, so ``1 - cos ~ (V + M^2) numel / (2 ||y||^2)``.

Other metrics (IoU) have no predictor: the bound falls back to the bisection.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

#: the flip model looks at this many runner-up classes per sample
TOP_K = 8


def _phi(x: np.ndarray) -> np.ndarray:
    from scipy.special import ndtr

    return ndtr(x)


def perplexity_drop(before: float) -> Callable[[float, float], float]:
    return lambda v, m: before * (math.exp(m) - 1.0)


def _classification_drop(reference, labelled: bool) -> Callable[[float, float], float]:
    from onnx_amp.runtime.losses import log_probs

    z = torch.cat([log_probs(o.reshape(o.shape[0], -1).double(), reference.spec.kind).double()
                   for o in reference.outputs]).numpy()
    top = z.argmax(1)
    if labelled:
        y = torch.cat([torch.as_tensor(np.asarray(b["labels"])).reshape(-1) for b in reference.batches]).numpy()
    else:
        y = top
    n = len(z)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = p.copy()
    g[np.arange(n), y] -= 1.0
    gsq = float(np.mean(np.sum(g * g, 1)))
    k = min(TOP_K, z.shape[1] - 1)
    order = np.argsort(-z, 1)[:, 1:k + 1]  # runner-up classes
    margins = z[np.arange(n), top][:, None] - np.take_along_axis(z, order, 1)
    correct = top == y
    gain_margin = z[np.arange(n), top] - z[np.arange(n), y]  # wrong samples: how far the label is behind

    def drop(v: float, m: float) -> float:
        if v <= 0 or gsq <= 0:
            return 0.0
        s = math.sqrt(v / gsq) * math.sqrt(2.0)
        flip = np.minimum(_phi(-margins / s).sum(1), 1.0)
        lost = float(np.sum(flip[correct])) if labelled else float(np.sum(flip))
        won = float(np.sum(_phi(-gain_margin[~correct] / s))) if labelled else 0.0
        return (lost - won) / n

    return drop


def _cosine_drop(reference) -> Callable[[float, float], float]:
    r = torch.cat([o.reshape(o.shape[0], -1).double() for o in reference.outputs])
    scale = float((r.shape[1] / (2.0 * (r * r).sum(1).clamp_min(1e-300))).mean())
    return lambda v, m: (v + m * m) * scale


def drop_predictor(reference, metric: dict) -> Callable[[float, float], float] | None:
    """``predict_drop(V, M)`` in the units of ``metric`` (the reference's task metric dict,
    ``runtime.evaluate.task_metric``), or ``None`` when the metric has no predictor."""
    name = metric.get("name", "")
    if name == "perplexity":
        return perplexity_drop(float(metric["before"]))
    if reference.spec.name == "classification" and name in ("accuracy", "top-1 agreement with high precision"):
        return _classification_drop(reference, labelled=name == "accuracy")
    if name.startswith("cosine similarity"):
        return _cosine_drop(reference)
    return None
