"""Loading and saving ONNX models through onnx_ir, with clear errors and atomic writes.

- ``load_model`` keeps external data lazy (weights are memory-mapped, not read), and turns the
  usual failures (not ONNX, truncated, missing ``.onnx.data``) into ``OnnxAmpError`` naming the file.
- ``save_model`` writes ``<path>`` and ``<path>.data`` into a temporary folder beside the target and
  renames them into place, so a failure never leaves a partial output; it refuses to overwrite the
  file the model was loaded from (inputs are never modified in place).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import onnx_ir as ir

from onnx_amp.core.errors import OnnxAmpError


def load_model(path: str | os.PathLike) -> ir.Model:
    p = Path(path)
    if not p.exists():
        raise OnnxAmpError(f"{p}: no such file")
    if p.is_dir():
        raise OnnxAmpError(f"{p}: is a directory, expected an .onnx file")
    try:
        model = ir.load(p)
    except Exception as e:  # protobuf DecodeError, RuntimeError, ...
        raise OnnxAmpError(
            f"{p}: not a readable ONNX model ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'parse error'}); "
            "is the file complete and really ONNX?"
        ) from e
    if model.graph is None or (len(model.graph) == 0 and not model.graph.outputs):
        raise OnnxAmpError(f"{p}: not a readable ONNX model (empty graph); is the file complete and really ONNX?")
    check_external_data(model, p)
    return model


def check_external_data(model: ir.Model, path: Path) -> None:
    """Every external-data file an initializer points to must exist and be large enough."""
    sizes: dict[Path, int] = {}
    for value in model.graph.initializers.values():
        t = value.const_value
        if isinstance(t, ir.ExternalTensor):
            f = Path(t.base_dir) / t.location
            if f not in sizes:
                if not f.exists():
                    raise OnnxAmpError(
                        f"{path}: external data file {f} (for initializer {value.name!r}) is missing; "
                        "keep the .onnx and its .onnx.data together"
                    )
                sizes[f] = f.stat().st_size
            if t.offset is not None and t.length is not None and t.offset + t.length > sizes[f]:
                raise OnnxAmpError(
                    f"{path}: external data file {f} is truncated (initializer {value.name!r} needs bytes "
                    f"{t.offset}..{t.offset + t.length}, file has {sizes[f]})"
                )


def _source_files(model: ir.Model) -> set[Path]:
    files = set()
    for value in model.graph.initializers.values():
        t = value.const_value
        if isinstance(t, ir.ExternalTensor):
            files.add((Path(t.base_dir) / t.location).resolve())
    return files


def check_output_path(path: str | os.PathLike, what: str = "output") -> tuple[Path, Path]:
    """``(out, parent)`` for an output file, or ``OnnxAmpError`` when its folder is missing or not
    writable, or the path is a directory (callers with long work ahead check this first, so they
    fail before the work). ``what`` names the option in the message (``--plan``, ``--json``)."""
    out = Path(path)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise OnnxAmpError(f"{out}: {what} folder {parent} does not exist; create it or choose another path")
    if not os.access(parent, os.W_OK):
        raise OnnxAmpError(f"{out}: {what} folder {parent} is not writable; choose another path")
    if out.is_dir():
        raise OnnxAmpError(f"{out}: is a directory; give a file path")
    return out, parent


def save_json(path: str | os.PathLike, obj, indent: int = 1) -> Path:
    """Atomically write ``obj`` as JSON (temporary file beside ``path``, then rename; mode 0644),
    so a failure never leaves a partial file; failures become ``OnnxAmpError``."""
    out, parent = check_output_path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent)
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=indent)
            f.write("\n")
        os.replace(tmp, out)
    except Exception as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise OnnxAmpError(f"{out}: could not write ({type(e).__name__}: {e})") from e
    return out


def save_model(model: ir.Model, path: str | os.PathLike, external_data: bool = True) -> Path:
    """Atomically write ``model`` to ``path`` (weights to ``<name>.data`` beside it when external_data)."""
    out, parent = check_output_path(path)
    data_name = out.name + ".data"
    sources = _source_files(model)
    if out.resolve() in sources or (parent / data_name).resolve() in sources:
        raise OnnxAmpError(
            f"{out}: would overwrite the file the model's weights are read from; write to a new path"
        )
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    try:
        tmp_model = tmpdir / out.name
        if external_data:
            ir.save(model, tmp_model, external_data=data_name)
        else:
            ir.save(model, tmp_model)
        if (tmpdir / data_name).exists():
            os.replace(tmpdir / data_name, parent / data_name)
        elif (parent / data_name).exists() and external_data:
            os.remove(parent / data_name)  # stale weights of an older output would confuse readers
        os.replace(tmp_model, out)
    except OnnxAmpError:
        raise
    except Exception as e:
        raise OnnxAmpError(f"{out}: could not write the model ({type(e).__name__}: {e})") from e
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return out
