"""The peer benchmark's driver: ``python -m onnx_amp.tools.bench.peers --out DIR``.

1. ``setup.sh`` creates each peer's venv (idempotent; ``--no-setup`` skips it);
2. per subject: the shared samples (``data.py``), ``onnx-amp run SUBJECT`` (default bound: 1 % task
   metric) on them, then each peer's runner as a subprocess in its own venv (``runner_<peer>.py``);
3. every output model measured here (``evaluate.py``): task metric, size, standard ONNX, Q/DQ
   layout, ORT's fused kernels, and end-to-end time of all variants side by side in one process,
   1 thread, paired rounds, started only when the 1-minute load is below ``--max_load``;
4. ``DIR/peers.json``, ``DIR/peers.md``, ``DIR/peers.png`` (``report.py``).

A subject's finished steps are reused on a rerun (``result.json`` of each runner, the onnx-amp output);
``--fresh`` redoes them.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from onnx_amp.tools.bench.peers import data as D

HERE = Path(__file__).resolve().parent
PEERS = ("onnx-amp", "ort", "nncf", "inc", "aimet", "modelopt")
#: peer -> [(venv name, runner, out folder, extra args)]
RUNNERS = {
    "ort": [("ort", "runner_ort.py", "ort", [])],
    "nncf": [("nncf", "runner_nncf.py", "nncf", [])],
    "inc": [("inc", "runner_inc.py", "inc", []), ("inc2", "runner_inc.py", "inc2", [])],
    "aimet": [("aimet", "runner_aimet.py", "aimet", [])],
    "modelopt": [("modelopt", "runner_modelopt.py", "modelopt", [])],
}


def envs_dir() -> Path:
    return Path(os.environ.get("PEER_ENVS", "/work/peer_envs"))


def setup(peers: list[str], root: Path) -> None:
    """``setup.sh`` once per peer; a peer whose set-up fails is recorded (``ROOT/setup-<peer>.log``) and
    reported as that peer's row (``run_peer``) instead of stopping the benchmark."""
    for p in peers:
        if p not in RUNNERS:
            continue
        log = root / f"setup-{p}.log"
        with open(log, "w") as f:
            rc = subprocess.run(["bash", str(HERE / "setup.sh"), p], stdout=f, stderr=subprocess.STDOUT).returncode
        lines = [x for x in log.read_text(errors="replace").splitlines() if not x.startswith("WARNING: Location")]
        print("\n".join(x for x in lines if x.startswith("[setup]")), flush=True)
        if rc != 0:
            print(f"[peers] set-up of {p} failed (exit {rc}): {' | '.join(lines[-3:])}", flush=True)


def _env_missing(env: str, root: Path) -> str | None:
    """Why ``env``'s venv cannot run (None when it can): no marker of a passed import check."""
    d = envs_dir() / env
    if (d / ".peer-ok").exists() and (d / "bin" / "python").exists():
        return None
    log = root / f"setup-{env.rstrip('0123456789')}.log"
    why = _log_tail(log, 3) if log.exists() else "setup.sh was not run (--no-setup)"
    return f"venv {d} not set up: {why}"


def _log_tail(path: Path, n: int = 3) -> str:
    try:
        lines = [x for x in path.read_text(errors="replace").splitlines()
                 if x.strip() and not x.startswith("WARNING: Location")]  # pip's notes on this machine's index
    except OSError:
        return ""
    return " | ".join(lines[-n:])


def run_peer(info: dict, peer: str, root: Path, args) -> list[dict]:
    """Each runner of ``peer`` on ``info``'s subject; their variants (``result.json``), with wall time."""
    out = []
    for env, script, folder, extra in RUNNERS[peer]:
        job = D.write_job(info, folder, root)
        res_path = job.parent / "result.json"
        py = envs_dir() / env / "bin" / "python"
        missing = _env_missing(env, root)
        if missing:
            out.append({"tool": peer, "env": env, "name": folder, "error": missing, "backend": "ort_cpu"})
            continue
        if args.fresh or not res_path.exists() or not json.loads(res_path.read_text()).get("done"):
            t0 = time.perf_counter()
            log = job.parent / "log.txt"
            print(f"[peers] {info['subject']}: {peer} ({env}) ...", flush=True)
            with open(log, "w") as f:
                try:
                    rc = subprocess.run([str(py), str(HERE / script), str(job), *extra], cwd=str(job.parent), stdout=f,
                                        stderr=subprocess.STDOUT, timeout=args.budget_s * 2 + 600).returncode
                except subprocess.TimeoutExpired:
                    rc = "timeout"
                except OSError as e:
                    rc = f"cannot start {py}: {e}"
            r = json.loads(res_path.read_text()) if res_path.exists() else {"variants": []}
            r.update({"done": True, "wall_s": time.perf_counter() - t0, "rc": rc})
            if rc != 0 and not r["variants"]:
                r["variants"] = [{"name": folder, "error": f"runner exit {rc}: {_log_tail(log)}"}]
            res_path.write_text(json.dumps(r, indent=1, default=str) + "\n")
        r = json.loads(res_path.read_text())
        for v in r["variants"]:
            out.append({"tool": peer, "env": env, "versions": r.get("versions", {}), "runner_wall_s": r.get("wall_s"),
                        "backend": "ort_cpu", **v})
    return out


