"""Figures (matplotlib, Agg): the Pareto sweep of the plan search."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from onnx_amp.passes.problem import normalize_metric
from onnx_amp.passes.search import ParetoPoint
from onnx_amp.passes.strategies import Solution


def plot_pareto(
    points: Sequence[ParetoPoint],
    path,
    metric: str = "time",
    chosen: Solution | None = None,
    measure: Callable[[dict], float] | None = None,
    n_measured: int = 4,
    title: str | None = None,
) -> list[ParetoPoint]:
    """PNG: predicted gain vs predicted loss MSE per strategy; with ``measure(plan) -> measured MSE``
    a few points per strategy are also drawn at their measured MSE (hollow markers); the chosen plan
    is starred. Returns the points that were measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = normalize_metric(metric)
    unit = {"time": "measured time gain [s]", "tt": "roofline time gain [s]", "memory": "memory gain [bytes]"}[metric]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    measured = []
    strategies = list(dict.fromkeys(p.strategy for p in points))
    for i, s in enumerate(strategies):
        ps = sorted([p for p in points if p.strategy == s], key=lambda p: p.predicted_mse)
        color = f"C{i}"
        xs = [max(p.predicted_mse, 1e-30) for p in ps]
        ax.plot(xs, [p.gain for p in ps], "o-" if len(ps) > 1 else "s", color=color, ms=3, label=s)
        if measure is not None and ps and not s.startswith("uniform"):
            idx = np.unique(np.linspace(0, len(ps) - 1, min(n_measured, len(ps))).round().astype(int))
            for j in idx:
                p = ps[j]
                if p.measured_mse is None:
                    p.measured_mse = float(measure(p.plan))
                measured.append(p)
                ax.plot([max(p.measured_mse, 1e-30)], [p.gain], "o", mfc="none", color=color, ms=7)
    if measure is not None:
        ax.plot([], [], "o", mfc="none", color="gray", label="measured loss MSE")
    if chosen is not None:
        ax.plot([max(chosen.predicted_mse, 1e-30)], [chosen.gain], "*", color="k", ms=14, label=f"chosen ({chosen.strategy})")
        ax.axvline(chosen.tau, color="gray", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("loss MSE (predicted; hollow = measured)")
    ax.set_ylabel(f"predicted {unit}")
    ax.set_title(title or "Pareto sweep over tau")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return measured
