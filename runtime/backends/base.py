"""The backend interface: what profiling, evaluation and validation need from a runtime.

A :class:`Backend` turns an ONNX model (an ``ir.Model`` or a path) into a :class:`Session` that
runs it on its device, says which numeric formats that device executes (from the device's own
capabilities where it reports them), which options of the rewrite pass
(``passes.rewrite.rewrite(model, "emulate", **backend.lowering)``) produce the graph form it
executes at the planned precision, and, where the runtime can tell, the precision each layer
really ran at.
"""

from __future__ import annotations

import abc
import os
from typing import Any, Callable, Protocol

import numpy as np
import onnx_ir as ir


class Session(Protocol):
    """A loaded model, ready to run."""

    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, Any], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Outputs by name for ``feeds`` (extra keys such as ``labels`` are ignored)."""
        ...

    def runner(self, feeds: dict[str, Any]) -> Callable[[], Any]:
        """For timing: a call that runs the model once on ``feeds`` (converted once, outputs not copied)."""
        ...


class Backend(abc.ABC):
    """One runtime on one device (see the module doc)."""

    #: registry key; a target's ``measured_backend`` names it
    name: str = ""
    description: str = ""

    @abc.abstractmethod
    def check(self) -> None:
        """Raise ``OnnxAmpError`` (one line: what is missing and what to do) when unusable here."""

    @abc.abstractmethod
    def formats(self) -> tuple[str, ...]:
        """The formats (``core.formats`` names) this device executes at that precision."""

    @property
    def lowering(self) -> dict[str, Any]:
        """Keyword options of ``passes.rewrite.rewrite`` giving the graph form this backend executes
        at the planned precision (the profiler times it, the pipeline ships it)."""
        return {}

    @abc.abstractmethod
    def session(self, model: ir.Model | str | os.PathLike, *, exact: bool = False, threads: int | None = None,
                timing: bool = False) -> Session:
        """A session for ``model``. ``exact``: the Q/DQ math as ONNX defines it, for accuracy
        measurements (no fused kernels that round differently); ``timing``: options for timing
        many sessions interleaved (no thread-pool spinning); ``threads``: intra-op threads."""

    def executed_precisions(self, session: Session) -> dict[str, str]:
        """Layer node name -> the precision it really ran at (``fp32``, ``bf16``, ``int8``, ...), as
        far as the runtime can tell; empty when it cannot."""
        return {}

    def plan_check(self, model_planned: ir.Model, session: Session) -> dict[str, Any] | None:
        """What ``session`` (the shipped model, compiled) really executed against the plan of
        ``model_planned`` (``onnx_amp.precision`` on its layers): ``{"backend", "layers",
        "executed" ({precision: layers}), "mismatches" ([{...}]), "text"}``; None when the runtime
        cannot tell."""
        return None