def _run_cmd(cmd: list[str], out: Path, cwd: Path) -> dict:
    """``cmd`` once, timed, its log in ``out.log``; ``out/wall.json`` records it (reused on a rerun)."""
    t0 = time.perf_counter()
    log = out.with_suffix(".log")
    with open(log, "w") as f:  # cwd: a folder with no entry named like the subject
        rc = subprocess.run(cmd, cwd=str(cwd), stdout=f, stderr=subprocess.STDOUT).returncode
    out.mkdir(parents=True, exist_ok=True)
    w = {"wall_s": time.perf_counter() - t0, "rc": rc, "cmd": cmd, "error": None if rc == 0 else _log_tail(log, 1)}
    (out / "wall.json").write_text(json.dumps(w) + "\n")
    return w


def run_onnx_amp(info: dict, root: Path, args) -> list[dict]:
    """``onnx-amp run SUBJECT`` on the shared samples (default bound), timed. Its row is ``<name>.amp.onnx``:
    the form onnx-amp lowers for ORT CPU (``ORT_CPU_LOWERING``: INT8 output Q for Conv, u8 activations,
    INT8 chains) and times and validates itself; ``<name>.amp.deploy.onnx`` (the plan without that
    lowering: true bf16/fp16 types, plain Q/DQ) is a second row."""
    subject = info["subject"]
    out = root / subject / "onnx-amp"
    if args.fresh or not (out / "wall.json").exists():
        cmd = ["onnx-amp", "run", subject, "--calibration_data", info["calib"], "--validation_data", info["val"],
               "-o", str(out), "--no-progress"]
        print(f"[peers] {subject}: {' '.join(cmd)}", flush=True)
        _run_cmd(cmd, out, root / subject / "data")
    w = json.loads((out / "wall.json").read_text())
    if w["rc"] != 0:
        return [{"tool": "onnx-amp", "name": "onnx-amp", "error": w["error"], "search_s": w["wall_s"]}]
    deploy = sorted(glob.glob(str(out / "*.amp.deploy.onnx")))
    emulate = sorted(glob.glob(str(out / "*.amp.onnx")))
    res = _onnx_amp_results(out)
    base = {"tool": "onnx-amp", "backend": "ort_cpu", "search_s": w["wall_s"], "evaluations": res["evaluations"],
            "format": res["format"], "notes": res["notes"], "cmd": " ".join(w["cmd"])}
    model = emulate[0] if emulate else deploy[0]
    rows = [{**base, "name": "onnx-amp", "model": model},
            {**base, "name": "onnx-amp (its session options)", "model": model, "session": "onnx-amp",
             "notes": res["notes"] + ["ORT with CommonSubexpressionElimination off, as onnx-amp times and ships"]}]
    if deploy and emulate:
        rows.append({**base, "name": "onnx-amp (deploy form)", "model": deploy[0],
                     "notes": res["notes"] + ["the .amp.deploy.onnx file: the plan without the ORT CPU lowering"]})
    return rows


