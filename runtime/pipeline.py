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

import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import onnx_ir as ir

from onnx_amp.core.errors import OnnxAmpError
from onnx_amp.runtime.backends import MEASURED_BACKENDS as _BACKENDS_HERE
from onnx_amp.runtime.stages import STAGES, RunState, predicted_gain_s

# With no bound given, the plan must keep the task metric within 1 % of the original, found by
# bisection over tau with real evaluations (Schaefer's and AIMET's way of meeting a user bound).
DEFAULT_ACCURACY_DROP = 0.01


@dataclass
class RunConfig:
    """Everything ``optimize`` takes besides the source (see its docstring); :meth:`validate` checks
    every number and name before any work."""

    source: Any = None
    calibration_data: Any = None
    validation_data: Any = None
    target: Any = "cpu"
    strategy: str = "ip"
    metric: str = "time"
    tau: float | None = None
    tau_relative: float | None = None
    accuracy_drop: float | None = None
    output_dir: str | os.PathLike | None = None
    name: str | None = None
    keep_intermediate: bool = False
    tokenizer: Any = None
    seq_len: int = 128
    calibration_samples: int | None = None
    validation_samples: int | None = None
    batch_size: int = 8
    loss: Any = None
    loss_output: str | None = None  # the graph output the loss reads (default: detected)
    loss_model: str = "measured"
    measure: bool | None = None
    profile_seq_len: int | None = None
    profile_repeats: int = 10
    roofline_batch: int = 64
    max_configs: int = 64
    pareto: bool = True
    gaudi: bool = True
    report: bool = True
    progress: bool = True
    verbose: bool = True
    solver: str | None = None
    seed: int = 0
    force: bool = False  # go on when calibration gives all-zero losses or sensitivities

    def validate(self) -> None:
        given = [x is not None for x in (self.tau, self.tau_relative, self.accuracy_drop)]
        if sum(given) > 1:
            raise OnnxAmpError("give at most one of tau, tau_relative, accuracy_drop")
        if not any(given):
            self.accuracy_drop = DEFAULT_ACCURACY_DROP
        for nm, v in (("tau", self.tau), ("tau_relative", self.tau_relative), ("accuracy_drop", self.accuracy_drop)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= 0 and math.isfinite(v))):
                raise OnnxAmpError(f"{nm}={v}: must be a finite number >= 0")
        if self.tau_relative is not None and not self.tau_relative > 0:
            raise OnnxAmpError(f"tau_relative={self.tau_relative}: must be > 0 (a fraction of the all-low plan's MSE)")
        for nm in ("batch_size", "seq_len", "profile_repeats", "roofline_batch", "max_configs"):
            v = getattr(self, nm)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise OnnxAmpError(f"{nm}={v}: must be a whole number >= 1")
        for nm in ("calibration_samples", "validation_samples", "profile_seq_len"):
            v = getattr(self, nm)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise OnnxAmpError(f"{nm}={v}: must be a whole number >= 1")
        from onnx_amp.passes.lossmodel import LOSS_MODELS

        if self.loss_model not in LOSS_MODELS:
            raise OnnxAmpError(f"unknown loss_model {self.loss_model!r}; use 'shift' (actual rounding error plus the "
                               "mean loss shift), 'measured' (actual rounding error) or 'ideal' (alpha)")
        from onnx_amp.passes.problem import normalize_metric
        from onnx_amp.passes.solver_backend import canonical_solver
        from onnx_amp.passes.strategies import get_strategy

        self.strategy = get_strategy(self.strategy).name
        self.metric = normalize_metric(self.metric)
        if self.solver is not None:
            self.solver = canonical_solver(self.solver)


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
    #: the runtime that measured loss MSE, task metric and time (``runtime.backends`` name)
    backend: str = "ort_cpu"
    #: what that runtime really executed vs the plan (``Backend.plan_check``; None where it cannot tell)
    precision_check: dict[str, Any] | None = None

    def summary(self) -> str:
        def ms(x):
            return "n/a" if x is None else f"{x * 1e3:.3f} ms"

        who = BACKEND_LABELS.get(self.backend, self.backend)
        lowered = len(self.plan.get("units", {}))
        lines = [
            f"onnx-amp {self.name}: target {self.target}, strategy {self.strategy}, metric {self.metric}, tau {self.tau:.4g}",
            f"  plan: {lowered} unit(s) lowered; units per format: {self.plan.get('_formats', {})}",
            f"  loss MSE   predicted {self.predicted_mse:.4g}   measured {self.measured_mse:.4g} ({who}, held-out)",
            f"  time gain  predicted {ms(self.predicted_gain_s)}   measured {ms(self.measured_gain_s)} "
            f"(high {ms(self.time_ref_s)} -> plan {ms(self.time_amp_s)}, {_FORM.get(self.backend, 'emulate form on ' + who)})",
        ]
        if self.time_ref_s and self.time_amp_s:
            lines[-1] += f"; {self.time_ref_s / self.time_amp_s:.2f}x"
        if self.task:
            lines.append(f"  {self.task['name']}: {self.task['before']:.4g} -> {self.task['after']:.4g} (measured on {who})")
        pc = self.precision_check
        if pc is not None:
            mm = pc.get("mismatches") or []
            lines.append(f"  executed precision ({who} {pc.get('source', 'runtime graph')}): {len(mm)} of "
                         f"{pc.get('int8_planned', pc.get('layers'))} planned layer(s) not as planned; layers ran as "
                         f"{pc.get('executed', {})}")
            lines += [f"    {m['layer']} {m['node']}: planned {m['planned']}, expected {m['expected']}, ran "
                      f"{m['executed']} ({m['kind']})" for m in mm[:10]]
        lines.append("  stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.stage_seconds.items()))
        lines.append(f"  outputs in {self.output_dir}: " + ", ".join(sorted(p.name for p in self.files.values())))
        return "\n".join(lines)


#: backends that time region configurations on this machine (``measure``)
MEASURED_BACKENDS = _BACKENDS_HERE
#: how the summary names a backend, and the form of the model it timed
BACKEND_LABELS = {"ort_cpu": "ORT", "openvino_cpu": "OpenVINO"}
_FORM = {"ort_cpu": "emulate form on ORT CPU", "openvino_cpu": "the shipped model on OpenVINO's CPU plugin, 1 thread"}


def _output_name(st: RunState, src_model: ir.Model | None) -> str:
    """The stem of every output: the subject, the graph's name, or the input's name without its
    suffix (``model.gguf`` -> ``model``, so outputs are ``model.amp.onnx``)."""
    if st.subject:
        return st.subject
    if src_model is not None:
        return src_model.graph.name or "model"
    if st.src_path.is_file():
        return st.src_path.stem
    return st.src_path.name.replace(":", "_")


def _prepare(c: RunConfig) -> RunState:
    """Target, names and the output folder (not created yet) from the configuration."""
    from onnx_amp.core.targets import resolve_target
    from onnx_amp.runtime import subjects
    from onnx_amp.runtime.preflight import OutputDir

    src_model = c.source if isinstance(c.source, ir.Model) else None
    st = RunState(config=c, target=resolve_target(c.target, src_model))
    if c.measure is None:
        c.measure = st.target.measured_backend in MEASURED_BACKENDS
    elif c.measure and st.target.measured_backend not in MEASURED_BACKENDS:
        raise OnnxAmpError(f"target {st.target.name} cannot be timed on this machine; use measure=False (roofline)")
    st.subject = subjects.canonical(c.source) if subjects.is_subject(c.source) and not Path(c.source).exists() else None
    st.src_path = None if src_model is not None or st.subject else Path(c.source)
    if st.src_path is not None and not st.src_path.exists() and ":" not in str(c.source):
        raise OnnxAmpError(f"{st.src_path}: no such file or folder (give an .onnx file, a Hugging Face folder, "
                           f"a .gguf file, module:function, or a subject: {', '.join(subjects._REGISTRY)})")
    st.name = c.name or _output_name(st, src_model)
    out = c.output_dir
    if out is None:
        if st.src_path is not None and st.src_path.is_file():
            out = st.src_path.parent
        elif st.src_path is not None and st.src_path.is_dir():
            out = st.src_path.parent / f"{st.src_path.name}.amp"
        else:
            out = Path.cwd() / f"{st.name}.amp"
    st.out = OutputDir(out)
    return st


def _move_into_place(st: RunState) -> dict[str, Path]:
    tmp, out_dir = st.work_dir(), st.out.path
    for p in sorted(tmp.iterdir()):
        if (out_dir / p.name).is_dir() and not p.is_dir():
            raise OnnxAmpError(f"{out_dir / p.name}: is a directory; cannot write output there")
    for p in sorted(tmp.iterdir()):
        dest = out_dir / p.name
        if p.is_dir() and dest.exists():
            shutil.rmtree(dest)
        os.replace(p, dest)
    return {k: out_dir / Path(v).name for k, v in st.files.items()}


def run_stages(st: RunState, stages=STAGES) -> dict[str, Path]:
    """Run ``stages`` in sequence (timed, each announced when verbose); on success the outputs
    move from the hidden folder into the output folder; on failure nothing is left behind."""
    c, failed = st.config, True
    try:
        for stage in stages:
            if stage.skip(st):
                continue
            t0 = time.perf_counter()
            if c.verbose:
                print(f"[onnx-amp] {stage.name} ...", flush=True)
            stage.run(st)
            st.seconds[stage.name] = time.perf_counter() - t0
            if c.verbose:
                print(f"[onnx-amp] {stage.name} done in {st.seconds[stage.name]:.1f} s", flush=True)
        final = _move_into_place(st)
        failed = False
        return final
    finally:
        if st.tmp is not None:
            shutil.rmtree(st.tmp, ignore_errors=True)
        st.out.release(failed)


def optimize(source: str | os.PathLike | ir.Model, **kwargs) -> Result:
    """Run the whole pipeline; return a :class:`Result` (outputs are on disk when it returns).

    ``source``: an ``.onnx`` file, an in-memory ``ir.Model`` (e.g. ``torch.onnx.export(...,
    dynamo=True).model``), a subject name (``smollm2``, ``minilm-sentiment``, ``effnet-lite0``,
    ``paraphrase``), a Hugging Face folder, a GGUF file or ``module:function`` (exported with the
    dynamo exporter). Keyword arguments are the fields of :class:`RunConfig`:

    ``calibration_data``: anything ``runtime.data.load_calibration_data`` takes (``.npz``, ``.txt`` +
    ``tokenizer``, dict of arrays, iterable of input dicts, ORT ``CalibrationDataReader``); for
    subjects it defaults to the subject's real data. Held-out samples come from ``validation_data``
    or, when absent, from the end of the calibration data (``validation_samples``, default a
    quarter, at most 16). The bound: ``tau`` (predicted loss MSE), ``tau_relative`` (fraction of the
    all-low plan's predicted MSE) or ``accuracy_drop`` (allowed relative worsening of the task
    metric, e.g. 0.01 = 1 %, found by bisection over tau with real evaluations; the default,
    ``DEFAULT_ACCURACY_DROP``, when none is given). ``target``: a built-in name, a target ``.json``
    or the target the model carries. ``loss_model``: ``"measured"`` (default; each operand's actual
    rounding error at the rewrite's scales) or ``"ideal"`` (``alpha_f * S``). ``measure``: time region
    configurations on the target's backend (default: when it runs here), else roofline at
    ``roofline_batch``. ``solver``: ``HiGHS`` or ``CBC`` (default: the first usable). ``seed``: every
    randomized step (data sampling, the random strategy, profiling order).
    """
    unknown = set(kwargs) - {f.name for f in fields(RunConfig)}
    if unknown:
        raise OnnxAmpError(f"optimize() got unknown option(s) {', '.join(sorted(unknown))}")
    c = RunConfig(source=source, **kwargs)
    c.validate()
    from onnx_amp.runtime import distributed as D

    D.init_from_env()  # under torchrun: join the group (calibration and plan evaluations spread over it)
    if not D.is_main():  # the others write nothing where the user looks, and print nothing
        c.output_dir, c.progress, c.verbose, c.report, c.gaudi, c.keep_intermediate = (
            tempfile.mkdtemp(prefix="onnx-amp-rank-"), False, False, False, False, False)
    try:
        st = _prepare(c)
        final = run_stages(st)
    finally:
        if not D.is_main():
            shutil.rmtree(c.output_dir, ignore_errors=True)
    if not D.is_main():
        sol = st.solution  # the plan rank 0 writes; measured figures only there
        return Result(name=st.name, output_dir=None, files={}, plan=dict(sol.plan), target=st.target.name,
                      strategy=sol.strategy, metric=sol.metric, tau=st.tau, predicted_mse=sol.predicted_mse,
                      measured_mse=float("nan"), predicted_gain_s=predicted_gain_s(st), time_ref_s=None,
                      time_amp_s=None, measured_gain_s=None, task=None, model=st.model)
    sol = st.solution
    formats: dict[str, int] = {}
    for a in sol.plan.get("units", {}).values():
        k = a["weight"] if a["weight"] == a["activation"] else f"w={a['weight']},a={a['activation']}"
        formats[k] = formats.get(k, 0) + 1
    st.seconds["total"] = sum(st.seconds.values())
    return Result(name=st.name, output_dir=st.out.path, files=final, plan=dict(sol.plan, _formats=formats),
                  target=st.target.name, strategy=sol.strategy, metric=sol.metric, tau=st.tau,
                  predicted_mse=sol.predicted_mse, measured_mse=st.measured_mse, predicted_gain_s=predicted_gain_s(st),
                  time_ref_s=st.times["ref"], time_amp_s=st.times["amp"], measured_gain_s=st.times["gain"],
                  task=st.task, stage_seconds=st.seconds, notes=list(dict.fromkeys(st.notes)), model=st.model,
                  backend=st.measured_on or "ort_cpu", precision_check=st.precision_check)
