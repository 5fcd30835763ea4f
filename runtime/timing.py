"""Timing sessions side by side: paired rounds, on the backend a target is measured with.

- :func:`time_paired`: runners timed in **paired rounds** (each round runs every runner once, in
  shuffled order, after warm-up); :class:`Timing` summarises a runner against runner 0 by the
  median of the per-round differences, so slow drift on a shared machine cancels.
- :func:`timing_runner`: a session for timing on a backend (``runtime.backends``) and a runner on
  given feeds. ``ort_cpu`` is ``runtime.ort_session.make_session(timing=True)`` exactly as before
  (:func:`make_ort_session`); any other backend is ``get_backend(name).session(timing=True)``.
- :func:`time_model`: whole models (e.g. the all-high model vs a plan) on the same feeds.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import onnx_ir as ir

from onnx_amp.core.errors import OnnxAmpError

#: the backend that times (and evaluates) a target whose ``measured_backend`` does not run here
DEFAULT_BACKEND = "ort_cpu"


def make_ort_session(model: ir.Model, threads: int | None = None, spinning: bool = False,
                     disabled_optimizers: Sequence[str] = ()):
    """An ORT CPU session for timing: ``runtime.ort_session.make_session`` with thread-pool spinning
    off (``timing``) unless ``spinning``. The model is not modified."""
    from onnx_amp.runtime.ort_session import make_session

    return make_session(model, threads=threads, timing=not spinning, disabled_optimizers=disabled_optimizers)


def backend_of(target: Any) -> str:
    """The backend that measures ``target`` on this machine: its ``measured_backend`` when that one
    times here (``runtime.backends.MEASURED_BACKENDS``), else ONNX Runtime's CPU provider."""
    from onnx_amp.runtime.backends import MEASURED_BACKENDS

    name = getattr(target, "measured_backend", None)
    return name if name in MEASURED_BACKENDS else DEFAULT_BACKEND


def timing_runner(model: ir.Model | str, feeds: dict[str, np.ndarray], backend: str = DEFAULT_BACKEND,
                  threads: int | None = None, disabled_optimizers: Sequence[str] = ()) -> tuple[Any, Callable[[], Any]]:
    """(session, runner): ``runner()`` runs ``model`` once on the feeds it takes (prepared once)."""
    if backend == DEFAULT_BACKEND:
        sess = make_ort_session(model, threads, disabled_optimizers=disabled_optimizers)
        names = {x.name for x in sess.get_inputs()}
        f = {k: v for k, v in feeds.items() if k in names}
        return sess, (lambda s=sess, f=f: s.run(None, f))
    if disabled_optimizers:
        raise OnnxAmpError(f"disabled_optimizers={list(disabled_optimizers)} are ONNX Runtime options; "
                           f"backend {backend} has none: drop them")
    from onnx_amp.runtime.backends import get_backend

    sess = get_backend(backend).session(model, threads=threads, timing=True)
    return sess, sess.runner(feeds)


@dataclass
class Timing:
    """Paired-round timings of configurations 0..n-1 (config 0 = baseline)."""
    times: list[list[float]]  # times[c][round]

    def summary(self, c: int) -> dict[str, Any]:
        t = self.times[c]
        gains = [b - x for b, x in zip(self.times[0], t)]
        g_med = statistics.median(gains)
        q = np.percentile(gains, [25, 75]) if len(gains) > 1 else np.array([g_med, g_med])
        lo, hi = float(q[0]), float(q[1])
        return {
            "time_s": statistics.median(t),
            "time_gain_s": 0.0 if c == 0 else g_med,
            "spread": 0.0 if c == 0 else hi - lo,
            "gain_iqr": [0.0, 0.0] if c == 0 else [lo, hi],
            "time_minmax": [min(t), max(t)],
            "noisy": False if c == 0 else bool(lo <= 0.0 <= hi),
            "rounds": len(t),
        }


def time_paired(runners: Sequence[Callable[[], Any]], warmup: int = 2, repeats: int = 10,
                seed: int = 0, min_round_s: float = 0.0) -> Timing:
    """Time ``runners`` in paired rounds (each round runs all, shuffled). When one call is shorter
    than ``min_round_s``, each measurement loops the call to reach it (time per call reported)."""
    rng = random.Random(seed)
    loops = [1] * len(runners)
    for i, r in enumerate(runners):
        for _ in range(warmup):
            r()
        if min_round_s > 0:
            t0 = time.perf_counter()
            r()
            dt = max(time.perf_counter() - t0, 1e-7)
            loops[i] = max(1, int(min_round_s / dt))
    n = max(loops)
    loops = [n] * len(runners)  # same loop count for all: paired differences stay comparable
    times = [[] for _ in runners]
    order = list(range(len(runners)))
    for _ in range(repeats):
        rng.shuffle(order)
        for i in order:
            r = runners[i]
            t0 = time.perf_counter()
            for _ in range(loops[i]):
                r()
            times[i].append((time.perf_counter() - t0) / loops[i])
    return Timing(times)


def time_model(models: Sequence[ir.Model], feeds: dict[str, np.ndarray], warmup: int = 2, repeats: int = 10,
               threads: int | None = None, seed: int = 0, min_round_s: float = 0.0,
               disabled_optimizers: Sequence[str] = (), backend: str = DEFAULT_BACKEND) -> Timing:
    """Paired-round timing of whole models (e.g. all-high vs a plan) on the same feeds, on ``backend``."""
    runners = [timing_runner(m, feeds, backend, threads, disabled_optimizers)[1] for m in models]
    return time_paired(runners, warmup=warmup, repeats=repeats, seed=seed, min_round_s=min_round_s)
