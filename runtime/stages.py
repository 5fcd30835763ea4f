"""The stages of ``onnx_amp.optimize`` (``onnx-amp run``), one class each, run in sequence.

Each stage reads the :class:`~onnx_amp.runtime.pipeline.RunConfig` and the :class:`RunState` the
earlier stages filled, and adds to the state. The annotated ``ir.Model`` is the only hand-off that
matters between the graph stages (partition -> calibrate -> gains -> solve): a stage whose
annotations are already present is skipped, so any stage re-runs from a saved file.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx_ir as ir

from onnx_amp.core import annotations as ann
from onnx_amp.core.errors import OnnxAmpError
from onnx_amp.core.onnx_io import load_model, save_model
from onnx_amp.runtime import preflight
from onnx_amp.runtime.run_state import MainOnly, RunState, Stage
from onnx_amp.runtime.stage_data import Data, _n_samples, batches

__all__ = ["STAGES", "RunState", "Stage", "batches", "predicted_gain_s", "results"]


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
    """The model, in the form every stage expects (``runtime.normalize``: opset 21, typed values,
    float32 compute; its notes join the run's), checked to be runnable."""

    name = "load/export"

    def run(self, st: RunState) -> None:
        from onnx_amp.runtime.normalize import check_runnable, normalize_model

        c = st.config
        source = st.src_path or st.subject or st.name
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
        st.notes += normalize_model(st.model, source)
        check_runnable(st.model, source)


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
        from onnx_amp.runtime.calibrate import calibrate
        from onnx_amp.runtime.format_errors import measure_format_errors
        from onnx_amp.runtime.data import check_calibration

        from onnx_amp.runtime import distributed as D

        c, m = st.config, st.model
        cal = self._shard(st)  # under torchrun: this rank's samples; the figures are combined below
        res = D.everywhere(lambda: calibrate(m, cal, loss=c.loss, batch_size=c.batch_size, tokenizer=c.tokenizer,
                                             seq_len=c.seq_len, output_name=c.loss_output, progress=c.progress))
        res = D.reduce_calibration(res)
        st.loss = res.spec
        # all-zero losses or sensitivities would make every plan look free: stop unless forced
        where = str(c.calibration_data) if isinstance(c.calibration_data, (str, os.PathLike)) else "calibration data"
        st.notes += check_calibration(res, where, getattr(c, "force", False))
        if c.loss_model in ("measured", "shift") and st.target.low_formats:
            # a second pass for the target's low formats: each operand's actual rounding error at the
            # rewrite's scales, and the INT8 output Q of the target's lowering ("measured"), plus
            # each one's second-order mean loss change ("shift"; passes.lossmodel), with the loss
            # the first pass resolved
            # (after the first reduction: the rounding uses the maxima of all samples)
            D.everywhere(lambda: measure_format_errors(
                m, cal, res, st.target.low_formats, batch_size=c.batch_size, loss=res.spec or c.loss,
                progress=c.progress, int8_output_q=st.lowering.get("int8_output_q", False),
                shift=c.loss_model == "shift", seed=c.seed))
            res = D.reduce_calibration(res, samples=_n_samples(cal))
        AnnotateSensitivityPass(res)(m)
        if res.unmatched:
            st.notes.append(f"{len(res.unmatched)} layer(s) got no calibration figures: "
                            + ", ".join(u["layer"] for u in res.unmatched[:10]))
        st.keep("calibrated", "calibrated")

    @staticmethod
    def _shard(st: RunState) -> dict:
        from onnx_amp.runtime import distributed as D

        part = D.my_samples(_n_samples(st.cal))
        return {k: v[part] for k, v in st.cal.items()}


def ensure_ranges(st: RunState) -> None:
    """The ranges of the tensors between layers (``runtime.ranges``) that a lowering with
    ``int8_chains`` needs, recorded once over the calibration samples (before timing regions, and
    before the rewrite of a model calibrated earlier)."""
    from onnx_amp.passes.int8_chains import AMAX_OUT

    if not st.lowering.get("int8_chains") or any(AMAX_OUT in n.metadata_props for n in st.model.graph):
        return
    from onnx_amp.runtime.ranges import record_ranges

    record_ranges(st.model, batches(st.cal, st.config.batch_size))


class Gains(Stage):
    name = "profile/gains"

    def run(self, st: RunState) -> None:
        from onnx_amp.passes.gains import GainsPass

        ensure_ranges(st)

        c, m = st.config, st.model
        first = {k: v[:1] for k, v in st.val.items()}
        p_seq = c.profile_seq_len or next((v.shape[1] for v in st.val.values() if v.ndim >= 2), c.seq_len)
        if c.measure:
            from onnx_amp.runtime import distributed as D
            from onnx_amp.runtime.profile import profile_model

            def measure() -> dict:
                feeds = {i.name: first[i.name] for i in m.graph.inputs if i.name in first}
                pres = profile_model(m, st.target, feeds=feeds if len(feeds) == len(m.graph.inputs) else None,
                                     batch_size=1, seq_len=p_seq, repeats=c.profile_repeats, max_configs=c.max_configs,
                                     progress=c.progress, seed=c.seed)
                if c.verbose:
                    print(f"[onnx-amp] measured: {pres.summary()}", flush=True)
                if pres.backend != "ort_cpu" and len(feeds) == len(m.graph.inputs):
                    self._scale(st, pres, feeds)
                return pres.measured

            # timings differ from process to process: under torchrun one process times, all use its figures
            GainsPass(st.target, D.on_main(measure), 1, p_seq, c.max_configs)(m)
        else:
            # roofline at a serving batch: at batch 1 the target's per-boundary cost makes every
            # low-precision configuration of a small model a loss (nothing would be lowered)
            GainsPass(st.target, None, c.roofline_batch, p_seq, c.max_configs)(m)
        st.keep("gains", "gains")

    @staticmethod
    def _scale(st: RunState, pres, feeds: dict) -> None:
        """Region gains scaled to each format's end-to-end gain on the backend (``runtime.gain_scaling``:
        OpenVINO fuses INT8 across region boundaries, so region sums miss part of its gain)."""
        from onnx_amp.runtime.gain_scaling import format_gain_factors, scale_gains

        f = format_gain_factors(st.model, st.target, pres.measured, feeds, pres.backend, st.lowering,
                                repeats=max(5, st.config.profile_repeats), seed=st.config.seed)
        scale_gains(pres.measured, f, st.target)
        st.notes.append(f"region gains scaled to each format's end-to-end gain on {pres.backend}: " + "; ".join(
            f"{k} {v['e2e_gain_s'] * 1e3:.3f} ms end to end / {v['region_sum_s'] * 1e3:.3f} ms region sum -> "
            f"x{v['factor']:.2f}" for k, v in f.items()))
        if st.config.verbose:
            print(f"[onnx-amp] {st.notes[-1]}", flush=True)


class Solve(Stage):
    name = "solve"

    def run(self, st: RunState) -> None:
        from onnx_amp.passes.plan import ApplyPlanPass
        from onnx_amp.passes.problem import problem_from_model
        from onnx_amp.passes.search import relative_tau
        from onnx_amp.passes.solve import plan_object
        from onnx_amp.passes.strategies import get_strategy, solve

        c, m = st.config, st.model
        st.problem = problem = problem_from_model(m)
        kw: dict = {"solver_name": c.solver, "seed": c.seed}
        if c.accuracy_drop is not None or get_strategy(c.strategy).measures:
            # real evaluations on the held-out samples: the accuracy bound's bisection, and the
            # measured unit sensitivities (pareto-greedy) / pair terms (ip-pairs)
            from onnx_amp.runtime.evaluate import PlanEvaluator

            st.evaluator = PlanEvaluator(m, batches(st.val, c.batch_size), st.loss_spec(), st.target)
            kw.update(st.evaluator.strategy_kwargs(problem, c.strategy))
        if c.accuracy_drop is not None:
            st.solution, st.bisection = self._meet_bound(st, problem, kw)
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
    def _meet_bound(st: RunState, problem, kw: dict):
        """The accuracy bound. Under the ``shift`` loss model, for a task metric the loss model
        predicts (``runtime.metric_model``): the plan predicted to meet it, verified by a real
        evaluation and corrected at most twice (``passes.search.solve_to_bound``, at most 3
        evaluations). Otherwise the bisection over tau (about a dozen evaluations)."""
        from onnx_amp.passes.lossmodel import layer_stats_from_model, loss_model_of
        from onnx_amp.passes.search import bisect_tau, solve_to_bound
        from onnx_amp.passes.strategies import get_strategy
        from onnx_amp.runtime.metric_model import drop_predictor

        c, ev = st.config, st.evaluator
        ref = ev.reference_metric

        seen = [0]

        def evaluate(plan: dict) -> float:  # each real evaluation announced: the search is never silent
            after = ev.evaluate(plan["units"])["metric"]["after"]
            seen[0] += 1
            if c.verbose:
                print(f"[onnx-amp]   accuracy bound, evaluation {seen[0]}: {len(plan['units'])} unit(s) lowered, "
                      f"{ev.metric_name} {ref['before']:.4g} -> {after:.4g} (allowed drop {c.accuracy_drop:.2%})",
                      flush=True)
            return after

        common = {"relative": True, "higher_is_better": ref["higher_is_better"], "baseline": ref["before"],
                  "strategy": c.strategy, "metric": c.metric, **kw}
        predict = None
        if get_strategy(c.strategy).uses_tau and loss_model_of(layer_stats_from_model(st.model)) == "shift":
            predict = drop_predictor(ev.reference, ref)
        if predict is not None:
            return solve_to_bound(problem, evaluate, c.accuracy_drop, predict, **common)
        st.notes.append("accuracy bound: bisection over tau (the loss model predicts no task metric here; "
                        "loss_model='shift' and a perplexity, accuracy or cosine metric avoid it)")
        return bisect_tau(problem, evaluate, c.accuracy_drop, **common)

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


class Rewrite(MainOnly):
    name = "rewrite"

    def run(self, st: RunState) -> None:
        from onnx_amp.passes.rewrite import check_model, rewrite

        if (st.evaluator is not None and st.config.accuracy_drop is not None and st.config.measure
                and st.target.measured_backend not in (None, "torch_cuda")):
            # the plan against the uniform formats, end to end (runtime.uniform_guard)
            from onnx_amp.runtime.uniform_guard import uniform_guard

            from onnx_amp.passes.strategies import get_strategy
            from onnx_amp.runtime.timing import DEFAULT_BACKEND, backend_of
            from onnx_amp.runtime.verify import verify_bound

            notes = [uniform_guard(st)]
            if backend_of(st.target) != DEFAULT_BACKEND and not get_strategy(st.config.strategy).measures:
                notes.append(verify_bound(st))  # the search ran exact sessions: the real kernels decide
            for note in filter(None, notes):
                st.notes.append(note)
                if st.config.verbose:
                    print(f"[onnx-amp] {note}", flush=True)
        ensure_ranges(st)
        st.amp, st.rewrite_report = rewrite(st.model, "emulate", **st.lowering)
        st.deploy, _ = rewrite(st.model, "deploy")
        for m, form in ((st.amp, "emulate"), (st.deploy, "deploy")):
            try:
                check_model(m, full_check=False)
            except Exception as e:  # noqa: BLE001
                raise OnnxAmpError(f"{st.name}: rewritten {form} model fails onnx.checker "
                                   f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from e


class Validate(MainOnly):
    """Measured loss MSE and task metric on the held-out samples, what the runtime really executed,
    and end-to-end time, all on the target's runtime (``runtime.timing.backend_of``): ORT exactly as
    always (exact Q/DQ sessions); another backend (OpenVINO) with its real kernels."""

    name = "validate"

    def run(self, st: RunState) -> None:
        from onnx_amp.runtime.evaluate import _Reference, evaluate_models
        from onnx_amp.runtime.timing import DEFAULT_BACKEND, backend_of

        c = st.config
        st.measured_on = backend = backend_of(st.target)
        if backend != DEFAULT_BACKEND:  # the final figures from the kernels the model ships to
            if st.evaluator is not None:
                st.evaluator.reference.session = None  # the bisection's last session: memory back first
            ref = st.real_reference or _Reference(st.model, batches(st.val, c.batch_size), st.loss_spec(), backend,
                                                  exact=False)
            st.measured_mse, st.task = ref.compare(st.amp)
            self._precision(st, backend, ref.session)
        elif st.evaluator is not None:  # the bisection already ran the reference on these samples
            st.measured_mse, st.task = st.evaluator.reference.compare(st.amp)
        else:
            st.measured_mse, st.task = evaluate_models(st.model, st.amp, batches(st.val, c.batch_size), st.loss_spec())
        if backend == DEFAULT_BACKEND and st.target.measured_backend == DEFAULT_BACKEND:
            try:  # which INT8 layers ORT fused into integer kernels (its optimized graph; a check, never fatal)
                from onnx_amp.runtime.backends import get_backend

                st.precision_check = get_backend(backend).fused_int8(st.model, st.amp)
            except Exception as e:  # noqa: BLE001
                st.notes.append(f"ORT fused-kernel check skipped: {type(e).__name__}: {e}")
        try:
            from onnx_amp.runtime.timing import time_model

            first = {k: v[:1] for k, v in st.val.items()}
            feeds = {i.name: first[i.name] for i in st.model.graph.inputs if i.name in first}
            tm = time_model([st.model, st.amp], feeds, repeats=max(5, c.profile_repeats), backend=backend)
            s1 = tm.summary(1)
            st.times = {"ref": tm.summary(0)["time_s"], "amp": s1["time_s"], "gain": s1["time_gain_s"]}
        except Exception as e:  # noqa: BLE001 (timing is reported, never fatal)
            st.notes.append(f"end-to-end timing failed: {type(e).__name__}: {e}")

    @staticmethod
    def _precision(st: RunState, backend: str, session) -> None:
        """The executed-precision check of the shipped model (mismatches go into the summary and report)."""
        from onnx_amp.runtime.backends import get_backend

        st.precision_check = get_backend(backend).plan_check(st.model, session)
        mm = (st.precision_check or {}).get("mismatches") or []
        if mm:
            st.notes.append(f"{len(mm)} layer(s) did not run at their planned precision on {backend}: "
                            + "; ".join(st.precision_check["text"].splitlines()[:5]))


class Write(MainOnly):
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
        "backend": {"ort_cpu": "ORT", "openvino_cpu": "OpenVINO"}.get(st.measured_on, st.measured_on or "ORT"),
        "precision_check": {k: v for k, v in st.precision_check.items() if k != "text"} if st.precision_check else None,
        "files": {k: Path(v).name for k, v in st.files.items()},
        "bisection": [getattr(b, "__dict__", str(b)) for b in st.bisection] if st.bisection else None,
    }


#: the stages of a run, in order
STAGES: list[Stage] = [Preflight(), LoadOrExport(), Data(), Partition(), Calibrate(), Gains(), Solve(), Rewrite(),
                       Validate(), Write()]
