"""Loading and saving ONNX models through onnx_ir, with clear errors and atomic writes.

- ``load_model`` keeps external data lazy (weights are memory-mapped, not read), and turns the
  usual failures (not ONNX, truncated, missing ``.onnx.data``) into ``OnnxAmpError`` naming the file.
- ``save_model`` writes ``<path>`` and ``<path>.data`` into a temporary folder beside the target and
  renames them into place, so a failure never leaves a partial output; it refuses to overwrite the
  file the model was loaded from (inputs are never modified in place).
- :class:`Outputs`: the files one command writes, all or nothing. Each output is declared (and
  checked, and locked against a second writer) before the long work, staged into a temporary
  folder beside it, and renamed into place on :meth:`Outputs.commit`; if any rename fails, the
  ones already made are undone (earlier files at those paths restored). An interrupt or an error
  before the commit leaves nothing behind. ``save_model`` and ``save_json`` are one-file commits.

Locks: a writer holds ``.<name>.onnx-amp.lock`` beside each output (``O_EXCL``, holding its pid),
and respects the folder lock ``.onnx-amp.lock`` of an ``onnx-amp run`` writing into that folder; a
lock whose process is gone is taken over.
"""

from __future__ import annotations

import io
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
        raise OnnxAmpError(f"{p}: no such file; check the path")
    if p.is_dir():
        raise OnnxAmpError(f"{p}: is a directory; give the .onnx file itself")
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
                    f"{t.offset}..{t.offset + t.length}, file has {sizes[f]}); copy it again from where the model "
                    "was saved, or re-export the model"
                )


def _varint(f) -> int | None:
    shift = result = 0
    while True:
        b = f.read(1)
        if not b:
            return None
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError("bad varint")


def _fields(f, end: int):
    """(field number, wire type, bytes or value) of the protobuf message in ``f`` up to ``end``;
    length-delimited fields other than wanted ones are skipped by seeking (never read)."""
    while f.tell() < end:
        tag = _varint(f)
        if tag is None:
            return
        num, wire = tag >> 3, tag & 7
        if wire == 0:
            yield num, wire, _varint(f)
        elif wire == 1:
            f.seek(8, 1)
        elif wire == 5:
            f.seek(4, 1)
        elif wire == 2:
            n = _varint(f)
            if n is None:
                return
            yield num, wire, (f.tell(), n)
            f.seek(f.tell() + n)
        else:
            raise ValueError(f"wire type {wire}")


