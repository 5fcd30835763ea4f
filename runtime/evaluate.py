"""Measured loss MSE and task metric of plans, on the target's runtime, on held-out samples.

- :func:`evaluate_models`: one plan model against the reference (the pipeline's validate stage).
- :class:`PlanEvaluator`: many plans of one annotated model. The reference runs once; each plan
  (a ``units`` mapping, as in ``plan.json``) is applied to a private copy of the model, rewritten
  (emulate form, with the target's lowering) and run; results are cached per plan. It supplies the
  measured inputs of the strategies that need them (``passes.solve``): per-unit sensitivity for
  ``pareto-greedy`` (AIMET AMP: the loss MSE with only that unit lowered) and neighbour pair terms
  for ``ip-pairs`` (Schaefer: the extra loss of lowering both units beyond the sum of each).

Plans are measured on the runtime of the target (``runtime.timing.backend_of``: its
``measured_backend`` when that one runs here, else ONNX Runtime's CPU provider), in **exact**
sessions by default: Q/DQ computed as ONNX defines it, so every evaluation is deterministic (ORT:
``exact_qdq``, unfused, not the saturating fused u8s8 kernels of CPUs without VNNI, see
``ort_session.make_session``; OpenVINO: ``backend.session(exact=True)``). ``exact=False`` measures
the real kernels (the pipeline's final figures on OpenVINO).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Callable

import numpy as np
import onnx_ir as ir

from onnx_amp.core.errors import OnnxAmpError
from onnx_amp.runtime import distributed as D
from onnx_amp.passes.strategies import get_strategy, measured_strategies
from onnx_amp.runtime.timing import DEFAULT_BACKEND, backend_of

#: strategies that need measured quantities from a :class:`PlanEvaluator` (from the strategy registry)
MEASURED_STRATEGIES = measured_strategies()


def _dense_metric(ref_out: list, plan_out: list) -> dict:
    """Dense outputs (maps, embeddings, boxes): IoU of the maps thresholded at 0.5 when the reference
    lies in [0, 1] (probability maps), else the mean cosine similarity to the reference; both 1.0
    for the reference itself. The signal-to-quantization-noise ratio comes along as ``sqnr_db``."""
    import torch

    r = torch.cat([o.reshape(o.shape[0], -1).double() for o in ref_out])
    p = torch.cat([o.reshape(o.shape[0], -1).double() for o in plan_out])  # batch-first (see task_metric)
    noise = float(((p - r) ** 2).sum())
    sqnr = float("inf") if noise == 0 else 10 * math.log10(max(float((r ** 2).sum()), 1e-300) / noise)
    if float(r.min()) >= 0 and float(r.max()) <= 1:
        rb, pb = r > 0.5, p > 0.5
        inter, union = (rb & pb).sum(1).double(), (rb | pb).sum(1).double()
        iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
        return {"name": "IoU of the 0.5-thresholded output with high precision", "before": 1.0,
                "after": float(iou.mean()), "higher_is_better": True, "sqnr_db": sqnr}
    cos = torch.nn.functional.cosine_similarity(p, r, dim=1, eps=1e-12)
    return {"name": "cosine similarity of the output to high precision", "before": 1.0, "after": float(cos.mean()),
            "higher_is_better": True, "sqnr_db": sqnr}


def task_metric(spec, ref_out: list, plan_out: list, ref_losses: list, plan_losses: list, batches: list[dict]) -> dict:
    """perplexity (causal LM), accuracy (labels), top-1 agreement with the high-precision model
    (unlabeled classification), or for dense outputs IoU / cosine similarity (:func:`_dense_metric`)."""
    import torch

    lr = torch.cat(ref_losses).double()
    lp = torch.cat(plan_losses).double()
    if spec.name == "causal_lm":
        return {"name": "perplexity", "before": float(torch.exp(lr.mean())), "after": float(torch.exp(lp.mean())),
                "higher_is_better": False}
    if spec.name != "classification":
        from onnx_amp.runtime.losses import _batch_size, batch_first

        sizes = [_batch_size(b) for b in batches]
        return _dense_metric([batch_first(o, n) for o, n in zip(ref_out, sizes)],
                             [batch_first(o, n) for o, n in zip(plan_out, sizes)])
    pr = torch.cat([o.reshape(o.shape[0], -1).argmax(-1) for o in ref_out])
    pp = torch.cat([o.reshape(o.shape[0], -1).argmax(-1) for o in plan_out])
    if all("labels" in b for b in batches):
        lab = torch.cat([torch.as_tensor(np.asarray(b["labels"])).reshape(-1) for b in batches])
        return {"name": "accuracy", "before": float((pr == lab).double().mean()),
                "after": float((pp == lab).double().mean()), "higher_is_better": True}
    return {"name": "top-1 agreement with high precision", "before": 1.0,
            "after": float((pr == pp).double().mean()), "higher_is_better": True}


def _session(model: ir.Model, backend: str, exact: bool):
    if backend == DEFAULT_BACKEND:
        from onnx_amp.runtime.ort_session import make_session

        return make_session(model, exact_qdq=exact)
    from onnx_amp.runtime.backends import get_backend

    return get_backend(backend).session(model, exact=exact)


def _losses(sess, backend: str, batches: list[dict], spec, reference: list | None = None):
    """([B] per-sample losses, outputs of the loss's output) per batch, on an ORT session or a
    ``runtime.backends`` session (``ort_session.per_sample_losses`` for ORT, as always)."""
    import torch

    from onnx_amp.runtime.ort_session import per_sample_losses

    if backend == DEFAULT_BACKEND:
        return per_sample_losses(sess, batches, spec, reference=reference)
    losses, outs = [], []
    for i, batch in enumerate(batches):
        res = sess.run(batch, [spec.output])
        out_t = {k: torch.from_numpy(np.asarray(v)) for k, v in res.items()}
        tb = {k: torch.as_tensor(np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v))
              for k, v in batch.items()}
        if reference is not None:
            tb["reference_logits"] = reference[i]
        losses.append(spec(out_t, tb).double())
        outs.append(out_t[spec.output])
    return losses, outs


class _Reference:
    """The reference model's per-sample losses and outputs on ``batches`` (computed once), on
    ``backend`` (``exact``: the Q/DQ math as ONNX defines it)."""

    def __init__(self, ref_model: ir.Model, batches: list[dict], loss, backend: str = DEFAULT_BACKEND,
                 exact: bool = True):
        from onnx_amp.runtime.losses import resolve_loss

        if not batches:
            raise OnnxAmpError("evaluating a plan needs at least one batch of held-out samples")
        self.batches = batches
        self.backend, self.exact = backend, exact
        self.spec = resolve_loss(loss, ref_model)
        #: the session of the last plan compared (the pipeline reads what it executed)
        self.session = None
        sess = _session(ref_model, backend, exact)
        # unlabeled classification scores the reference against its own prediction (the loss's
        # default), and every plan against the reference's prediction (``compare``)
        self.losses, self.outputs = _losses(sess, backend, batches, self.spec)

    def compare(self, plan_model: ir.Model) -> tuple[float, dict]:
        self.session = None  # the previous plan's session goes first (a large model's weights twice otherwise)
        self.session = sess = _session(plan_model, self.backend, self.exact)
        return self.compare_session(sess)

    def compare_session(self, sess) -> tuple[float, dict]:
        """(loss MSE, task metric) of a ready session on this reference's backend (a session of
        another model or toolchain, e.g. an NNCF-quantized model compiled by OpenVINO)."""
        import torch

        ref = self.outputs if self.spec.name == "classification" else None
        p_l, p_o = _losses(sess, self.backend, self.batches, self.spec, reference=ref)
        d = (torch.cat(p_l) - torch.cat(self.losses)).double()
        if not torch.isfinite(d).all():
            raise OnnxAmpError("non-finite per-sample loss on the held-out samples; check the data and the plan's formats")
        return float((d ** 2).mean()), task_metric(self.spec, self.outputs, p_o, self.losses, p_l, self.batches)


def evaluate_models(ref_model: ir.Model, plan_model: ir.Model, batches: list[dict], loss=None,
                    backend: str = DEFAULT_BACKEND, exact: bool = True) -> tuple[float, dict]:
    """(measured loss MSE, task metric dict) of ``plan_model`` against ``ref_model`` on ``batches``,
    both run on ``backend`` (``exact``: Q/DQ as ONNX defines it; else the backend's real kernels)."""
    return _Reference(ref_model, batches, loss, backend, exact).compare(plan_model)


def target_lowering(target: Any) -> dict:
    """The rewrite options of ``target``'s measured backend when that one runs here (what the
    profiler timed and the pipeline ships), else none (the plain emulate form, evaluated in ORT)."""
    from onnx_amp.runtime.backends import MEASURED_BACKENDS, get_backend

    name = getattr(target, "measured_backend", None)
    return dict(get_backend(name).lowering) if name in MEASURED_BACKENDS else {}


class PlanEvaluator:
    """Measured loss MSE and task metric of plans of one annotated model (see the module doc).

    ``model``: partitioned (and calibrated/profiled) ``ir.Model``; it is not modified (a copy that
    shares the weights takes the plans). ``batches``: held-out input dicts (plus ``labels``).
    ``loss``: anything ``runtime.losses.resolve_loss`` takes (``None`` = detect). ``target``: the
    target name or object the plans are for: lowered as the profiler timed it and run, in exact
    sessions, on its measured backend when that one runs here (``openvino``: OpenVINO), else ORT.
    """

    def __init__(self, model: ir.Model, batches: list[dict], loss=None, target: Any = None):
        from onnx_amp.core.targets import load_target

        self.model = model.clone()
        self.target = load_target(target) if isinstance(target, str) else target
        self.lowering = target_lowering(self.target)
        #: the runtime the plans run on (exact sessions: deterministic)
        self.backend = backend_of(self.target)
        self.reference = r = _Reference(self.model, list(batches), loss, self.backend, exact=True)
        #: the task metric of the reference itself ("before" is its value)
        self.reference_metric = task_metric(r.spec, r.outputs, r.outputs, r.losses, r.losses, r.batches)
        self.cache: dict[str, dict] = {}
        self.n_runs = 0
        self.seconds = 0.0

    @property
    def metric_name(self) -> str:
        return self.reference_metric["name"]

    def evaluate(self, units: dict) -> dict:
        """{"measured_mse", "metric" (dict: name, before, after, higher_is_better)} of a plan's ``units``."""
        from onnx_amp.passes.plan import ApplyPlanPass, Plan
        from onnx_amp.passes.rewrite import rewrite

        key = json.dumps(units, sort_keys=True)
        if key not in self.cache:
            t0 = time.perf_counter()
            tname = getattr(self.target, "name", None)
            ApplyPlanPass(Plan.from_json({"version": 1, "units": units}), target=tname, validate=False)(self.model)
            plan_model, _ = rewrite(self.model, "emulate", **self.lowering)
            mse, metric = self.reference.compare(plan_model)
            self.cache[key] = {"measured_mse": mse, "metric": metric}
            self.n_runs += 1
            self.seconds += time.perf_counter() - t0
        return self.cache[key]

    # ---- measured inputs of the strategies ---------------------------------------------------

    @staticmethod
    def _low_units(problem, units) -> dict:
        return {u: {"weight": problem.low[u][0], "activation": problem.low[u][1]} for u in units}

    def unit_measure(self, problem) -> Callable[[str], float]:
        """``measure_unit(u)``: measured loss MSE with only ``u`` in its low assignment."""
        return lambda u: self.evaluate(self._low_units(problem, [u]))["measured_mse"]

    def pair_measure(self, problem) -> Callable[[str, str], float]:
        """``pair_measure(u, v)``: measured(both) - measured(u) - measured(v) + measured(none)."""
        single = self.unit_measure(problem)

        def f(a: str, b: str) -> float:
            both = self.evaluate(self._low_units(problem, [a, b]))["measured_mse"]
            return both - single(a) - single(b) + self.evaluate({})["measured_mse"]

        return f

    def strategy_kwargs(self, problem, strategy: str) -> dict:
        """Keyword arguments of ``passes.solve.solve`` that give ``strategy`` its measured inputs."""
        from onnx_amp.passes.ip import measure_pairs

        measures = get_strategy(strategy).measures
        if measures in ("units", "pairs") and D.world()[1] > 1:
            return self._strategy_kwargs_spread(problem, measures)
        if measures == "units":
            return {"measure_unit": self.unit_measure(problem)}
        if measures == "pairs":
            return {"pairs": measure_pairs(problem, self.pair_measure(problem))}
        return {}

    def _strategy_kwargs_spread(self, problem, measures: str) -> dict:
        """:meth:`strategy_kwargs` over the ranks of a ``torchrun`` group: every plan it needs (each unit
        alone, each neighbour pair) evaluated once on one rank (``distributed.map_items``), every rank
        getting the same figures."""
        from onnx_amp.passes.ip import measure_pairs

        def mse(units) -> float:
            return self.evaluate(self._low_units(problem, list(units)))["measured_mse"]

        units = list(problem.unit_order)
        single = dict(zip(units, D.map_items(lambda u: mse([u]), units)))
        if measures == "units":
            return {"measure_unit": single.__getitem__}
        pairs = list(problem.neighbour_pairs())
        both = dict(zip(pairs, D.map_items(mse, pairs)))
        none = self.evaluate({})["measured_mse"]
        return {"pairs": measure_pairs(problem, lambda a, b: both[(a, b)] - single[a] - single[b] + none)}
