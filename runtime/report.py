"""The run report: Markdown plus PNG plots (matplotlib, Agg) of what onnx-amp decided and measured.

``write_report(out_dir, model, results)`` reads the planned model's annotations (``onnx_amp.regions``,
``onnx_amp.precision`` per layer, ``onnx_amp.gains``, ``onnx_amp.plan``) and a ``results`` dict
(what the pipeline measured), and writes into ``out_dir``:

- ``report.md``                 the summary table and the plots below, with their numbers;
- ``precision_map.png``         per region (x: region index along the network) one square per unit,
                                coloured by its (weight, activation) format;
- ``loss_mse.png``              predicted vs measured loss MSE (log-log, y = x);
- ``pareto.png``                predicted gain vs predicted loss MSE per strategy, chosen plan starred
                                (only when ``results["pareto"]`` has points);
- ``time_gains.png``            per region the chosen configuration's time gain (measured when the
                                gain table has it, else roofline) and roofline gain;
- ``task_metric.png``           the task metric before / after (when ``results["task"]`` is given).

``results`` keys (all optional): ``model``, ``target``, ``strategy``, ``metric``, ``tau``,
``predicted_mse``, ``measured_mse``, ``predicted_gain_s``, ``time_ref_s``, ``time_amp_s``,
``measured_gain_s``, ``task`` ({"name", "before", "after", "higher_is_better"}),
``pareto`` ([{"strategy", "tau", "predicted_mse", "gain"}]), ``validated`` ([{"predicted_mse",
"measured_mse", "label"}]), ``stage_seconds`` ({stage: s}), ``files`` ({what: path}), ``notes`` ([str]),
``backend`` (the runtime that measured: ``ORT``, ``OpenVINO``), ``precision_check`` ({"backend",
"layers", "executed" {precision: layers}, "mismatches" [{layer, node, planned, expected, executed,
kind, ...}]}: what that runtime really executed, read from its runtime graph).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import onnx_ir as ir

from onnx_amp.core import annotations as ann

FORMAT_COLORS = {
    "fp32": "#4c72b0", "bf16": "#55a868", "fp16": "#8fd19e", "fp8_e4m3": "#dd8452",
    "fp8_e5m2": "#f0b27a", "int8": "#c44e52",
}


def _label(w: str, a: str) -> str:
    return w if w == a else f"w={w},a={a}"


_NARROW_FIRST = ["int8", "fp8_e5m2", "fp8_e4m3", "fp16", "bf16", "fp32"]


def _color(w: str, a: str) -> str:
    """The colour of an assignment: its format, or the narrower of the two when they differ."""
    f = a if w == a else min(w, a, key=lambda x: _NARROW_FIRST.index(x) if x in _NARROW_FIRST else 9)
    return FORMAT_COLORS.get(f, "#999999")


def unit_precisions(model: ir.Model) -> tuple[list[dict], dict[str, tuple[str, str]]]:
    """Regions (in order) and each unit's (weight, activation) format from the layer annotations."""
    summary = ann.get_json(model, ann.REGIONS) or {}
    regions = summary.get("regions", [])
    plan = ann.get_json(model, ann.PLAN) or {}
    gains = ann.get_json(model, ann.GAINS) or {}
    high = tuple(gains.get("high") or plan.get("high") or ("fp32", "fp32"))
    unit_prec: dict[str, tuple[str, str]] = {}
    for node in model.graph:
        unit = node.metadata_props.get(ann.UNIT)
        prec = node.metadata_props.get(ann.PRECISION)
        if unit and prec and unit not in unit_prec:
            unit_prec[unit] = ann.parse_precision(prec)
    for r in regions:
        for u in r.get("units", {}):
            unit_prec.setdefault(u, (high[0], high[1]))
    return regions, unit_prec


