"""The stages of ``onnx_amp.optimize`` (``onnx-amp run``), one class each, run in sequence.

Each stage reads the :class:`~onnx_amp.runtime.pipeline.RunConfig` and the :class:`RunState` the
earlier stages filled, and adds to the state. The annotated ``ir.Model`` is the only hand-off that
matters between the graph stages (partition -> calibrate -> gains -> solve): a stage whose
annotations are already present is skipped, so any stage re-runs from a saved file.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from onnx_amp.core import annotations as ann
from onnx_amp.core.errors import OnnxAmpError
from onnx_amp.core.onnx_io import load_model, save_model
from onnx_amp.runtime import preflight


@dataclass
class RunState:
    """What the stages hand each other in memory."""

    config: Any  # RunConfig
    target: Any = None  # core.targets.Target
    name: str = ""
    subject: str | None = None
    src_path: Path | None = None
    out: preflight.OutputDir | None = None
    tmp: Path | None = None
    model: ir.Model | None = None
    cal: dict[str, np.ndarray] | None = None
    val: dict[str, np.ndarray] | None = None
    evaluator: Any = None
    problem: Any = None
    solution: Any = None
    tau: float | None = None
    bisection: list | None = None
    pareto: list[dict] = field(default_factory=list)
    amp: ir.Model | None = None
    deploy: ir.Model | None = None
    rewrite_report: Any = None
    measured_mse: float = float("nan")
    task: dict | None = None
    times: dict[str, float | None] = field(default_factory=lambda: {"ref": None, "amp": None, "gain": None})
    files: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def lowering(self) -> dict:
        """The rewrite options of the target's measured backend (what the profiler timed)."""
        backend = self.target.measured_backend
        if backend is None or backend == "torch_cuda":
            return {}
        from onnx_amp.runtime.backends import get_backend

        return get_backend(backend).lowering

    def work_dir(self) -> Path:
        """The hidden folder outputs are written to; creating it creates (and locks) the output folder."""
        if self.tmp is None:
            self.out.create()
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.name}.onnx-amp.", dir=self.out.path))
        return self.tmp

    def keep(self, key: str, suffix: str) -> None:
        """Save the model as it is now when intermediate files are kept."""
        if self.config.keep_intermediate:
            self.files[key] = save_model(self.model, self.work_dir() / f"{self.name}.{suffix}.onnx")


class Stage:
    name = ""

    def skip(self, st: RunState) -> bool:
        return False

    def run(self, st: RunState) -> None:
        raise NotImplementedError


class Preflight(Stage):
    """What the run will need, checked in seconds before the long work (``runtime.preflight``)."""

    name = "preflight"

    def run(self, st: RunState) -> None:
        c = st.config
        preflight.check_output_dir(st.out.path, "output folder")
        from onnx_amp.passes.strategies import get_strategy

        if get_strategy(c.strategy).uses_solver or c.pareto:
            st.notes += preflight.check_solver(c.strategy, c.solver)
        preflight.check_backend(st.target)
        for flag, d in (("--calibration_data", c.calibration_data), ("--validation_data", c.validation_data)):
            if isinstance(d, (str, os.PathLike)):
                preflight.check_data_file(d, flag)
        preflight.check_disk(st.out.path, 64 * 2**20)


class LoadOrExport(Stage):
    name = "load/export"

    def run(self, st: RunState) -> None:
        c = st.config
        if isinstance(c.source, ir.Model):
            st.model = c.source
        elif st.subject:
            from onnx_amp.runtime.export import ensure_subject_onnx

            st.model = load_model(ensure_subject_onnx(st.subject, verbose=c.verbose))
        elif st.src_path is not None and st.src_path.suffix == ".onnx":
            st.model = load_model(st.src_path)
        else:
            from onnx_amp.runtime.export import export_model

            exported = export_model(str(c.source), st.work_dir() / f"{st.name}.exported.onnx", verbose=c.verbose)
            st.model = load_model(exported)
            if c.keep_intermediate:
                st.files["exported"] = exported


def _n_samples(block: dict[str, np.ndarray]) -> int:
    return len(next(iter(block.values())))


def batches(block: dict[str, np.ndarray], bs: int) -> list[dict[str, np.ndarray]]:
    n = _n_samples(block)
    return [{k: v[i:i + bs] for k, v in block.items()} for i in range(0, n, bs)]


def _concat_data(cd) -> dict[str, np.ndarray]:
    """CalibrationData -> one dict of arrays (all blocks must share shapes)."""
    keys = cd.blocks[0].keys()
    try:
        return {k: np.concatenate([np.asarray(b[k]) for b in cd.blocks], axis=0) for k in keys}
    except ValueError as e:
        raise OnnxAmpError(f"calibration data {cd.source}: samples of different shapes cannot be split into "
                           f"calibration and held-out sets ({e}); pass validation_data explicitly") from None


