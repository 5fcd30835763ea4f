"""One call end to end: ``onnx_amp.optimize`` (and ``onnx-amp run``).

Stages: export (torch sources) -> partition -> calibrate -> profile/gains -> solve -> rewrite
(emulate + deploy) -> validate (measured loss MSE, measured time gain, task metric, all with ONNX
Runtime on held-out samples) -> Gaudi config -> report. Every stage is one of the onnx-ir passes
or runtime functions of the package, run on the same in-memory ``ir.Model``; the annotations they
write are the only hand-off, so ``keep_intermediate=True`` saves each stage's ONNX
(``<model>.partitioned.onnx``, ``.calibrated.onnx``, ``.gains.onnx``, ``.planned.onnx``) and any
stage can be re-run from it (``onnx-amp calibrate|profile|solve|rewrite``, or ``optimize`` on it:
stages whose annotations are present are skipped).

Outputs (next to an ONNX input, or in ``output_dir``): ``<model>.amp.onnx`` (emulate form, runs in
ORT on CPU), ``<model>.amp.deploy.onnx`` (explicit QDQ / true BF16 types), ``plan.json``,
``<model>.gaudi_fp8.json`` + ``<model>.gaudi_fp8_measure.json`` (Intel Neural Compressor FP8 config
for optimum-habana), ``report.md`` with PNGs. Everything is written into a hidden temporary folder
inside the output folder and moved into place only when every stage succeeded: a failure leaves
no partial outputs.

Python API::

    import onnx_amp
    res = onnx_amp.optimize("model.onnx", calibration_data="calib.npz", target="cpu", tau_relative=0.1)
    print(res.summary())

The export-time pass: the passes work on the ``ir.Model`` that the dynamo exporter returns, before
anything is saved::

    prog = torch.onnx.export(module, (x,), dynamo=True, opset_version=21)
    model = prog.model                                  # onnx_ir.Model, in memory
    from onnx_amp.passes.modules import AnnotateModulesPass
    from onnx_amp.passes.partition import PartitionPass
    AnnotateModulesPass()(model); PartitionPass()(model)  # passes straight on the ir.Model
    res = onnx_amp.optimize(model, calibration_data=batches, output_dir="out", name="mymodel")
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from onnx_amp.core import annotations as ann
from onnx_amp.core.errors import OnnxAmpError
from onnx_amp.core.onnx_io import load_model, save_model
from onnx_amp.runtime.preflight import (
    OutputDir, check_backend, check_data_file, check_disk, check_output_dir, check_solver, model_bytes,
)

# With no bound given, the plan must keep the task metric within 1 % of the original, found by
# bisection over tau with ORT evaluations (Schaefer's and AIMET's way of meeting a user bound).
# SmolLM2 default run: perplexity 33.31 -> 33.55, measured 22 ms of 125 ms saved; a fixed
# tau_relative (0.002) either lowered too little (5 ms) or, with the ideal loss model, lost accuracy.
DEFAULT_ACCURACY_DROP = 0.01
SUBJECTS = ("smollm2", "minilm-sentiment", "minilm", "effnet-lite0", "effnet", "paraphrase")


@dataclass
class Result:
    """What ``optimize`` did: output paths, the plan and the predicted vs measured figures."""

    name: str
    output_dir: Path
    files: dict[str, Path]
    plan: dict
    target: str
    strategy: str
    metric: str
    tau: float
    predicted_mse: float
    measured_mse: float
    predicted_gain_s: float | None
    time_ref_s: float | None
    time_amp_s: float | None
    measured_gain_s: float | None
    task: dict[str, Any] | None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    model: ir.Model | None = field(default=None, repr=False)  # the planned (annotated) model

    def summary(self) -> str:
        def ms(x):
            return "n/a" if x is None else f"{x * 1e3:.3f} ms"

        lowered = len(self.plan.get("units", {}))
        lines = [
            f"onnx-amp {self.name}: target {self.target}, strategy {self.strategy}, metric {self.metric}, tau {self.tau:.4g}",
            f"  plan: {lowered} unit(s) lowered; units per format: {self.plan.get('_formats', {})}",
            f"  loss MSE   predicted {self.predicted_mse:.4g}   measured {self.measured_mse:.4g} (ORT, held-out)",
            f"  time gain  predicted {ms(self.predicted_gain_s)}   measured {ms(self.measured_gain_s)} "
            f"(high {ms(self.time_ref_s)} -> plan {ms(self.time_amp_s)}, emulate form on ORT CPU)",
        ]
        if self.task:
            lines.append(f"  {self.task['name']}: {self.task['before']:.4g} -> {self.task['after']:.4g}")
        lines.append("  stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.stage_seconds.items()))
        lines.append(f"  outputs in {self.output_dir}: " + ", ".join(sorted(p.name for p in self.files.values())))
        return "\n".join(lines)


def _stem(path: Path) -> str:
    n = path.name
    return n[:-5] if n.endswith(".onnx") else n


def _subject_name(source: Any) -> str | None:
    if not isinstance(source, str) or source.lower() not in SUBJECTS:
        return None
    from onnx_amp.runtime import subjects

    return "paraphrase" if source.lower() == "paraphrase" else subjects.canonical(source)


def _n_samples(block: dict[str, np.ndarray]) -> int:
    return len(next(iter(block.values())))


def _split_samples(block: dict[str, np.ndarray], n_cal: int) -> tuple[dict, dict]:
    return ({k: v[:n_cal] for k, v in block.items()}, {k: v[n_cal:] for k, v in block.items()})


def _batches(block: dict[str, np.ndarray], bs: int) -> list[dict[str, np.ndarray]]:
    n = _n_samples(block)
    return [{k: v[i:i + bs] for k, v in block.items()} for i in range(0, n, bs)]


def _concat_data(cd) -> dict[str, np.ndarray]:
    """CalibrationData -> one dict of arrays (all blocks must share shapes)."""
    blocks = cd.blocks
    keys = blocks[0].keys()
    try:
        return {k: np.concatenate([np.asarray(b[k]) for b in blocks], axis=0) for k in keys}
    except ValueError as e:
        raise OnnxAmpError(f"calibration data {cd.source}: samples of different shapes cannot be split into "
                           f"calibration and held-out sets ({e}); pass validation_data explicitly") from None


def optimize(
    source: str | os.PathLike | ir.Model,
    *,
    calibration_data: Any = None,
    validation_data: Any = None,
    target: str = "cpu",
    strategy: str = "ip",
    metric: str = "time",
    tau: float | None = None,
    tau_relative: float | None = None,
    accuracy_drop: float | None = None,
    output_dir: str | os.PathLike | None = None,
    name: str | None = None,
    keep_intermediate: bool = False,
    tokenizer: Any = None,
    seq_len: int = 128,
    calibration_samples: int | None = None,
    validation_samples: int | None = None,
    batch_size: int = 8,
    loss: Any = None,
    loss_model: str = "measured",
    measure: bool | None = None,
    profile_seq_len: int | None = None,
    profile_repeats: int = 10,
    roofline_batch: int = 64,
    max_configs: int = 64,
    pareto: bool = True,
    gaudi: bool = True,
    report: bool = True,
    progress: bool = True,
    verbose: bool = True,
) -> Result:
    """Run the whole pipeline; return a :class:`Result` (outputs are on disk when it returns).

    ``source``: an ``.onnx`` file, an in-memory ``ir.Model`` (e.g. ``torch.onnx.export(...,
    dynamo=True).model``), a subject name (``smollm2``, ``minilm-sentiment``, ``effnet-lite0``,
    ``paraphrase``), a Hugging Face folder, a GGUF file or ``module:function`` (exported with the
    dynamo exporter). ``calibration_data``: anything ``runtime.data.load_calibration_data`` takes
    (``.npz``, ``.txt`` + ``tokenizer``, dict of arrays, iterable of input dicts, ORT
    ``CalibrationDataReader``); for subject names it defaults to the subject's real data. Held-out
    samples for validation come from ``validation_data`` or, when absent, from the end of the
    calibration data (``validation_samples``, default a quarter, at most 16). The bound on the
    plan: ``tau`` (predicted loss MSE), ``tau_relative`` (fraction of the all-low plan's predicted
    MSE) or ``accuracy_drop`` (allowed relative worsening of the
    task metric, e.g. 0.01 = 1 %, found by bisection over tau with ORT evaluations; the default,
    ``DEFAULT_ACCURACY_DROP`` = 0.01, when none of the three is given).
    ``loss_model``: ``"measured"`` (default) adds a second calibration pass that uses each operand's
    actual rounding error at the rewrite's scales for the target's low formats
    (``calibrate.measure_format_errors``); ``"ideal"`` uses ``alpha_f * S`` (INT8: step^2/12) only.
    ``measure``: time region configurations with ORT at batch 1 (default: when the target's measured
    backend is this CPU); otherwise roofline time at batch ``roofline_batch`` (default 64).
    """
    from onnx_amp.passes.gains import GainsPass
    from onnx_amp.passes.partition import PartitionPass
    from onnx_amp.passes.plan import ApplyPlanPass, Plan
    from onnx_amp.passes.rewrite import ORT_CPU_LOWERING, check_model, rewrite
    from onnx_amp.passes.sensitivity import AnnotateSensitivityPass
    from onnx_amp.passes.solve import (
        bisect_tau, pareto_sweep, plan_object, problem_from_model, relative_tau, solve,
    )
    from onnx_amp.runtime.calibrate import calibrate, measure_format_errors
    from onnx_amp.runtime.data import load_calibration_data
    from onnx_amp.runtime.evaluate import MEASURED_STRATEGIES, PlanEvaluator, evaluate_models
    from onnx_amp.runtime.gaudi import write_gaudi_config
    from onnx_amp.core.targets import load_target

    given = [x is not None for x in (tau, tau_relative, accuracy_drop)]
    if sum(given) > 1:
        raise OnnxAmpError("give at most one of tau, tau_relative, accuracy_drop")
    if not any(given):
        accuracy_drop = DEFAULT_ACCURACY_DROP
    for nm, v in (("tau", tau), ("tau_relative", tau_relative), ("accuracy_drop", accuracy_drop)):
        if v is not None and not (v >= 0 and math.isfinite(v)):
            raise OnnxAmpError(f"{nm}={v}: must be a finite number >= 0")
    if batch_size < 1 or seq_len < 1:
        raise OnnxAmpError("batch_size and seq_len must be >= 1")
    if loss_model not in ("measured", "ideal"):
        raise OnnxAmpError(f"unknown loss_model {loss_model!r}; use 'measured' (actual rounding error) or 'ideal' (alpha)")
    from onnx_amp.passes.solve import STRATEGIES

    if strategy.lower().replace("_", "-") not in STRATEGIES:
        raise OnnxAmpError(f"unknown strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")
    tgt = load_target(target)
    if measure is None:
        measure = tgt.measured_backend == "ort_cpu"
    elif measure and tgt.measured_backend != "ort_cpu":
        raise OnnxAmpError(f"target {tgt.name} cannot be timed on this machine; use measure=False (roofline)")
    # the shipped emulate model uses the lowering the profiler timed (cpu: ORT's fusable INT8 layout)
    lowering = ORT_CPU_LOWERING if tgt.measured_backend == "ort_cpu" else {}

    def say(msg: str) -> None:
        if verbose:
            print(msg, flush=True)

    stage_s: dict[str, float] = {}
    notes: list[str] = []

    @contextlib.contextmanager
    def stage(nm: str):
        t0 = time.perf_counter()
        say(f"[onnx-amp] {nm} ...")
        yield
        stage_s[nm] = time.perf_counter() - t0
        say(f"[onnx-amp] {nm} done in {stage_s[nm]:.1f} s")

    # --- where outputs go
    subject = _subject_name(source)
    src_path = None if isinstance(source, ir.Model) or subject else Path(source)
    if src_path is not None and not src_path.exists() and ":" not in str(source):
        raise OnnxAmpError(f"{src_path}: no such file or folder (give an .onnx file, a Hugging Face folder, "
                           f"a .gguf file, module:function, or one of {', '.join(SUBJECTS)})")
    if name is None:
        if subject:
            name = subject
        elif isinstance(source, ir.Model):
            name = source.graph.name or "model"
        else:
            name = _stem(src_path) if src_path.suffix in (".onnx", ".gguf") else src_path.name.replace(":", "_")
    if output_dir is None:
        if src_path is not None and src_path.is_file():
            output_dir = src_path.parent
        elif src_path is not None and src_path.is_dir():
            output_dir = src_path.parent / f"{src_path.name}.amp"
        else:
            output_dir = Path.cwd() / f"{name}.amp"
    out = OutputDir(output_dir)
    out_dir = out.path

    # --- preflight: what the run will need, checked in seconds before the long work
    with stage("preflight"):
        check_output_dir(out_dir, "output folder")
        if strategy.lower().replace("_", "-") in ("ip", "ip-pairs") or pareto:
            notes += check_solver(strategy)
        check_backend(tgt)
        for nm, d in (("calibration_data", calibration_data), ("validation_data", validation_data)):
            if isinstance(d, (str, os.PathLike)):
                check_data_file(d, f"--{nm}")
        check_disk(out_dir, 64 * 2**20)

    tmp: Path | None = None
    files: dict[str, Path] = {}
    failed = True

    def work_dir() -> Path:
        """The hidden folder outputs are written to; creating it creates (and locks) the output folder."""
        nonlocal tmp
        if tmp is None:
            out.create()
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}.onnx-amp.", dir=out_dir))
        return tmp

    try:
        # --- 1. source -> ir.Model
        with stage("load/export"):
            if isinstance(source, ir.Model):
                model = source
            elif subject:
                from onnx_amp.runtime.export import ensure_subject_onnx

                model = load_model(ensure_subject_onnx(subject, verbose=verbose))
            elif src_path is not None and src_path.suffix == ".onnx":
                model = load_model(src_path)
            else:
                from onnx_amp.runtime.export import export_model

                exported = export_model(str(source), work_dir() / f"{name}.exported.onnx", verbose=verbose)
                model = load_model(exported)
                if keep_intermediate:
                    files["exported"] = exported
        # --- data
        with stage("data"):
            if calibration_data is None:
                if subject is None or subject == "paraphrase":
                    raise OnnxAmpError(f"{source}: give calibration_data (.npz keyed by input name, .txt with a "
                                       "tokenizer, or an iterable of input dicts)")
                from onnx_amp.runtime import subjects as S

                n_cal = calibration_samples or {"smollm2": 16, "minilm-sentiment": 64}.get(subject, 16)
                n_val = validation_samples or {"smollm2": 8, "minilm-sentiment": 64}.get(subject, 16)
                kw = {"seq_len": seq_len} if subject == "smollm2" else {}
                cal = S.subject_batch(subject, n_cal, "calib", **kw)
                val = S.subject_batch(subject, n_val, "eval", **kw)
            else:
                cd = load_calibration_data(calibration_data, model, tokenizer=tokenizer, seq_len=seq_len)
                allc = _concat_data(cd)
                if validation_data is not None:
                    val = _concat_data(load_calibration_data(validation_data, model, tokenizer=tokenizer, seq_len=seq_len))
                    cal = allc
                else:
                    n = _n_samples(allc)
                    n_val = validation_samples or max(1, min(16, n // 4))
                    if n - n_val < 1:
                        raise OnnxAmpError(f"calibration data has {n} sample(s): need at least 2 (calibration + "
                                           "held-out), or pass validation_data")
                    cal, val = _split_samples(allc, n - n_val)
                if calibration_samples:
                    cal = {k: v[:calibration_samples] for k, v in cal.items()}
            say(f"[onnx-amp] {_n_samples(cal)} calibration samples, {_n_samples(val)} held-out samples")
        # the outputs: the emulate and deploy models (plus each stage's model when kept), figures
        check_disk(out_dir, (2 + 4 * keep_intermediate) * model_bytes(model) + 64 * 2**20)
        work_dir()
        # --- 2. partition
        if not ann.layer_nodes(model.graph):
            with stage("partition"):
                if not any(ann.MODULE in n.metadata_props for n in model.graph) and any(
                        ann.TORCH_NAME_SCOPES in n.metadata_props for n in model.graph):
                    from onnx_amp.passes.modules import AnnotateModulesPass

                    AnnotateModulesPass()(model)
                PartitionPass()(model)
            if keep_intermediate:
                files["partitioned"] = save_model(model, tmp / f"{name}.partitioned.onnx")
        n_layers = len(ann.layer_nodes(model.graph))
        if n_layers == 0:
            raise OnnxAmpError(f"{name}: no MatMul/Gemm/Conv layer to assign a precision to")
        # --- 3. calibrate
        if not any(ann.SENS_A in n.metadata_props for n in ann.layer_nodes(model.graph)):
            with stage("calibrate"):
                cres = calibrate(model, cal, loss=loss, batch_size=batch_size, tokenizer=tokenizer,
                                 seq_len=seq_len, progress=progress)
                if loss_model == "measured":
                    # the "actual error" loss model: each operand's real rounding error at the
                    # rewrite's scales, for the target's low formats (tools/fidelity.py: R^2 0.90-0.93
                    # vs 0.79 and below for the ideal alpha model on SmolLM2 / MiniLM)
                    low = tgt.low_formats
                    if low:
                        measure_format_errors(model, cal, cres, low, batch_size=batch_size,
                                              loss=loss, progress=progress)
                AnnotateSensitivityPass(cres)(model)
                if cres.unmatched:
                    notes.append(f"{len(cres.unmatched)} layer(s) got no calibration figures: "
                                 + ", ".join(u["layer"] for u in cres.unmatched[:10]))
            if keep_intermediate:
                files["calibrated"] = save_model(model, tmp / f"{name}.calibrated.onnx")
        # --- 4. gains
        first_val = {k: v[:1] for k, v in val.items()}
        p_seq = profile_seq_len or next((v.shape[1] for v in val.values() if v.ndim >= 2), seq_len)
        with stage("profile/gains"):
            measured = None
            if measure:
                from onnx_amp.runtime.profile import profile_model

                feeds = {i.name: first_val[i.name] for i in model.graph.inputs if i.name in first_val}
                pres = profile_model(model, tgt, feeds=feeds if len(feeds) == len(model.graph.inputs) else None,
                                     batch_size=1, seq_len=p_seq, repeats=profile_repeats, max_configs=max_configs,
                                     progress=progress)
                measured = pres.measured
                say(f"[onnx-amp] measured: {pres.summary()}")
            if measured is not None:
                GainsPass(tgt, measured, 1, p_seq, max_configs)(model)
            else:
                # roofline at a serving batch: at batch 1 the target's per-boundary cost makes every
                # low-precision configuration of a small model a loss (nothing would be lowered)
                GainsPass(tgt, None, roofline_batch, p_seq, max_configs)(model)
        if keep_intermediate:
            files["gains"] = save_model(model, tmp / f"{name}.gains.onnx")
        # --- 5. solve
        with stage("solve"):
            problem = problem_from_model(model)
            bisection = None
            solve_kw: dict = {}
            evaluator = None
            if accuracy_drop is not None or strategy.lower().replace("_", "-") in MEASURED_STRATEGIES:
                # real ORT evaluations on the held-out samples: the accuracy bound's bisection, and
                # the measured unit sensitivities (pareto-greedy) / pair terms (ip-pairs)
                evaluator = PlanEvaluator(model, _batches(val, batch_size), loss, tgt)
                solve_kw = evaluator.strategy_kwargs(problem, strategy)
            if accuracy_drop is not None:
                ref_metric = evaluator.reference_metric
                sol, bisection = bisect_tau(problem, lambda plan_dict: evaluator.evaluate(plan_dict["units"])["metric"]["after"],
                                            accuracy_drop, relative=True, higher_is_better=ref_metric["higher_is_better"],
                                            baseline=ref_metric["before"], strategy=strategy, metric=metric, **solve_kw)
                tau_used = sol.tau
            else:
                tau_used = tau if tau is not None else relative_tau(problem, tau_relative)
                sol = solve(problem, tau_used, strategy, metric, **solve_kw)
            notes += [f"solver: {n}" for n in dict.fromkeys(sol.notes)]
            plan = plan_object(sol)
            ApplyPlanPass(plan, target=tgt.name)(model)
            if not sol.feasible:
                notes.append(f"no plan meets tau={tau_used:.4g}; smallest feasible {problem.min_mse():.4g}")
            pareto_pts = []
            if pareto:
                try:
                    pts = pareto_sweep(problem, ("ip", "greedy", "prefix", "random"), sol.metric, n=15)
                    pareto_pts = [{"strategy": p.strategy, "tau": p.tau, "gain": p.gain,
                                   "predicted_mse": p.predicted_mse} for p in pts if p.feasible]
                except OnnxAmpError as e:  # a sweep is a nicety; the plan stands
                    notes.append(f"Pareto sweep skipped: {e}")
        plan_json = sol.plan
        say(f"[onnx-amp] plan: {len(plan_json.get('units', {}))} unit(s) lowered, predicted loss MSE "
            f"{sol.predicted_mse:.4g} (tau {tau_used:.4g})")
        if keep_intermediate:
            files["planned"] = save_model(model, tmp / f"{name}.planned.onnx")
        # --- 6. rewrite
        with stage("rewrite"):
            amp, rep = rewrite(model, "emulate", **lowering)
            deploy, _ = rewrite(model, "deploy")
            for m, form in ((amp, "emulate"), (deploy, "deploy")):
                try:
                    check_model(m, full_check=False)
                except Exception as e:  # noqa: BLE001
                    raise OnnxAmpError(f"{name}: rewritten {form} model fails onnx.checker "
                                       f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from e
        # --- 7. validate
        with stage("validate"):
            val_batches = _batches(val, batch_size)
            # the evaluator (bisection / measured strategies) already ran the reference on these samples
            mse, task = (evaluator.reference.compare(amp) if evaluator is not None
                         else evaluate_models(model, amp, val_batches, loss))
            t_ref = t_amp = gain_meas = None
            try:
                from onnx_amp.runtime.profile import time_model

                feeds = {i.name: first_val[i.name] for i in model.graph.inputs if i.name in first_val}
                tm = time_model([model, amp], feeds, repeats=max(5, profile_repeats))
                s1 = tm.summary(1)
                t_ref, t_amp, gain_meas = tm.summary(0)["time_s"], s1["time_s"], s1["time_gain_s"]
            except Exception as e:  # noqa: BLE001 (timing is reported, never fatal)
                notes.append(f"end-to-end timing failed: {type(e).__name__}: {e}")
        pg = plan_json.get("predicted_gain", {})
        predicted_gain_s = pg.get("time") if measure else pg.get("tt", pg.get("time"))
        formats: dict[str, int] = {}
        for _u, a in plan_json.get("units", {}).items():
            k = a["weight"] if a["weight"] == a["activation"] else f"w={a['weight']},a={a['activation']}"
            formats[k] = formats.get(k, 0) + 1
        # --- 8. write outputs
        with stage("write"):
            files["amp"] = save_model(amp, tmp / f"{name}.amp.onnx")
            files["deploy"] = save_model(deploy, tmp / f"{name}.amp.deploy.onnx")
            files["plan"] = Plan.from_json(ann.get_json(model, ann.PLAN) or plan_json).save(tmp / "plan.json")
            if gaudi:
                gi = write_gaudi_config(tmp / f"{name}.gaudi_fp8.json", model,
                                        measure_path=tmp / f"{name}.gaudi_fp8_measure.json")
                files["gaudi"] = tmp / f"{name}.gaudi_fp8.json"
                files["gaudi_measure"] = tmp / f"{name}.gaudi_fp8_measure.json"
                notes += [f"gaudi: {n}" for n in gi.notes]
                if not any(f.startswith("fp8") for f in tgt.formats):
                    notes.append(f"gaudi config: target {tgt.name} has no FP8, so every module is in its blocklist; "
                                 "solve for gaudi2/gaudi3 to get an FP8 plan")
            results = {
                "model": name, "target": tgt.name, "strategy": sol.strategy, "metric": sol.metric, "tau": tau_used,
                "predicted_mse": sol.predicted_mse, "measured_mse": mse, "predicted_gain": sol.gain,
                "predicted_gain_s": predicted_gain_s, "time_ref_s": t_ref, "time_amp_s": t_amp,
                "measured_gain_s": gain_meas, "task": task, "pareto": pareto_pts,
                "stage_seconds": dict(stage_s), "notes": notes + list(rep.notes[:20]) if hasattr(rep, "notes") else notes,
                "files": {k: Path(v).name for k, v in files.items()},
                "bisection": [getattr(b, "__dict__", str(b)) for b in bisection] if bisection else None,
            }
            if report:
                from onnx_amp.tools.report import write_report

                write_report(tmp, model, results)
                files["report"] = tmp / "report.md"
        # --- move into place
        tmp = work_dir()
        final: dict[str, Path] = {}
        for p in sorted(tmp.iterdir()):
            dest = out_dir / p.name
            if dest.is_dir() and not p.is_dir():
                raise OnnxAmpError(f"{dest}: is a directory; cannot write output there")
        for p in sorted(tmp.iterdir()):
            dest = out_dir / p.name
            if p.is_dir():
                if dest.exists():
                    shutil.rmtree(dest)
            os.replace(p, dest)
        for k, v in files.items():
            final[k] = out_dir / Path(v).name
        failed = False
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        out.release(failed)
    plan_json = dict(plan_json, _formats=formats)
    stage_s["total"] = sum(stage_s.values())
    res = Result(name=name, output_dir=out_dir, files=final, plan=plan_json, target=tgt.name,
                 strategy=sol.strategy, metric=sol.metric, tau=tau_used, predicted_mse=sol.predicted_mse,
                 measured_mse=mse, predicted_gain_s=predicted_gain_s, time_ref_s=t_ref, time_amp_s=t_amp,
                 measured_gain_s=gain_meas, task=task, stage_seconds=stage_s, notes=notes, model=model)
    return res