def run_onnx_amp_uniform(info: dict, root: Path) -> list[dict]:
    """Every layer INT8 with onnx-amp's ORT CPU lowering: ``onnx-amp run SUBJECT --strategy uniform-low
    --tau 1e9`` (no bound, no timing search): the same coverage as the peers' uniform INT8, so the
    placement of the Q/DQ nodes is the only difference."""
    subject = info["subject"]
    out = root / subject / "onnx-amp-uniform-low"
    cmd = ["onnx-amp", "run", subject, "--calibration_data", info["calib"], "--validation_data", info["val"],
           "--strategy", "uniform-low", "--tau", "1e9", "--no-measure", "--no-pareto", "--no-progress", "-o", str(out)]
    w = json.loads((out / "wall.json").read_text()) if (out / "wall.json").exists() else _run_cmd(
        cmd, out, root / subject / "data")
    model = sorted(glob.glob(str(out / "*.amp.onnx")))
    if w["rc"] != 0 or not model:
        return [{"tool": "onnx-amp", "name": "onnx-amp uniform int8", "error": w["error"] or "no .amp.onnx written"}]
    return [{"tool": "onnx-amp", "name": "onnx-amp uniform int8", "model": model[0], "backend": "ort_cpu",
             "search_s": w["wall_s"], "evaluations": 0, "format": "int8, every layer (its ORT CPU lowering)",
             "cmd": " ".join(cmd), "notes": ["not a search: a uniform INT8 plan, for the placement comparison"]}]


def _onnx_amp_results(out: Path) -> dict:
    """Evaluations of the bisection and the formats of the plan, from the run's output files."""
    plan = json.loads((out / "plan.json").read_text()) if (out / "plan.json").exists() else {}
    res = {}
    for p in glob.glob(str(out / "*.json")):
        try:
            d = json.loads(Path(p).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(d, dict) and "bisection" in d:
            res = d
    units = plan.get("units", {})
    fm: dict[str, int] = {}
    for u in units.values():
        k = u.get("weight", "?") if isinstance(u, dict) else str(u)
        fm[k] = fm.get(k, 0) + 1
    bis = res.get("bisection") or []
    return {"evaluations": (len(bis) + 1) if bis else None, "format": f"plan units: {fm}",
            "notes": [f"stage seconds: {res.get('stage_seconds')}"] if res else []}


def _earlier(root: Path, subjects: list[str]) -> list[dict]:
    """The other subjects' results of an earlier run into the same folder (kept in the report)."""
    p = root / "peers.json"
    if not p.exists():
        return []
    try:
        return [r for r in json.loads(p.read_text())["results"] if r["subject"] not in subjects]
    except (ValueError, KeyError):
        return []


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m onnx_amp.tools.bench.peers", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder (peers.md, peers.json, peers.png)")
    ap.add_argument("--subjects", nargs="+", default=list(D.SUBJECTS))
    ap.add_argument("--peers", nargs="+", default=list(PEERS), choices=PEERS)
    ap.add_argument("--no-setup", action="store_true", help="do not run setup.sh (the venvs exist)")
    ap.add_argument("--no-uniform", action="store_true",
                    help="do not compute onnx-amp's uniform INT8 lowering (placement check; an existing one is reused)")
    ap.add_argument("--fresh", action="store_true", help="redo every search (else finished ones are reused)")
    ap.add_argument("--budget_s", type=int, default=1800, help="search budget of the slow peer searches (AIMET AMP, INC)")
    ap.add_argument("--rounds", type=int, default=15, help="paired timing rounds")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max_load", type=float, default=2.5, help="time only when the 1-minute load is below this")
    ap.add_argument("--wait_s", type=int, default=3600, help="how long to wait for that load before timing anyway")
    ap.add_argument("--time_anyway", action="store_true", help="time even when the load stayed high (flagged)")
    ap.add_argument("--no-timing", action="store_true")
    args = ap.parse_args(argv)
    root = Path(args.out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    os.environ["PEER_AMP_BUDGET_S"] = os.environ["PEER_INC_BUDGET_S"] = str(args.budget_s)
    if not args.no_setup:
        setup(args.peers, root)
    from onnx_amp.tools.bench.peers import report
    from onnx_amp.tools.bench.peers.measure import measure_subject

    results = _earlier(root, args.subjects)
    for subject in args.subjects:
        info = D.prepare(subject, root)
        variants = run_onnx_amp(info, root, args) if "onnx-amp" in args.peers else []
        have = (root / subject / "onnx-amp-uniform-low" / "wall.json").exists()
        if "onnx-amp" in args.peers and (not args.no_uniform or have):  # --no-uniform: only reuse one
            variants += run_onnx_amp_uniform(info, root)
        for peer in args.peers:
            if peer in RUNNERS:
                variants += run_peer(info, peer, root, args)
        results.append(measure_subject(info, variants, root, args))
        results.sort(key=lambda r: D.SUBJECTS.index(r["subject"]) if r["subject"] in D.SUBJECTS else 99)
        report.write(results, root, args)
    print(f"[peers] wrote {root / 'peers.md'}, {root / 'peers.json'}, {root / 'peers.png'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