def chosen_region_gains(model: ir.Model, unit_prec: dict[str, tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """Per region: the gain-table row matching the plan's assignment (None when not in the table)."""
    gains = ann.get_json(model, ann.GAINS) or {}
    out = {}
    for rid, reg in (gains.get("regions") or {}).items():
        row = None
        for cfg in reg.get("configs", []):
            if all(tuple(cfg["assign"][u]) == tuple(unit_prec.get(u, cfg["assign"][u])) for u in cfg["assign"]):
                row = cfg
                break
        out[rid] = row
    return out


def _fmt(x: Any, spec: str = ".4g") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    try:
        return format(x, spec)
    except (TypeError, ValueError):
        return str(x)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)


def _precision_map(out: Path, regions: list[dict], unit_prec: dict, title: str) -> bool:
    from matplotlib.patches import Patch

    plt = _plt()
    if not regions:
        return False
    fig, ax = plt.subplots(figsize=(min(24, max(6, 0.18 * len(regions) + 2)), 2.8))
    used: dict[str, str] = {}
    max_u = 1
    for i, r in enumerate(regions):
        units = list(r.get("units", {}))
        max_u = max(max_u, len(units))
        for j, u in enumerate(units):
            w, a = unit_prec.get(u, ("fp32", "fp32"))
            used[_label(w, a)] = c = _color(w, a)
            ax.add_patch(plt.Rectangle((i - 0.4, j - 0.4), 0.8, 0.8, color=c))
    ax.set_xlim(-1, len(regions))
    ax.set_ylim(-0.7, max_u - 0.3)
    ax.set_xlabel("region index (along the network)")
    ax.set_ylabel("unit in region")
    ax.set_title(title)
    ax.legend(handles=[Patch(color=c, label=lab) for lab, c in sorted(used.items())], loc="upper left",
              bbox_to_anchor=(1.0, 1.0), fontsize=8)
    _save(fig, out / "precision_map.png")
    return True


def _loss_mse(out: Path, res: dict) -> bool:
    pts = list(res.get("validated") or [])
    if res.get("predicted_mse") is not None and res.get("measured_mse") is not None:
        pts.append({"predicted_mse": res["predicted_mse"], "measured_mse": res["measured_mse"], "label": "chosen plan"})
    pts = [p for p in pts if p.get("predicted_mse", 0) > 0 and p.get("measured_mse", 0) > 0]
    if not pts:
        return False
    fig, ax = _plt().subplots(figsize=(4.6, 4.2))
    for p in pts:
        chosen = p.get("label") == "chosen plan"
        ax.scatter(p["predicted_mse"], p["measured_mse"], marker="*" if chosen else "o", s=140 if chosen else 30,
                   zorder=3)
        if p.get("label"):
            ax.annotate(p["label"], (p["predicted_mse"], p["measured_mse"]), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")
    vals = [p["predicted_mse"] for p in pts] + [p["measured_mse"] for p in pts]
    lo, hi = min(vals) / 3, max(vals) * 3
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("predicted loss MSE")
    ax.set_ylabel(f"measured loss MSE ({res.get('backend', 'ORT')})")
    ax.legend(fontsize=8)
    ax.set_title("loss MSE: predicted vs measured")
    _save(fig, out / "loss_mse.png")
    return True


def _pareto(out: Path, res: dict) -> bool:
    par = res.get("pareto") or []
    if not par:
        return False
    fig, ax = _plt().subplots(figsize=(5.6, 4.2))
    by: dict[str, list] = {}
    for p in par:
        by.setdefault(p["strategy"], []).append(p)
    for s, ps in sorted(by.items()):
        ps = sorted(ps, key=lambda p: p["predicted_mse"])
        ax.plot([max(p["predicted_mse"], 1e-30) for p in ps], [p["gain"] for p in ps], "o-", ms=3, label=s)
    if res.get("predicted_mse") is not None and res.get("predicted_gain") is not None:
        ax.scatter([max(res["predicted_mse"], 1e-30)], [res["predicted_gain"]], marker="*", s=220, c="k",
                   zorder=5, label="chosen")
    ax.set_xscale("log")
    ax.set_xlabel("predicted loss MSE")
    ax.set_ylabel(f"predicted gain ({res.get('metric', 'time')})")
    ax.legend(fontsize=8)
    ax.set_title("Pareto sweep over tau")
    _save(fig, out / "pareto.png")
    return True


def _time_gains(out: Path, region_rows: list) -> bool:
    if not region_rows:
        return False
    fig, ax = _plt().subplots(figsize=(min(24, max(6, 0.18 * len(region_rows) + 2)), 3.0))
    xs = [i for i, _, _ in region_rows]
    tg = [(row or {}).get("time_gain_s", 0.0) * 1e3 for _, _, row in region_rows]
    tt = [(row or {}).get("tt_gain_s", 0.0) * 1e3 for _, _, row in region_rows]
    ax.bar([x - 0.2 for x in xs], tg, width=0.4, label="time gain (table: measured where profiled)")
    ax.bar([x + 0.2 for x in xs], tt, width=0.4, label="roofline gain (TT)")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("region index")
    ax.set_ylabel("gain per run (ms)")
    ax.legend(fontsize=8)
    ax.set_title("time gain of the chosen configuration per region")
    _save(fig, out / "time_gains.png")
    return True


def _task_metric(out: Path, task: dict | None) -> bool:
    if not task or task.get("before") is None or task.get("after") is None:
        return False
    fig, ax = _plt().subplots(figsize=(3.6, 3.4))
    ax.bar(["before (high)", "after (plan)"], [task["before"], task["after"]], color=["#4c72b0", "#dd8452"])
    for i, v in enumerate([task["before"], task["after"]]):
        ax.text(i, v, _fmt(v), ha="center", va="bottom", fontsize=9)
    ax.set_ylabel(task.get("name", "metric"))
    ax.set_title("task metric")
    _save(fig, out / "task_metric.png")
    return True


def _ms(x: float | None) -> str:
    return _fmt(None if x is None else x * 1e3)


CAPTIONS = {
    "precision_map": "Precision per unit along the network (x: region index).",
    "loss_mse": "Predicted vs measured loss MSE (log-log; dashed: y = x).",
    "pareto": "Pareto sweep: predicted gain vs predicted loss MSE per strategy; star: the chosen plan.",
    "time_gains": "Time gain of the chosen configuration per region (from the gain table).",
    "task_metric": "Task metric of the high-precision model and of the plan.",
}


def _summary_table(res: dict, regions: list, unit_prec: dict) -> list[str]:
    counts: dict[str, int] = {}
    for w, a in unit_prec.values():
        counts[_label(w, a)] = counts.get(_label(w, a), 0) + 1
    backend = res.get("backend", "ORT")
    lines = [
        "| | |", "|---|---|",
        f"| target | {res.get('target', 'n/a')} |",
        f"| strategy / metric | {res.get('strategy', 'n/a')} / {res.get('metric', 'n/a')} |",
        f"| tau (predicted loss MSE bound) | {_fmt(res.get('tau'))} |",
        f"| regions / units | {len(regions)} / {len(unit_prec)} |",
        f"| units per format | {', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))} |",
        f"| predicted loss MSE | {_fmt(res.get('predicted_mse'))} |",
        f"| measured loss MSE ({backend}, held-out) | {_fmt(res.get('measured_mse'))} |",
        f"| predicted time gain (sum of region gains) | {_ms(res.get('predicted_gain_s'))} ms |",
        f"| measured time, high-precision model | {_ms(res.get('time_ref_s'))} ms |",
        f"| measured time, plan ({backend}) | {_ms(res.get('time_amp_s'))} ms |",
        f"| measured time gain | {_ms(res.get('measured_gain_s'))} ms |",
    ]
    if res.get("time_ref_s") and res.get("time_amp_s"):
        lines.append(f"| measured speedup over the high-precision model ({backend}) | "
                     f"{res['time_ref_s'] / res['time_amp_s']:.3f}x |")
    task = res.get("task")
    if task:
        lines.append(f"| {task.get('name', 'task metric')} before / after ({backend}) | {_fmt(task.get('before'))} / "
                     f"{_fmt(task.get('after'))} |")
    pc = res.get("precision_check")
    if pc:
        lines.append(f"| executed precision: layers not as planned ({backend} {pc.get('source', 'runtime graph')}) | "
                     f"{len(pc.get('mismatches') or [])} of {pc.get('int8_planned', pc.get('layers'))} |")
    return lines + [""]


def _precision_section(res: dict) -> list[str]:
    """What the runtime really executed, layer by layer where it differs from the plan."""
    pc = res.get("precision_check")
    if not pc:
        return []
    mm = pc.get("mismatches") or []
    ran = ", ".join(f"{k}: {v}" for k, v in sorted((pc.get("executed") or {}).items()))
    what = "INT8-planned layers" if "int8_planned" in pc else "planned layers"
    lines = ["## executed precision", "",
             f"The shipped model compiled by {pc.get('backend', res.get('backend'))}; each layer's precision read "
             f"from its {pc.get('source', 'runtime graph')}. Layers ran as: {ran or 'n/a'}. Not as planned: {len(mm)} "
             f"of {pc.get('int8_planned', pc.get('layers'))} {what}.", ""]
    if mm:
        lines += ["| layer | node | planned | expected | executed | kind |", "|---|---|---|---|---|---|"]
        lines += [f"| {m.get('layer')} | {m.get('node')} | {m.get('planned')} | {m.get('expected')} | "
                  f"{m.get('executed')} | {m.get('kind')} |" for m in mm[:200]]
        lines.append("")
    return lines


def _markdown(res: dict, regions: list, unit_prec: dict, pngs: list[str], region_rows: list) -> list[str]:
    lines = [f"# onnx-amp report: {res.get('model', 'model')}", ""] + _summary_table(res, regions, unit_prec)
    lines += _precision_section(res)
    for key in pngs:
        lines += [f"## {key.replace('_', ' ')}", "", CAPTIONS[key], "", f"![{key}]({key}.png)", ""]
    if region_rows:
        lines += ["## regions", "", "| # | region | units (w,a) | time gain ms | roofline gain ms |",
                  "|---|---|---|---|---|"]
        by_id = {r["id"]: r for r in regions}
        for i, rid, row in region_rows:
            us = "; ".join(f"{u}:{_label(*unit_prec.get(u, ('?', '?')))}" for u in by_id.get(rid, {}).get("units", {}))
            lines.append(f"| {i} | {rid} | {us} | {_fmt((row or {}).get('time_gain_s', 0.0) * 1e3, '.4f')} "
                         f"| {_fmt((row or {}).get('tt_gain_s', 0.0) * 1e3, '.4f')} |")
        lines.append("")
    if res.get("stage_seconds"):
        lines += ["## stage times", "", "| stage | s |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in res["stage_seconds"].items()] + [""]
    if res.get("files"):
        lines += ["## files", ""] + [f"- {k}: `{v}`" for k, v in res["files"].items()] + [""]
    if res.get("notes"):
        lines += ["## notes", ""] + [f"- {n}" for n in res["notes"]] + [""]
    return lines


def write_report(out_dir: str | os.PathLike, model: ir.Model, results: dict[str, Any] | None = None,
                 title: str | None = None) -> Path:
    """Write ``report.md`` and its PNGs into ``out_dir`` (created if needed); returns the .md path."""
    res = dict(results or {})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    regions, unit_prec = unit_precisions(model)
    rg = chosen_region_gains(model, unit_prec)
    order = [r["id"] for r in regions if r["id"] in rg] or list(rg)
    region_rows = [(i, rid, rg.get(rid)) for i, rid in enumerate(order)]
    title = title or f"{res.get('model', 'model')}: precision per unit ({res.get('target', '')})"
    drawn = {"precision_map": _precision_map(out, regions, unit_prec, title), "loss_mse": _loss_mse(out, res),
             "pareto": _pareto(out, res), "time_gains": _time_gains(out, region_rows),
             "task_metric": _task_metric(out, res.get("task"))}
    md = out / "report.md"
    md.write_text("\n".join(_markdown(res, regions, unit_prec, [k for k, v in drawn.items() if v], region_rows)))
    (out / "report.json").write_text(json.dumps({k: v for k, v in res.items() if k != "pareto"}, indent=1, default=str))
    return md
