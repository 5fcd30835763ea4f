"""Checks that run in the first seconds, before any long work: everything a run will need.

- :func:`check_solver`: the integer-program solver ``mip`` can really use (``passes.solver_backend``);
- :func:`check_backend`: ONNX Runtime's CPU provider runs each low format of the target as the
  rewrite lowers it, with the session options that format needs, and gets the defined result (a
  two-layer model through the real partition, plan and rewrite passes: about 0.1 s per format);
- :func:`check_output_dir`: the output folder (or the nearest existing folder it will be created
  in) really accepts a file (``os.access`` says yes to root everywhere, so a file is written);
- :func:`check_disk`: enough free space for the outputs;
- :class:`OutputDir`: creates the output folder only when asked, holds a lock file against a
  second run into the same folder, and on failure removes the folders it created.

Each raises ``OnnxAmpError`` with one line saying what failed and what to do; each returns the
notes worth showing (a solver fallback, say).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from onnx_amp.core.errors import OnnxAmpError
from onnx_amp.core.onnx_io import FOLDER_LOCK, lock_holder, take_lock

LOCK_NAME = FOLDER_LOCK


def check_solver(strategy: str, solver: str | None = None) -> list[str]:
    """The solver for ``strategy`` (only the ``ip`` strategies and the Pareto sweep need one)."""
    from onnx_amp.passes.solver_backend import select_solver

    choice = select_solver(solver)
    return [f"solver: {choice.note}"] if choice.note else []


def _tiny_model():
    """x[2,16] -> MatMul -> Relu -> MatMul -> y[2,4], partitioned, with calibration maxima."""
    import onnx_ir as ir
    from onnx import TensorProto, helper, numpy_helper

    from onnx_amp.core import annotations as A
    from onnx_amp.passes.partition import PartitionPass

    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((16, 32)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((32, 4)) * 0.3).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"], name="act"),
         helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")],
        "preflight", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    proto.ir_version = 10
    model = ir.from_proto(proto)
    PartitionPass()(model)
    x = rng.standard_normal((2, 16)).astype(np.float32)
    h = np.maximum(x @ w1, 0)
    for n in A.layer_nodes(model.graph):
        a = x if n.name == "fc1" else h
        n.metadata_props[A.AMAX_A] = repr(float(np.abs(a).max()))
        n.metadata_props[A.AMAX_Y] = repr(float(np.abs(a @ (w1 if n.name == "fc1" else w2)).max()))
    return model, x, h @ w2


def _format_error(target, fmt: str, who: str, exact, real, ref, what: str) -> None:
    scale = float(np.abs(ref).max()) or 1.0
    err_exact = float(np.abs(exact - ref).max()) / scale
    err_real = float(np.abs(real - exact).max()) / scale
    # a format's rounding moves this output by a few percent at most; a broken kernel by far more
    if not (np.isfinite(exact).all() and np.isfinite(real).all()) or err_exact > 0.25 or err_real > 0.25:
        raise OnnxAmpError(
            f"target {target.name}: {who} computes {fmt} wrongly as onnx-amp lowers it (relative error "
            f"{err_exact:.3g} unfused, {err_real:.3g} between {what}, on a two-layer test model); "
            "reinstall the tested versions with 'bash tools/install.sh'")


def _check_measured_backend(target, name: str) -> list[str]:
    """:func:`check_backend` on a ``runtime.backends`` backend other than ORT (``openvino_cpu``): its
    exact session (the Q/DQ math) and its real kernels, on the backend's lowering."""
    from onnx_amp.passes.plan import ApplyPlanPass, uniform_plan
    from onnx_amp.passes.rewrite import rewrite
    from onnx_amp.runtime.backends import get_backend

    be = get_backend(name)
    be.check()
    for fmt in target.low_formats:
        model, x, ref = _tiny_model()
        try:
            ApplyPlanPass(uniform_plan(model, fmt, fmt))(model)
            low, _ = rewrite(model, "emulate", **be.lowering)
            exact = be.session(low, exact=True).run({"x": x})["y"]
            real = be.session(low).run({"x": x})["y"]
        except OnnxAmpError as e:
            raise OnnxAmpError(f"target {target.name}: {be.description} cannot run {fmt} as onnx-amp lowers it "
                               f"({e}); reinstall the tested versions with 'bash tools/install.sh'") from None
        _format_error(target, fmt, be.description, exact, real, ref, "its kernels and the exact session")
    return []


def check_backend(target) -> list[str]:
    """The target's measured backend (``runtime.backends``; ONNX Runtime's CPU provider for targets
    measured elsewhere) runs every low format of ``target`` as the rewrite lowers it, and agrees
    with the Q/DQ math (exact session) to within that format's rounding."""
    from onnx_amp.runtime.backends import MEASURED_BACKENDS

    if target.measured_backend in MEASURED_BACKENDS and target.measured_backend != "ort_cpu":
        return _check_measured_backend(target, target.measured_backend)
    try:
        import onnxruntime as ort
    except Exception as e:  # noqa: BLE001
        raise OnnxAmpError(f"onnxruntime cannot be imported ({type(e).__name__}: {e}); "
                           "reinstall with 'bash tools/install.sh'") from None
    if "CPUExecutionProvider" not in ort.get_available_providers():
        raise OnnxAmpError(f"onnxruntime {ort.__version__} has no CPUExecutionProvider "
                           f"(providers: {ort.get_available_providers()}); install the CPU onnxruntime package")
    from onnx_amp.passes.plan import ApplyPlanPass, uniform_plan
    from onnx_amp.passes.rewrite import ORT_CPU_LOWERING, rewrite
    from onnx_amp.runtime.ort_session import make_session, run

    lowering = ORT_CPU_LOWERING if target.measured_backend == "ort_cpu" else {}
    for fmt in target.low_formats:
        model, x, ref = _tiny_model()
        try:
            ApplyPlanPass(uniform_plan(model, fmt, fmt))(model)
            low, _ = rewrite(model, "emulate", **lowering)
            exact = run(make_session(low, exact_qdq=True), {"x": x})["y"]
            fused = run(make_session(low), {"x": x})["y"]
        except OnnxAmpError as e:
            raise OnnxAmpError(f"target {target.name}: onnxruntime {ort.__version__} cannot run {fmt} as onnx-amp "
                               f"lowers it ({e}); reinstall the tested versions with 'bash tools/install.sh'") from None
        _format_error(target, fmt, f"onnxruntime {ort.__version__}", exact, fused, ref, "fused and unfused kernels")
    return []