def read_model_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The model-level ``metadata_props`` of an ONNX file, read without parsing (or reading) its
    graph: the top-level protobuf fields are walked and the graph's bytes skipped. ``{}`` when the
    file is not readable as ONNX (the command's own loading then says why)."""
    out: dict[str, str] = {}
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            for num, wire, val in list(_fields(f, size)):
                if num != 14 or wire != 2:  # ModelProto.metadata_props
                    continue
                start, n = val
                f.seek(start)
                entry = f.read(n)
                key = value = None
                sub = io.BytesIO(entry)
                for k, w, v in list(_fields(sub, n)):
                    if w == 2:
                        sub.seek(v[0])
                        text = sub.read(v[1]).decode("utf-8", errors="replace")
                        if k == 1:
                            key = text
                        elif k == 2:
                            value = text
                if key is not None:
                    out[key] = value or ""
    except (OSError, ValueError):
        return {}
    return out


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
        raise OnnxAmpError(f"{out}: {what} is a directory; give a file path")
    return out, parent


FOLDER_LOCK = ".onnx-amp.lock"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_holder(lock: Path) -> int | None:
    """The live process holding ``lock`` (None: no lock, or its process is gone)."""
    try:
        pid = int(lock.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if _alive(pid) else None


_BUSY = ("{what}: another onnx-amp process (pid {pid}) is writing it; wait for it to finish or choose another path "
         "(remove {lock} if no such process exists)")


def take_lock(lock: Path, what: str, reentrant: bool = False, busy: str = _BUSY) -> Path | None:
    """Create ``lock`` holding this pid, or ``OnnxAmpError`` when a live process holds it (``busy``,
    formatted with ``what``, ``pid`` and ``lock``). A stale lock (its process gone) is taken over.
    ``reentrant``: a lock this process already holds is fine (returns None: its holder releases it)."""
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid = lock_holder(lock)
            if pid is not None and reentrant and pid == os.getpid():
                return None
            if pid is not None:
                raise OnnxAmpError(busy.format(what=what, pid=pid, lock=lock)) from None
            try:
                lock.unlink()  # stale: its process is gone
            except FileNotFoundError:
                pass
            continue
        except OSError as e:
            raise OnnxAmpError(f"{what}: cannot create the lock file {lock} ({e.strerror or e}); choose a writable "
                               "output folder") from None
        try:  # an interrupt between creating and filling the lock must not leave an empty one behind
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
        except BaseException:
            lock.unlink(missing_ok=True)
            raise
        return lock
    raise OnnxAmpError(f"{lock}: cannot take this lock file; remove it and retry")


def _data_name(out: Path) -> str:
    return out.name + ".data"


class Outputs:
    """The files of one command, written all or nothing (see the module docstring)::

        with Outputs() as outs:
            out = outs.add(args.output, "-o")          # checked and locked now, before the work
            js = outs.add(args.json, "--json")
            ...                                        # the long work
            outs.model(model, out); outs.json(obj, js)
            outs.commit()                              # every file appears, or none
    """

    def __init__(self, inputs=()):
        self.inputs = {Path(p).absolute() for p in inputs if p is not None}
        for p in list(self.inputs):
            self.inputs.add(p.with_name(p.name + ".data"))
        self._declared: dict[Path, str] = {}
        self._staged: dict[Path, Path] = {}  # destination -> staged file
        self._remove: set[Path] = set()  # destinations to delete on commit (stale .data)
        self._tmpdirs: dict[Path, Path] = {}
        self._locks: list[Path] = []
        self.committed = False

    # ---- declaring -------------------------------------------------------------------------
    def add(self, path, what: str = "output", model: bool = False) -> Path:
        """Declare an output (``model``: also its ``.data``); checks the folder, refuses an input
        or a path declared twice, and locks it."""
        out, parent = check_output_path(path, what)
        key = out.absolute()
        names = [key] + ([key.with_name(_data_name(key))] if model else [])
        for k in names:
            self._check_new(k, out, what)
        folder_lock = parent / FOLDER_LOCK
        pid = lock_holder(folder_lock) if folder_lock.exists() else None
        if pid is not None and pid != os.getpid():
            raise OnnxAmpError(f"{out}: an onnx-amp run (pid {pid}) is writing into {parent}; wait for it to finish or "
                               f"choose another folder (remove {folder_lock} if no such run exists)")
        lock = take_lock(parent / f".{out.name}.onnx-amp.lock", f"{out}", reentrant=True)
        if lock is not None:
            self._locks.append(lock)
        for k in names:
            self._declared[k] = what
        return out

    def _check_new(self, k: Path, out: Path, what: str) -> None:
        if k in self.inputs or (k.exists() and any(i.exists() and os.path.samefile(k, i) for i in self.inputs)):
            raise OnnxAmpError(f"{out}: {what} would overwrite an input file; write to a new path")
        if k in self._declared:
            raise OnnxAmpError(f"{out}: {what} is also given as {self._declared[k]}; give each output its own path")

    def _stage_dir(self, dest: Path) -> Path:
        parent = dest.parent
        if parent not in self._tmpdirs:
            try:
                self._tmpdirs[parent] = Path(tempfile.mkdtemp(prefix=".onnx-amp.", suffix=".tmp", dir=parent))
            except OSError as e:
                raise OnnxAmpError(f"{dest}: cannot write in {parent} ({e.strerror or e}); choose a writable folder") from None
        return self._tmpdirs[parent]

    def _dest(self, path) -> Path:
        dest = Path(path).absolute()
        if dest not in self._declared:
            self.add(path)
        return dest

    # ---- staging ---------------------------------------------------------------------------
    def path(self, path) -> Path:
        """A temporary path to write ``path``'s content to (a figure, say); it appears on commit."""
        dest = self._dest(path)
        tmp = self._stage_dir(dest) / dest.name
        self._staged[dest] = tmp
        return tmp

    def model(self, model: ir.Model, path, external_data: bool = True) -> Path:
        """Stage ``model`` for ``path`` (weights in ``<path>.data`` when ``external_data``)."""
        dest = self._dest(path)
        data = dest.with_name(_data_name(dest))
        if data not in self._declared:
            self._check_new(data, Path(path), self._declared[dest])
            self._declared[data] = self._declared[dest]
        sources = _source_files(model)
        if dest.resolve() in sources or data.resolve() in sources:
            raise OnnxAmpError(f"{Path(path)}: would overwrite the file the model's weights are read from; write to a new path")
        sub = Path(tempfile.mkdtemp(prefix="m.", dir=self._stage_dir(dest)))
        tmp = sub / dest.name
        try:
            if external_data:
                ir.save(model, tmp, external_data=data.name)
            else:
                ir.save(model, tmp)
        except OnnxAmpError:
            raise
        except Exception as e:
            raise OnnxAmpError(f"{Path(path)}: could not write the model ({type(e).__name__}: {e})") from e
        self._staged[dest] = tmp
        if (sub / data.name).exists():
            self._staged[data] = sub / data.name
            self._remove.discard(data)
        elif external_data and data.exists():
            self._remove.add(data)  # stale weights of an older output would confuse readers
        return dest

    def json(self, obj, path, indent: int = 1) -> Path:
        dest = self._dest(path)
        tmp = self._stage_dir(dest) / dest.name
        try:
            text = json.dumps(obj, indent=indent, allow_nan=False)
        except ValueError as e:
            raise OnnxAmpError(f"{Path(path)}: holds a NaN or infinite number, which JSON cannot represent ({e}); "
                               "please report this") from None
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text + "\n")
            os.chmod(tmp, 0o644)
        except OSError as e:
            raise OnnxAmpError(f"{Path(path)}: could not write ({e.strerror or e})") from None
        self._staged[dest] = tmp
        return dest

    # ---- committing ------------------------------------------------------------------------
    def commit(self) -> list[Path]:
        """Rename every staged file into place, all or nothing; returns the destinations."""
        done: list[Path] = []
        backups: list[tuple[Path, Path]] = []
        moves = sorted(self._staged.items(), key=lambda kv: not kv[0].name.endswith(".data"))  # data before models
        try:
            for i, (dest, _) in enumerate(moves + [(d, None) for d in sorted(self._remove)]):
                if dest.is_dir():
                    raise OnnxAmpError(f"{dest}: is a directory; give a file path")
                if dest.exists():
                    b = self._stage_dir(dest) / f".backup.{i}"
                    os.replace(dest, b)
                    backups.append((dest, b))
            for dest, tmp in moves:
                os.replace(tmp, dest)
                done.append(dest)
        except BaseException as e:
            for dest in done:
                try:
                    dest.unlink()
                except OSError:
                    pass
            for dest, b in backups:
                try:
                    os.replace(b, dest)
                except OSError:
                    pass
            if isinstance(e, (OnnxAmpError, KeyboardInterrupt)) or not isinstance(e, Exception):
                raise
            raise OnnxAmpError(f"{moves[len(done)][0] if len(done) < len(moves) else 'outputs'}: could not write "
                               f"({type(e).__name__}: {e})") from e
        self.committed = True
        return [d for d, _ in moves]

    def close(self) -> None:
        """Remove what was staged and not committed, and the locks."""
        for d in self._tmpdirs.values():
            shutil.rmtree(d, ignore_errors=True)
        self._tmpdirs.clear()
        for lock in self._locks:
            try:
                lock.unlink()
            except OSError:
                pass
        self._locks.clear()

    def __enter__(self) -> "Outputs":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def save_json(path: str | os.PathLike, obj, indent: int = 1) -> Path:
    """Atomically write ``obj`` as JSON (temporary file beside ``path``, then rename; mode 0644),
    so a failure never leaves a partial file; NaN/Infinity (not JSON) are refused; failures become
    ``OnnxAmpError``."""
    with Outputs() as outs:
        outs.json(obj, path, indent)
        outs.commit()
    return Path(path)


def save_model(model: ir.Model, path: str | os.PathLike, external_data: bool = True) -> Path:
    """Atomically write ``model`` to ``path`` (weights to ``<name>.data`` beside it when external_data)."""
    with Outputs() as outs:
        outs.model(model, path, external_data)
        outs.commit()
    return Path(path)
