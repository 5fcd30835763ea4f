"""What the stages of ``onnx_amp.optimize`` hand each other (:class:`RunState`), and their base class."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from onnx_amp.core.onnx_io import save_model
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
    loss: Any = None  # the LossSpec calibration resolved: every later stage measures with it
    evaluator: Any = None
    real_reference: Any = None  # the reference on the backend's real kernels (runtime.verify), reused by validate
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
    measured_on: str | None = None  # the runtime that measured the shipped model (runtime.backends name)
    precision_check: dict | None = None  # what that runtime really executed vs the plan (Backend.plan_check)
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

        return dict(get_backend(backend).lowering)

    def loss_spec(self) -> Any:
        """The loss calibration used (``runtime.losses.LossSpec``); for a model calibrated earlier
        (a saved file), the one its calibration summary names, unless the run names its own."""
        if self.loss is None:
            from onnx_amp.runtime.losses import calibrated_loss

            self.loss = calibrated_loss(self.model, self.config.loss, self.config.loss_output)
        return self.loss

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


class MainOnly(Stage):
    """A stage that runs in one process only: under ``torchrun`` every process holds the same plan
    after the solve, and rank 0 lowers, validates and writes it (``runtime.distributed``)."""

    def skip(self, st: RunState) -> bool:
        from onnx_amp.runtime import distributed as D

        return not D.is_main()