TEXT_SUFFIXES = (".txt", ".text", ".md", ".cor", "")


def check_data_file(path: str | os.PathLike, flag: str = "--calibration_data") -> None:
    """A data file exists and opens as what its suffix says (its arrays are checked against the
    model's inputs once the model is loaded: ``runtime.data.load_calibration_data``)."""
    p = Path(path)
    if not p.exists():
        raise OnnxAmpError(f"{flag} {p}: no such file; check the path")
    if p.is_dir():
        raise OnnxAmpError(f"{flag} {p}: is a folder; give an .npz file (arrays keyed by input name) or a .txt file")
    if p.suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                keys = list(z.files)
        except Exception as e:  # noqa: BLE001
            raise OnnxAmpError(f"{flag} {p}: not a readable .npz file ({type(e).__name__}: {e}); save it with "
                               "np.savez(path, input_name=array) (numbers, no pickled objects)") from None
        if not keys:
            raise OnnxAmpError(f"{flag} {p}: the .npz holds no arrays; save one array per model input "
                               "(np.savez(path, input_ids=...))")
    elif p.suffix in TEXT_SUFFIXES:
        try:
            with open(p, "rb") as f:
                f.read(1)
        except OSError as e:
            raise OnnxAmpError(f"{flag} {p}: cannot read it ({e.strerror or e})") from None
    else:
        raise OnnxAmpError(f"{flag} {p}: unknown kind {p.suffix!r}; give an .npz keyed by input name or a .txt with --tokenizer")


def _existing_ancestor(path: Path) -> Path:
    p = path.absolute()
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    return p


def check_output_dir(out_dir: str | os.PathLike, flag: str = "output folder") -> Path:
    """The folder outputs go to accepts a file (it, or the nearest existing folder above it, when
    it does not exist yet). Nothing is created; returns that folder."""
    out = Path(out_dir)
    base = _existing_ancestor(out)
    if not base.is_dir():
        raise OnnxAmpError(f"{flag} {out}: {base} is a file, not a folder; choose another output folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".onnx-amp-probe.", dir=base)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise OnnxAmpError(f"{flag} {out}: cannot write in {base} ({e.strerror or e}); choose a writable output folder") from None
    return base


def model_bytes(model) -> int:
    """Bytes of the model's initializers (what each saved copy of it needs on disk, about)."""
    total = 0
    for v in model.graph.initializers.values():
        t = v.const_value
        if t is not None:
            try:
                total += int(t.nbytes)
            except Exception:  # noqa: BLE001 (a tensor without a known size counts nothing)
                pass
    return total


def check_disk(out_dir: str | os.PathLike, need_bytes: int, what: str = "the outputs") -> None:
    base = _existing_ancestor(Path(out_dir))
    free = shutil.disk_usage(base).free
    if free < need_bytes:
        raise OnnxAmpError(f"{base}: {free / 2**20:.0f} MiB free, {what} need about {need_bytes / 2**20:.0f} MiB; "
                           "free some space or choose another output folder")


class OutputDir:
    """The output folder of a run: created on :meth:`create` (not before the inputs are checked),
    locked against a second run writing into it, and removed again by :meth:`release` after a
    failure if this run created it and left it empty."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.created: list[Path] = []
        self.lock: Path | None = None

    def create(self) -> Path:
        missing = []
        p = self.path.absolute()
        while not p.exists():
            missing.append(p)
            p = p.parent
        self.created = list(reversed(missing))  # recorded first: an interrupt during mkdir still cleans up
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OnnxAmpError(f"{self.path}: cannot create the output folder ({e.strerror or e})") from None
        self._lock()
        return self.path

    def _lock(self) -> None:
        self.lock = take_lock(self.path / LOCK_NAME, f"{self.path}", busy=(
            "{what}: another onnx-amp run (pid {pid}) is writing into this folder; wait for it to finish or choose "
            "another output folder (remove {lock} if no such run exists)"))

    def release(self, failed: bool) -> None:
        lock = self.lock
        if lock is None and (self.path / LOCK_NAME).exists() and lock_holder(self.path / LOCK_NAME) == os.getpid():
            lock = self.path / LOCK_NAME  # taken, then interrupted before it was recorded
        if lock is not None:
            lock.unlink(missing_ok=True)
            self.lock = None
        if failed:
            for p in reversed(self.created):
                if not p.exists():
                    continue
                try:
                    p.rmdir()  # only when empty
                except OSError:
                    break
