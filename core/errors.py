"""Errors: the one user-facing exception, and one-line descriptions of everything else.

``OnnxAmpError`` is raised for anything the user can fix: its message says what went wrong,
where (file, node, tensor, option) and what to do. :func:`describe` turns any other exception
(a third-party library's, an ``OSError``, ``MemoryError``) into such a line, so the command line
never prints a traceback unless asked (``--debug``), and never labels a library's error as a
file-system problem.
"""

from __future__ import annotations

import traceback


class OnnxAmpError(Exception):
    """A user-facing error: one line saying what went wrong, where, and what to do."""


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    if not s:
        return type(e).__name__
    line = next((ln.strip() for ln in s.splitlines() if ln.strip()), s)
    return line if len(line) <= 300 else line[:297] + "..."


def _origin(e: BaseException) -> str:
    """``module:line`` of the innermost frame that raised ``e`` (for unexpected errors)."""
    tb = traceback.extract_tb(e.__traceback__) if e.__traceback__ is not None else []
    if not tb:
        return ""
    f = tb[-1]
    name = f.filename.replace("\\", "/")
    for marker in ("/site-packages/", "/onnx_amp/", "/main/"):
        if marker in name:
            name = name.split(marker, 1)[1]
            break
    return f" at {name}:{f.lineno}"


def describe(e: BaseException) -> tuple[str, bool]:
    """``(one-line message, expected)`` for any exception.

    ``expected`` is True for errors whose cause the message names (user input, files, memory, a
    library refusing a model); False for a bug or an unforeseen failure, whose message then says
    where it was raised and asks for ``--debug``."""
    inner: BaseException | None = e
    while inner is not None:  # PassManager wraps a pass's error in PassError ... from it
        if isinstance(inner, OnnxAmpError):
            return " ".join(str(inner).split()), True
        inner = inner.__cause__
    mod = type(e).__module__ or ""
    msg = " ".join(_first_line(e).split())
    if isinstance(e, MemoryError):
        return ("out of memory; use fewer or shorter calibration samples (--calibration_samples, --seq_len, "
                "--batch_size) or a machine with more memory"), True
    if mod.startswith("onnxruntime"):
        return (f"ONNX Runtime failed: {msg}; check that the model runs in onnxruntime on its own "
                "(python -c \"import onnxruntime as o; o.InferenceSession('M.onnx')\")"), True
    if mod.startswith("openvino"):
        return f"OpenVINO failed: {msg}", True
    if mod.startswith("mip") or mod.startswith("highspy"):
        return f"the integer-program solver failed: {msg}; try --solver CBC", True
    # an OSError is a file-system problem only when it names a file; libraries raise
    # FileNotFoundError for their own missing shared libraries (mip: "HiGHS not found")
    if isinstance(e, OSError) and getattr(e, "filename", None):
        what = e.strerror or msg
        return f"{e.filename}: {what}; check the path and its permissions", True
    if isinstance(e, OSError) and getattr(e, "errno", None) == 28:
        return f"no space left on the device ({msg}); free space or choose another output folder", True
    return (f"unexpected {type(e).__name__}: {msg}{_origin(e)}; rerun with --debug for the traceback "
            "and report it"), False
