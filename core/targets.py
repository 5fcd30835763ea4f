"""Targets: what a plan is for, as editable JSON data files.

A target file (``runtime/targets/<name>.json``; copy one and edit it, then pass its path) lists

- ``formats``: the numeric formats the target runs (names of ``core.formats``),
- ``assignments``: the allowed (weight format, activation format) pairs; ``high`` is the
  high-precision default (one of them),
- ``lowering``: how each format is lowered in the emulation graph: ``qdq`` (QuantizeLinear /
  DequantizeLinear), ``cast`` (Cast pair) or ``none`` (the graph's own float type),
- ``peak_flops``: dense matrix throughput per format (FLOP/s), ``memory_bandwidth`` (B/s),
- ``boundary``: the cost of a format boundary (a Q/DQ or Cast): ``per_element_s`` and ``per_node_s``,
- ``measured_backend``: ``"ort_cpu"`` when ``onnx-amp profile --measure`` can time it here, else null.

Every number is an object ``{"value": <float>, "source": "<datasheet and the figure as printed>"}``;
a number that could not be sourced says so in its ``source`` text. ``load_target`` validates a
file and raises ``OnnxAmpError`` naming the file and the key that is wrong.

The ``cpu`` target's numbers are measured on this machine with::

    python -m onnx_amp.runtime.targets --measure-cpu   # prints a JSON fragment to paste

This module is the target *description* (data and validation, no runtime); the built-in files
stay in ``runtime/targets/`` beside the code that measures them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnx_amp.core.formats import FORMATS, get_format
from onnx_amp.core.errors import OnnxAmpError

TARGET_DIR = Path(__file__).resolve().parent.parent / "runtime" / "targets"
LOWERINGS = ("qdq", "cast", "none")
#: the backends a target can be timed on (``runtime.backends``); None: roofline only
BACKENDS = (None, "ort_cpu", "openvino_cpu", "torch_cuda")


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    formats: tuple[str, ...]
    high: tuple[str, str]
    assignments: tuple[tuple[str, str], ...]
    lowering: dict[str, str]
    peak_flops: dict[str, float]
    memory_bandwidth: float
    boundary_per_element_s: float
    boundary_per_node_s: float
    measured_backend: str | None = None
    sources: dict[str, str] = field(default_factory=dict)
    path: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # the validated file content

    def peak(self, fmt: str) -> float:
        """Dense matrix FLOP/s for compute in ``fmt``."""
        try:
            return self.peak_flops[fmt]
        except KeyError:
            raise OnnxAmpError(
                f"target {self.name}: no peak_flops for format {fmt!r} (has {', '.join(self.peak_flops)}); "
                "add it to the target file"
            ) from None

    def compute_format(self, assignment: tuple[str, str]) -> str:
        """The format a layer's math runs in: the wider of its two operand formats."""
        w, a = assignment
        return w if get_format(w).bits >= get_format(a).bits else a

    @property
    def low_assignments(self) -> list[tuple[str, str]]:
        """The allowed assignments other than the high-precision default."""
        return [a for a in self.assignments if a != self.high]

    @property
    def low_formats(self) -> list[str]:
        """The formats the low assignments use, FP32 aside: what the measured loss model covers."""
        return sorted({f for a in self.low_assignments for f in a if f != "fp32"})

    def to_json(self) -> dict[str, Any]:
        """The target file's content (numbers with their sources): ``target_from_dict`` reads it back."""
        return json.loads(json.dumps(self.raw))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "description": self.description, "formats": list(self.formats),
            "high": list(self.high), "assignments": [list(a) for a in self.assignments],
            "lowering": dict(self.lowering), "peak_flops": dict(self.peak_flops),
            "memory_bandwidth": self.memory_bandwidth,
            "boundary": {"per_element_s": self.boundary_per_element_s, "per_node_s": self.boundary_per_node_s},
            "measured_backend": self.measured_backend,
        }


def available_targets() -> list[str]:
    return sorted(p.stem for p in TARGET_DIR.glob("*.json"))