class Data(Stage):
    """Calibration and held-out samples, checked against the model's inputs; then the output folder."""

    name = "data"

    def run(self, st: RunState) -> None:
        c = st.config
        if c.calibration_data is None:
            st.cal, st.val = self._subject_data(st)
        else:
            st.cal, st.val = self._user_data(st)
        if c.calibration_samples:
            st.cal = {k: v[:c.calibration_samples] for k, v in st.cal.items()}
        if c.verbose:
            print(f"[onnx-amp] {_n_samples(st.cal)} calibration samples, {_n_samples(st.val)} held-out samples",
                  flush=True)
        # the outputs: the emulate and deploy models (plus each stage's model when kept), figures
        need = (2 + 4 * c.keep_intermediate) * preflight.model_bytes(st.model) + 64 * 2**20
        preflight.check_disk(st.out.path, need)
        st.work_dir()

    @staticmethod
    def _subject_data(st: RunState):
        from onnx_amp.runtime import subjects as S

        c = st.config
        s = S.get_subject(st.subject) if st.subject else None
        if s is None or s.batch is None:
            raise OnnxAmpError(f"{c.source}: give calibration_data (.npz keyed by input name, .txt with a "
                               "tokenizer, or an iterable of input dicts)")
        n_cal = c.calibration_samples or s.defaults.get("calibration_samples", 16)
        n_val = c.validation_samples or s.defaults.get("validation_samples", 16)
        kw = {"seq_len": c.seq_len} if "seq_len" in s.defaults.get("batch_kwargs", ()) else {}
        return (S.subject_batch(st.subject, n_cal, "calib", seed=c.seed, **kw),
                S.subject_batch(st.subject, n_val, "eval", seed=c.seed, **kw))

    @staticmethod
    def _user_data(st: RunState):
        from onnx_amp.runtime.data import load_calibration_data

        c = st.config
        allc = _concat_data(load_calibration_data(c.calibration_data, st.model, tokenizer=c.tokenizer,
                                                  seq_len=c.seq_len))
        if c.validation_data is not None:
            val = _concat_data(load_calibration_data(c.validation_data, st.model, tokenizer=c.tokenizer,
                                                     seq_len=c.seq_len, flag="--validation_data"))
            return allc, val
        n = _n_samples(allc)
        n_val = c.validation_samples or max(1, min(16, n // 4))
        if n - n_val < 1:
            raise OnnxAmpError(f"calibration data has {n} sample(s): need at least 2 (calibration + held-out), "
                               "or pass validation_data")
        return {k: v[:n - n_val] for k, v in allc.items()}, {k: v[n - n_val:] for k, v in allc.items()}


class Partition(Stage):
    name = "partition"

    def skip(self, st: RunState) -> bool:
        return bool(ann.layer_nodes(st.model.graph))

    def run(self, st: RunState) -> None:
        from onnx_amp.passes.modules import AnnotateModulesPass
        from onnx_amp.passes.partition import PartitionPass

        m = st.model
        if not any(ann.MODULE in n.metadata_props for n in m.graph) and any(
                ann.TORCH_NAME_SCOPES in n.metadata_props for n in m.graph):
            AnnotateModulesPass()(m)
        PartitionPass()(m)
        st.keep("partitioned", "partitioned")


class Calibrate(Stage):
    name = "calibrate"

    def skip(self, st: RunState) -> bool:
        return any(ann.SENS_A in n.metadata_props for n in ann.layer_nodes(st.model.graph))

    def run(self, st: RunState) -> None:
        from onnx_amp.passes.sensitivity import AnnotateSensitivityPass
        from onnx_amp.runtime.calibrate import calibrate, measure_format_errors

        c, m = st.config, st.model
        res = calibrate(m, st.cal, loss=c.loss, batch_size=c.batch_size, tokenizer=c.tokenizer,
                        seq_len=c.seq_len, progress=c.progress)
        if c.loss_model == "measured" and st.target.low_formats:
            # the "actual error" loss model: each operand's real rounding error at the rewrite's
            # scales, for the target's low formats (R^2 0.90-0.95 vs 0.79-0.86 for the ideal model)
            measure_format_errors(m, st.cal, res, st.target.low_formats, batch_size=c.batch_size,
                                  loss=c.loss, progress=c.progress)
        AnnotateSensitivityPass(res)(m)
        if res.unmatched:
            st.notes.append(f"{len(res.unmatched)} layer(s) got no calibration figures: "
                            + ", ".join(u["layer"] for u in res.unmatched[:10]))
        st.keep("calibrated", "calibrated")


class Gains(Stage):
    name = "profile/gains"

    def run(self, st: RunState) -> None:
        from onnx_amp.passes.gains import GainsPass

        c, m = st.config, st.model
        first = {k: v[:1] for k, v in st.val.items()}
        p_seq = c.profile_seq_len or next((v.shape[1] for v in st.val.values() if v.ndim >= 2), c.seq_len)
        if c.measure:
            from onnx_amp.runtime.profile import profile_model

            feeds = {i.name: first[i.name] for i in m.graph.inputs if i.name in first}
            pres = profile_model(m, st.target, feeds=feeds if len(feeds) == len(m.graph.inputs) else None,
                                 batch_size=1, seq_len=p_seq, repeats=c.profile_repeats, max_configs=c.max_configs,
                                 progress=c.progress, seed=c.seed)
            if c.verbose:
                print(f"[onnx-amp] measured: {pres.summary()}", flush=True)
            GainsPass(st.target, pres.measured, 1, p_seq, c.max_configs)(m)
        else:
            # roofline at a serving batch: at batch 1 the target's per-boundary cost makes every
            # low-precision configuration of a small model a loss (nothing would be lowered)
            GainsPass(st.target, None, c.roofline_batch, p_seq, c.max_configs)(m)
        st.keep("gains", "gains")


class Solve(Stage):
    name = "solve"

    def run(self, st: RunState) -> None:
        from onnx_amp.passes.plan import ApplyPlanPass
        from onnx_amp.passes.problem import problem_from_model
        from onnx_amp.passes.search import bisect_tau, relative_tau
        from onnx_amp.passes.solve import plan_object
        from onnx_amp.passes.strategies import get_strategy, solve

        c, m = st.config, st.model
        st.problem = problem = problem_from_model(m)
        kw: dict = {"solver_name": c.solver, "seed": c.seed}
        if c.accuracy_drop is not None or get_strategy(c.strategy).measures:
            # real evaluations on the held-out samples: the accuracy bound's bisection, and the
            # measured unit sensitivities (pareto-greedy) / pair terms (ip-pairs)
            from onnx_amp.runtime.evaluate import PlanEvaluator

            st.evaluator = PlanEvaluator(m, batches(st.val, c.batch_size), c.loss, st.target)
            kw.update(st.evaluator.strategy_kwargs(problem, c.strategy))
        if c.accuracy_drop is not None:
            ref = st.evaluator.reference_metric
            st.solution, st.bisection = bisect_tau(
                problem, lambda plan: st.evaluator.evaluate(plan["units"])["metric"]["after"], c.accuracy_drop,
                relative=True, higher_is_better=ref["higher_is_better"], baseline=ref["before"],
                strategy=c.strategy, metric=c.metric, **kw)
            st.tau = st.solution.tau
        else:
            st.tau = c.tau if c.tau is not None else relative_tau(problem, c.tau_relative)
            st.solution = solve(problem, st.tau, c.strategy, c.metric, **kw)
        sol = st.solution
        st.notes += [f"solver: {n}" for n in sol.notes]
        ApplyPlanPass(plan_object(sol), target=st.target)(m)
        if not sol.feasible:
            st.notes.append(f"no plan meets tau={st.tau:.4g}; smallest feasible {problem.min_mse():.4g}")
        if c.pareto:
            self._pareto(st)
        if c.verbose:
            print(f"[onnx-amp] plan: {len(sol.plan.get('units', {}))} unit(s) lowered, predicted loss MSE "
                  f"{sol.predicted_mse:.4g} (tau {st.tau:.4g})", flush=True)
        st.keep("planned", "planned")

    @staticmethod
    def _pareto(st: RunState) -> None:
        from onnx_amp.passes.search import pareto_sweep

        try:
            pts = pareto_sweep(st.problem, ("ip", "greedy", "prefix", "random"), st.solution.metric, n=15,
                               solver_name=st.config.solver, seed=st.config.seed)
            st.pareto = [{"strategy": p.strategy, "tau": p.tau, "gain": p.gain, "predicted_mse": p.predicted_mse}
                         for p in pts if p.feasible]
        except OnnxAmpError as e:  # a sweep is a nicety; the plan stands
            st.notes.append(f"Pareto sweep skipped: {e}")


class Rewrite(Stage):
    name = "rewrite"

    def run(self, st: RunState) -> None:
        from onnx_amp.passes.rewrite import check_model, rewrite

        st.amp, st.rewrite_report = rewrite(st.model, "emulate", **st.lowering)
        st.deploy, _ = rewrite(st.model, "deploy")
        for m, form in ((st.amp, "emulate"), (st.deploy, "deploy")):
            try:
                check_model(m, full_check=False)
            except Exception as e:  # noqa: BLE001
                raise OnnxAmpError(f"{st.name}: rewritten {form} model fails onnx.checker "
                                   f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from e


class Validate(Stage):
    """Measured loss MSE and task metric on the held-out samples, and end-to-end time."""

    name = "validate"

    def run(self, st: RunState) -> None:
        from onnx_amp.runtime.evaluate import evaluate_models

        c = st.config
        if st.evaluator is not None:  # the bisection already ran the reference on these samples
            st.measured_mse, st.task = st.evaluator.reference.compare(st.amp)
        else:
            st.measured_mse, st.task = evaluate_models(st.model, st.amp, batches(st.val, c.batch_size), c.loss)
        try:
            from onnx_amp.runtime.profile import time_model

            first = {k: v[:1] for k, v in st.val.items()}
            feeds = {i.name: first[i.name] for i in st.model.graph.inputs if i.name in first}
            tm = time_model([st.model, st.amp], feeds, repeats=max(5, c.profile_repeats))
            s1 = tm.summary(1)
            st.times = {"ref": tm.summary(0)["time_s"], "amp": s1["time_s"], "gain": s1["time_gain_s"]}
        except Exception as e:  # noqa: BLE001 (timing is reported, never fatal)
            st.notes.append(f"end-to-end timing failed: {type(e).__name__}: {e}")


class Write(Stage):
    """The outputs, into the hidden folder (moved into place by the runner when every stage passed)."""

    name = "write"

    def run(self, st: RunState) -> None:
        from onnx_amp.passes.plan import Plan

        c, tmp = st.config, st.work_dir()
        st.files["amp"] = save_model(st.amp, tmp / f"{st.name}.amp.onnx")
        st.files["deploy"] = save_model(st.deploy, tmp / f"{st.name}.amp.deploy.onnx")
        st.files["plan"] = Plan.from_json(ann.get_json(st.model, ann.PLAN) or st.solution.plan).save(tmp / "plan.json")
        if c.gaudi:
            self._gaudi(st, tmp)
        if c.report:
            from onnx_amp.runtime.report import write_report

            write_report(tmp, st.model, results(st))
            st.files["report"] = tmp / "report.md"

    @staticmethod
    def _gaudi(st: RunState, tmp: Path) -> None:
        from onnx_amp.runtime.gaudi import write_gaudi_config

        gi = write_gaudi_config(tmp / f"{st.name}.gaudi_fp8.json", st.model,
                                measure_path=tmp / f"{st.name}.gaudi_fp8_measure.json")
        st.files["gaudi"] = tmp / f"{st.name}.gaudi_fp8.json"
        st.files["gaudi_measure"] = tmp / f"{st.name}.gaudi_fp8_measure.json"
        st.notes += [f"gaudi: {n}" for n in gi.notes]
        if not any(f.startswith("fp8") for f in st.target.formats):
            st.notes.append(f"gaudi config: target {st.target.name} has no FP8, so every module is in its "
                            "blocklist; solve for gaudi2/gaudi3 to get an FP8 plan")


def predicted_gain_s(st: RunState) -> float | None:
    pg = st.solution.plan.get("predicted_gain", {})
    return pg.get("time") if st.config.measure else pg.get("tt", pg.get("time"))


def results(st: RunState) -> dict:
    """The run's figures as the report and ``results`` read them."""
    sol = st.solution
    notes = list(dict.fromkeys(st.notes + list(getattr(st.rewrite_report, "notes", [])[:20])))
    return {
        "model": st.name, "target": st.target.name, "strategy": sol.strategy, "metric": sol.metric, "tau": st.tau,
        "predicted_mse": sol.predicted_mse, "measured_mse": st.measured_mse, "predicted_gain": sol.gain,
        "predicted_gain_s": predicted_gain_s(st), "time_ref_s": st.times["ref"], "time_amp_s": st.times["amp"],
        "measured_gain_s": st.times["gain"], "task": st.task, "pareto": st.pareto,
        "stage_seconds": dict(st.seconds), "notes": notes,
        "files": {k: Path(v).name for k, v in st.files.items()},
        "bisection": [getattr(b, "__dict__", str(b)) for b in st.bisection] if st.bisection else None,
    }


#: the stages of a run, in order
STAGES: list[Stage] = [Preflight(), LoadOrExport(), Data(), Partition(), Calibrate(), Gains(), Solve(), Rewrite(),
                       Validate(), Write()]
