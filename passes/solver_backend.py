"""Which integer-program solver ``mip`` can really use here: asked, not assumed.

``mip`` drives HiGHS (through the ``highspy`` package's shared library) or CBC (bundled with
``mip``). That ``import highspy`` succeeds says nothing about whether ``mip`` can load it:
highspy 1.16.0 imports fine, yet mip 2.0.0 cannot find HiGHS's C API in it. So each solver is
probed once per process by building and solving a two-variable model; :func:`select_solver`
returns the first usable one (HiGHS, then CBC) with a note when it had to fall back, and a
solver the user asked for by name is used or refused with the reason.

Both solvers solve the same model to the gap the caller sets (``passes.solve.solve_ip``), so the
plan does not depend on which one ran, beyond that gap.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass

from onnx_amp.core.errors import OnnxAmpError

log = logging.getLogger("onnx_amp.solve")

#: in order of preference
SOLVERS = ("HiGHS", "CBC")
_ALIASES = {"highs": "HiGHS", "cbc": "CBC"}
_probed: dict[str, str | None] = {}


@dataclass(frozen=True)
class SolverChoice:
    name: str
    note: str | None = None  # set when the preferred solver could not be used


def canonical_solver(name: str) -> str:
    key = str(name).strip().lower()
    if key not in _ALIASES:
        raise OnnxAmpError(f"unknown solver {name!r}; use one of {', '.join(SOLVERS)} (or leave it out to pick the first usable)")
    return _ALIASES[key]


@contextlib.contextmanager
def _quiet_mip():
    """mip logs (and prints) its library-loading failures on first use; the probe reports them itself."""
    lg = logging.getLogger("mip")
    level = lg.level
    lg.setLevel(logging.CRITICAL + 1)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        lg.setLevel(level)


def probe_solver(name: str) -> str | None:
    """``None`` when ``mip`` builds and solves a tiny model with solver ``name``, else why not."""
    name = canonical_solver(name)
    if name in _probed:
        return _probed[name]
    reason = None
    with _quiet_mip():
        try:
            import mip

            m = mip.Model(sense=mip.MAXIMIZE, solver_name=name)
            m.verbose = 0
            x = m.add_var(var_type=mip.BINARY, obj=2.0)
            y = m.add_var(var_type=mip.BINARY, obj=3.0)
            m.add_constr(x + y <= 1)
            status = m.optimize(max_seconds=20)
            if status != mip.OptimizationStatus.OPTIMAL or abs((m.objective_value or 0.0) - 3.0) > 1e-6:
                reason = f"it returned {status.name} with objective {m.objective_value} on a test model (expected 3)"
        except Exception as e:  # noqa: BLE001 (any failure means: not usable)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            reason = f"{type(e).__name__}: {first}"
    _probed[name] = reason
    return reason


def _versions() -> str:
    from importlib import metadata

    out = []
    for pkg in ("mip", "highspy"):
        try:
            out.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            out.append(f"{pkg} not installed")
    return ", ".join(out)


def select_solver(preferred: str | None = None) -> SolverChoice:
    """The solver to use: ``preferred`` if usable (else ``OnnxAmpError`` with the reason), or the
    first usable of :data:`SOLVERS`, with a note naming the ones that failed."""
    if preferred:
        name = canonical_solver(preferred)
        reason = probe_solver(name)
        if reason is not None:
            others = [s for s in SOLVERS if s != name]
            raise OnnxAmpError(
                f"solver {name} is not usable by mip here ({reason}; {_versions()}); use --solver "
                f"{others[0]} or reinstall with 'bash tools/install.sh' (its lock pins versions that work together)"
            )
        return SolverChoice(name)
    failed = []
    for name in SOLVERS:
        reason = probe_solver(name)
        if reason is None:
            note = None
            if failed:
                note = ("; ".join(f"{n} not usable ({r})" for n, r in failed)
                        + f"; solved with {name} ({_versions()})")
                log.info("integer program: %s", note)
            return SolverChoice(name, note)
        failed.append((name, reason))
    raise OnnxAmpError(
        "no integer-program solver is usable by mip: " + "; ".join(f"{n}: {r}" for n, r in failed)
        + f" ({_versions()}); reinstall with 'bash tools/install.sh' (its lock pins versions that work together)"
    )