def _bad(msg: str) -> OnnxAmpError:
    """A target-file error, with what to do when the message does not say it."""
    if ";" not in msg:
        msg += "; edit the target file (runtime/targets/cpu.json shows every key)"
    return OnnxAmpError(msg)


def _number(where: str, entry: Any, key: str, *, allow_zero: bool = False) -> tuple[float, str]:
    if not isinstance(entry, dict) or "value" not in entry:
        raise _bad(f"{where}: {key} must be an object {{\"value\": <number>, \"source\": \"...\"}}")
    v = entry["value"]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _bad(f"{where}: {key}.value must be a number, got {v!r}")
    if not math.isfinite(v):
        raise _bad(f"{where}: {key}.value must be a finite number, got {v!r}; give the figure from its source")
    if v < 0 or (v == 0 and not allow_zero):
        raise _bad(f"{where}: {key}.value must be {'>= 0' if allow_zero else '> 0'}, got {v!r}")
    src = entry.get("source")
    if not isinstance(src, str) or not src.strip():
        raise _bad(f"{where}: {key}.source is missing; say where the number comes from (or that it could not be found)")
    return float(v), src


def _fmt(where: str, name: Any, key: str) -> str:
    if not isinstance(name, str):
        raise _bad(f"{where}: {key} must be a format name, got {name!r}")
    try:
        return get_format(name).name
    except ValueError:
        raise _bad(f"{where}: {key} names unknown format {name!r}; known: {', '.join(FORMATS)}") from None


def target_from_dict(data: Any, where: str = "<target>") -> Target:
    """Validate a parsed target file and build a ``Target`` (errors name ``where`` and the key)."""
    if not isinstance(data, dict):
        raise _bad(f"{where}: a target file must hold a JSON object")
    for key in ("name", "formats", "high", "assignments", "lowering", "peak_flops", "memory_bandwidth", "boundary"):
        if key not in data:
            raise _bad(f"{where}: missing key {key!r} (see runtime/targets/cpu.json for an example)")
    name = data["name"]
    if not isinstance(name, str) or not name:
        raise _bad(f"{where}: name must be a non-empty string")
    if not isinstance(data["formats"], list) or not data["formats"]:
        raise _bad(f"{where}: formats must be a non-empty list of format names")
    formats = tuple(_fmt(where, f, "formats[]") for f in data["formats"])

    def pair(p, key):
        if not isinstance(p, (list, tuple)) or len(p) != 2:
            raise _bad(f"{where}: {key} must be a [weight format, activation format] pair, got {p!r}")
        out = (_fmt(where, p[0], key), _fmt(where, p[1], key))
        for f in out:
            if f not in formats:
                raise _bad(f"{where}: {key} uses {f!r}, which is not in formats {list(formats)}")
        return out

    if not isinstance(data["assignments"], list) or not data["assignments"]:
        raise _bad(f"{where}: assignments must be a non-empty list of [weight, activation] pairs")
    assignments = tuple(pair(p, f"assignments[{i}]") for i, p in enumerate(data["assignments"]))
    if len(set(assignments)) != len(assignments):
        raise _bad(f"{where}: assignments lists a pair twice")
    high = pair(data["high"], "high")
    if high not in assignments:
        raise _bad(f"{where}: high {list(high)} must be one of the assignments")

    lowering = data["lowering"]
    if not isinstance(lowering, dict):
        raise _bad(f"{where}: lowering must map format -> one of {LOWERINGS}")
    low = {}
    for f in formats:
        m = lowering.get(f)
        if m not in LOWERINGS:
            raise _bad(f"{where}: lowering[{f!r}] must be one of {LOWERINGS}, got {m!r}")
        if m == "qdq" and not get_format(f).needs_qdq:
            raise _bad(f"{where}: lowering[{f!r}] = 'qdq' but {f} is lowered with Cast; use 'cast'")
        if get_format(f).needs_qdq and m != "qdq":
            raise _bad(f"{where}: lowering[{f!r}] must be 'qdq' ({f} needs QuantizeLinear/DequantizeLinear)")
        low[f] = m

    sources: dict[str, str] = {}
    peaks = data["peak_flops"]
    if not isinstance(peaks, dict):
        raise _bad(f"{where}: peak_flops must map format -> {{value, source}}")
    peak_flops = {}
    for f in formats:
        if f not in peaks:
            raise _bad(f"{where}: peak_flops has no entry for format {f!r}")
        peak_flops[f], sources[f"peak_flops.{f}"] = _number(where, peaks[f], f"peak_flops.{f}")
    bw, sources["memory_bandwidth"] = _number(where, data["memory_bandwidth"], "memory_bandwidth")
    b = data["boundary"]
    if not isinstance(b, dict):
        raise _bad(f"{where}: boundary must hold per_element_s and per_node_s")
    per_el, sources["boundary.per_element_s"] = _number(where, b.get("per_element_s"), "boundary.per_element_s", allow_zero=True)
    per_node, sources["boundary.per_node_s"] = _number(where, b.get("per_node_s"), "boundary.per_node_s", allow_zero=True)
    backend = data.get("measured_backend")
    if backend not in BACKENDS:
        raise _bad(f"{where}: measured_backend must be one of {BACKENDS}, got {backend!r}")
    return Target(
        name=name, description=str(data.get("description", "")), formats=formats, high=high,
        assignments=assignments, lowering=low, peak_flops=peak_flops, memory_bandwidth=bw,
        boundary_per_element_s=per_el, boundary_per_node_s=per_node, measured_backend=backend,
        sources=sources, path=where, raw=json.loads(json.dumps(data)),
    )


