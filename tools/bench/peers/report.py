"""``DIR/peers.json``, ``DIR/peers.md`` and ``DIR/peers.png`` from the measured subjects."""

from __future__ import annotations

import json
import math
from pathlib import Path

NAMES = {"perplexity": "perplexity", "accuracy": "accuracy", "agreement": "top-1 agreement with FP32"}
SHORT = ("QLinearConv", "QLinearMatMul", "MatMulIntegerToFloat", "QGemm", "QLinearAdd", "QLinearMul",
         "QLinearSigmoid", "QLinearGlobalAveragePool", "DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear")


def _f(x, fmt=".2f", none="–") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return none
    return format(x, fmt)


def _fused(v: dict) -> str:
    f = v.get("ort_fused") or {}
    if "error" in f:
        return "session: " + f["error"][:60]
    return ", ".join(f"{k} {f[k]}" for k in SHORT if f.get(k))


def _types(q: dict, key: str) -> str:
    return ", ".join(f"{k.split(' ', 1)[1]} {v}" for k, v in q.items() if k.startswith(key + " ") and
                     k != "activation" and isinstance(v, int) and k.split(" ", 1)[1].startswith(("int", "uint")))


def _top(d: dict, n: int = 5) -> str:
    return ", ".join(f"{k} {v}" for k, v in list(d.items())[:n])


def _verdicts(res: dict) -> list[str]:
    rows = [r for r in res["rows"] if "time_ms" in r]
    amp = next((r for r in rows if r["name"] == "onnx-amp"), None)
    if amp is None:
        return ["- onnx-amp: no measured model"]
    out = [] if amp.get("within_val") else [
        "- onnx-amp's own model is NOT within the bound on the held-out samples as measured here (ORT default "
        "session): every comparison below is outside the bound on its side"]
    for r in rows:
        if r["tool"] in ("fp32", "onnx-amp"):
            continue
        ratio = amp["speedup_vs_fp32_ort"] / r["speedup_vs_fp32_ort"]
        word = "wins" if ratio > 1.05 else ("loses" if ratio < 0.95 else "ties")
        ok = "within" if r.get("within_val") else "NOT within"
        out.append(f"- vs {r['name']} ({ok} the bound on the held-out samples): onnx-amp {word}, "
                   f"{ratio:.2f}x its speed (both against FP32 on ORT)")
    return out


def subject_md(res: dict) -> list[str]:
    kind = res["metric"]
    t = res["timing"]
    lines = [f"## {res['subject']}: {NAMES[kind]}, bound {res['drop']:.0%} relative; "
             f"{res['samples']['val']} held-out / {res['samples']['test']} test samples", ""]
    if t.get("why"):
        lines += [f"Timing skipped: {t['why']}.", ""]
    if not t.get("skipped"):
        lines += [f"Timing: {t['rounds']} paired rounds, {t['threads']} thread, batch {t['feed']}, "
                  f"1-min load {t['load_at_start'][0]:.2f} at start (waited {t['waited_s']:.0f} s, "
                  f"{'quiet' if t['quiet'] else 'NOT quiet'}), {t['load_at_end'][0]:.2f} at end.", ""]
    lines += ["| tool | variant | backend | metric held-out | within | metric test | within | ms | x FP32 (ORT) | "
              "x FP32 (same backend) | size MB | search s | evaluations | standard ONNX | ORT kernels |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        if r.get("error"):
            continue
        lines.append(
            f"| {r['tool']} | {r['name']} | {r['backend']} | {_f(r.get('metric_val'), '.4g')} | "
            f"{'yes' if r.get('within_val') else 'no'} | {_f(r.get('metric_test'), '.4g')} | "
            f"{'yes' if r.get('within_test') else 'no'} | {_f(r.get('time_ms'))} | "
            f"{_f(r.get('speedup_vs_fp32_ort'))} | {_f(r.get('speedup_vs_fp32_same_backend'))} | "
            f"{_f(r.get('size_mb'), '.1f')} | {_f(r.get('search_s'), '.0f')} | {_f(r.get('evaluations'), 'd')} | "
            f"{'yes' if r.get('standard_onnx') else 'no: ' + str(r.get('standard_why'))} | {_fused(r)} |")
    lines += ["", "Q/DQ placement in each file (what ORT fuses it into: the last column above):", "",
              "| variant | Q | DQ act | DQ weight | act int type | weight int type | per-channel weights | "
              "DQ shared by >1 consumer | DQ feeds | Q follows |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        q = r.get("qdq_layout")
        if not q or r.get("error") or not q.get("Q"):
            continue
        lines.append(f"| {r['name']} | {q.get('Q', 0)} | {q.get('DQ activation', 0)} | {q.get('DQ weight', 0)} | "
                     f"{_types(q, 'activation')} | {_types(q, 'weight')} | {q.get('weight per-channel', 0)} | "
                     f"{q.get('DQ shared by >1 consumer', 0)} | {_top(q['DQ feeds'])} | {_top(q['Q follows'])} |")
    fails = [r for r in res["rows"] if r.get("error")]
    if fails:
        lines += ["", "Failed (the exact error line):", ""]
        lines += [f"- {r['tool']} / {r['name']}: `{r['error']}`" for r in fails]
    lines += ["", "Verdict (speed at the bound, measured):", ""] + _verdicts(res) + [""]
    return lines


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.6), squeeze=False)
    for ax, res in zip(axes[0], results):
        ref = next((r for r in res["rows"] if r["name"] == "fp32 (ORT)"), {})
        for r in res["rows"]:
            if "time_ms" not in r or r["tool"] == "fp32" and r["backend"] == "ort_cpu":
                continue
            base = next((x for x in res["rows"] if x["tool"] == "fp32" and x["backend"] == r["backend"]), ref)
            d = 100 * (r["metric_val"] - base["metric_val"]) / abs(base["metric_val"])
            if res["metric"] == "perplexity":
                d = -d
            mk = "*" if r["tool"] == "onnx-amp" else ("s" if r["backend"] == "openvino_cpu" else "o")
            ax.scatter(r["speedup_vs_fp32_ort"], d, marker=mk, s=90 if mk == "*" else 40)
            ax.annotate(r["name"], (r["speedup_vs_fp32_ort"], d), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.axhline(-100 * res["drop"], color="r", ls="--", lw=0.8, label="1 % bound")
        ax.axvline(1.0, color="gray", lw=0.6)
        ax.set_title(f"{res['subject']} ({NAMES[res['metric']]})", fontsize=10)
        ax.set_xlabel("speedup over FP32 on ORT (1 thread, paired rounds)")
        ax.set_ylabel("task metric change vs FP32, % (higher is better)")
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle("onnx-amp (*) and the tools users would pick instead; squares: OpenVINO", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: list[dict], root: Path, args) -> None:
    (root / "peers.json").write_text(json.dumps({"command": vars(args), "results": results}, indent=1,
                                                default=str) + "\n")
    md = ["# onnx-amp side by side with the tools users would pick instead", "",
          "Every number measured by `python -m onnx_amp.tools.bench.peers` on this machine; speedups are "
          "ratios of median times of all variants timed in one process (paired rounds, shuffled order).", ""]
    for res in results:
        md += subject_md(res)
    (root / "peers.md").write_text("\n".join(md) + "\n")
    try:
        plot(results, root / "peers.png")
    except Exception as e:  # noqa: BLE001
        print(f"[peers] plot failed: {type(e).__name__}: {e}", flush=True)