def load_target(name_or_path: str | os.PathLike | Target | dict) -> Target:
    """A built-in target by name (``cpu``, ``gaudi2``, ``gaudi3``, ``h100``, ``h200``, ...), a JSON file
    path, a ``Target``, or a target file's content as a dict (what ``onnx_amp.target`` stores)."""
    if isinstance(name_or_path, Target):
        return name_or_path
    if isinstance(name_or_path, dict):
        return target_from_dict(name_or_path, f"target {name_or_path.get('name', '?')!r}")
    s = str(name_or_path)
    p = Path(s)
    if s.endswith(".json") or os.sep in s or p.exists():
        if not p.is_file():
            raise OnnxAmpError(f"{p}: target file not found; give an existing .json file or a built-in target: "
                               f"{', '.join(available_targets())}")
    else:
        p = TARGET_DIR / f"{s.lower()}.json"
        if not p.is_file():
            raise OnnxAmpError(
                f"unknown target {s!r}; built-in targets: {', '.join(available_targets())} (or pass a .json file)"
            )
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise OnnxAmpError(f"{p}: not valid JSON (line {e.lineno}: {e.msg}); fix the file (runtime/targets/cpu.json "
                           "is an example)") from None
    return target_from_dict(data, str(p))


def target_of_model(model, name: str | None = None) -> Target | None:
    """The target an annotated model was profiled for (``onnx_amp.target``), when it carries one
    (and, if ``name`` is given, has that name)."""
    from onnx_amp.core import annotations as A

    data = A.get_json(model, A.TARGET)
    if not isinstance(data, dict) or (name is not None and data.get("name") != name):
        return None
    return target_from_dict(data, f"{model.graph.name or 'model'}: onnx_amp.target")


def resolve_target(target, model=None, default=None) -> Target:
    """``target`` (a name, path, ``Target`` or dict), or the target the model carries
    (``onnx_amp.target``) when ``target`` is None or names that one: a custom target file travels
    with the model, so ``solve``, ``rewrite`` and ``run`` work from the saved file alone.
    ``default``: the target when none is given and the model carries none."""
    if model is not None:
        carried = target_of_model(model)
        if carried is not None and (target is None or target == carried.name):
            return carried
    if target is None:
        if default is not None:
            return load_target(default)
        raise OnnxAmpError("no target given and the model carries none (onnx_amp.target); pass --target")
    return load_target(target)


def target_of_file(path) -> dict | None:
    """The target description an ONNX file carries (``onnx_amp.target``), read without its graph
    (``None`` when it carries none or cannot be read: the command's own loading reports a broken file)."""
    from onnx_amp.core.onnx_io import read_model_metadata

    text = read_model_metadata(path).get("onnx_amp.target")
    if text is None:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None
