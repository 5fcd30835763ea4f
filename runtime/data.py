"""Calibration data in the forms users already have, validated against the model's inputs.

Accepted by :func:`load_calibration_data`:

- a ``.npz`` file (or a dict of arrays) keyed by ONNX input name, leading axis = samples
  (ModelOpt's convention); an extra key ``labels`` is allowed;
- a text file (``.txt``) plus a tokenizer (a ``tokenizer.json`` file, or a folder that
  ``transformers.AutoTokenizer`` loads): the text is tokenized once and cut into windows of
  ``seq_len`` tokens (language models; ``attention_mask``/``position_ids`` inputs are filled);
- any iterable of input dicts (one sample without the batch axis, or a batch with it);
- an ONNX Runtime ``CalibrationDataReader`` (anything with ``get_next()`` returning dicts, then None).

The result is a :class:`CalibrationData`: a list of samples/blocks of equal-shape arrays that
:meth:`CalibrationData.batches` groups into batches. Every array is checked against the model's
inputs (names, rank, dtype kind, static dims); a mismatch raises ``OnnxAmpError`` naming the
tensor and the expected form. Degenerate values are refused up front too: no samples, NaN or Inf
in a float input, token ids outside the embedding table an integer input indexes (negative, or
>= its rows). A model whose batch dimension is static (an export at batch 1, say) gets its data
re-batched: every batch has exactly that many samples (``info["static_batch"]``, the remainder
dropped with a note in ``info["notes"]``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import onnx_ir as ir

from onnx_amp.core.errors import OnnxAmpError

EXTRA_KEYS = ("labels",)

_NP_KIND = {
    ir.DataType.FLOAT: np.float32, ir.DataType.DOUBLE: np.float64, ir.DataType.FLOAT16: np.float16,
    ir.DataType.INT64: np.int64, ir.DataType.INT32: np.int32, ir.DataType.INT8: np.int8,
    ir.DataType.UINT8: np.uint8, ir.DataType.BOOL: np.bool_, ir.DataType.INT16: np.int16,
}


@dataclass
class InputSpec:
    name: str
    dtype: ir.DataType | None
    shape: list | None  # ints for static dims, str/None for dynamic; None: the model gives no shape (any rank)
    vocab: int | None = None  # rows of the embedding table this integer input indexes (Gather), when known
    vocab_node: str | None = None

    def describe(self) -> str:
        if self.shape is None:
            return f"{self.name}: {self.dtype.name if self.dtype is not None else '?'}[any shape]"
        dims = ",".join(str(d) if isinstance(d, int) else (d or "?") for d in self.shape)
        return f"{self.name}: {self.dtype.name if self.dtype is not None else '?'}[{dims}]"

    @property
    def static_batch(self) -> int | None:
        return self.shape[0] if self.shape and isinstance(self.shape[0], int) else None


#: ops an index tensor passes through unchanged on its way to an embedding Gather
_INDEX_VIEW_OPS = ("Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity")


def _embedding_rows(value: ir.Value, depth: int = 4) -> tuple[int, str] | None:
    """(rows, node name) of the constant table a ``Gather`` indexes with ``value`` (axis 0)."""
    for node, idx in value.uses():
        if node.op_type == "Gather" and idx == 1 and node.attributes.get_int("axis", 0) == 0:
            table = node.inputs[0]
            t = table.const_value if table is not None else None
            if t is not None and len(t.shape) >= 1 and isinstance(t.shape[0], int):
                return int(t.shape[0]), node.name or "?"
        elif node.op_type in _INDEX_VIEW_OPS and idx == 0 and depth > 0 and node.outputs:
            r = _embedding_rows(node.outputs[0], depth - 1)
            if r is not None:
                return r
    return None


def input_specs(model: ir.Model) -> list[InputSpec]:
    inits = set(model.graph.initializers)
    out = []
    for v in model.graph.inputs:
        if v.name in inits:
            continue
        # exporters write a dynamic dimension as a name, as nothing, or (paddle2onnx) as -1 or 0
        shape = None if v.shape is None else [d if isinstance(d, int) and d > 0 else
                                              (str(d) if d is not None and not isinstance(d, int) else None)
                                              for d in v.shape]
        spec = InputSpec(v.name, v.dtype, shape)
        if v.dtype is not None and not v.dtype.is_floating_point() and v.dtype != ir.DataType.BOOL:
            rows = _embedding_rows(v)
            if rows is not None:
                spec.vocab, spec.vocab_node = rows
        out.append(spec)
    return out


def _expected(specs: list[InputSpec]) -> str:
    return "; ".join(s.describe() for s in specs)


@dataclass
class CalibrationData:
    """Validated calibration data: blocks of arrays with a leading sample axis."""

    blocks: list[dict[str, np.ndarray]]
    source: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return sum(_block_len(b) for b in self.blocks)

    def batches(self, batch_size: int, max_samples: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Batches of at most ``batch_size`` samples (blocks of different shapes never mix); of
        exactly ``info["static_batch"]`` samples when the model's batch dimension is static."""
        if batch_size < 1:
            raise OnnxAmpError(f"--batch_size {batch_size}: must be >= 1")
        d = self.info.get("static_batch")
        if d:
            batch_size = d
            if max_samples is not None:
                max_samples = max(d, max_samples - max_samples % d)
        left = max_samples if max_samples is not None else self.num_samples
        pending: list[dict[str, np.ndarray]] = []
        pend_n = 0

        def flush():
            nonlocal pending, pend_n
            if not pending:
                return None
            keys = pending[0].keys()
            out = {k: np.concatenate([p[k] for p in pending], axis=0) for k in keys}
            pending, pend_n = [], 0
            return out

        for block in self.blocks:
            n = _block_len(block)
            i = 0
            while i < n and left > 0:
                if pending and _shape_key(pending[0]) != _shape_key(block):
                    b = flush()
                    if b is not None:
                        yield b
                take = min(n - i, batch_size - pend_n, left)
                pending.append({k: v[i:i + take] for k, v in block.items()})
                pend_n += take
                i += take
                left -= take
                if pend_n == batch_size:
                    yield flush()
        b = flush()
        if b is not None:
            yield b

    def take(self, part: slice) -> "CalibrationData":
        """The samples ``part.start`` to ``part.stop`` (in order; e.g. a ``torchrun`` rank's shard)."""
        blocks, seen = [], 0
        for block in self.blocks:
            m = _block_len(block)
            lo, hi = max(part.start - seen, 0), min(part.stop - seen, m)
            if lo < hi:
                blocks.append({k: v[lo:hi] for k, v in block.items()})
            seen += m
        return CalibrationData(blocks, f"{self.source}[{part.start}:{part.stop}]", dict(self.info))

    def split(self, holdout: int | float) -> tuple["CalibrationData", "CalibrationData"]:
        """(calibration, held-out): the last ``holdout`` samples (a count, or a fraction < 1) are held out."""
        n = self.num_samples
        k = int(round(holdout * n)) if isinstance(holdout, float) and holdout < 1 else int(holdout)
        d = self.info.get("static_batch")
        if d and k % d:
            k += d - k % d  # whole batches on both sides
        if not 0 < k < n:
            raise OnnxAmpError(f"held-out split of {holdout} leaves no calibration or no held-out samples (have {n})")
        cut = n - k
        a, b, seen = [], [], 0
        for block in self.blocks:
            m = _block_len(block)
            if seen + m <= cut:
                a.append(block)
            elif seen >= cut:
                b.append(block)
            else:
                j = cut - seen
                a.append({kk: v[:j] for kk, v in block.items()})
                b.append({kk: v[j:] for kk, v in block.items()})
            seen += m
        return (CalibrationData(a, self.source + "[calib]", dict(self.info)),
                CalibrationData(b, self.source + "[heldout]", dict(self.info)))


def _block_len(block: dict[str, np.ndarray]) -> int:
    return int(next(iter(block.values())).shape[0])


def _shape_key(block):
    return tuple((k, v.shape[1:], v.dtype.str) for k, v in sorted(block.items()))


def validate_block(block: dict[str, Any], specs: list[InputSpec], where: str,
                   batched: bool | None = None) -> dict[str, np.ndarray]:
    """Check one dict of arrays against the model inputs; returns arrays with a leading sample axis."""
    if not isinstance(block, dict):
        raise OnnxAmpError(f"{where}: expected a dict of input name -> array, got {type(block).__name__}; "
                           f"model inputs: {_expected(specs)}")
    names = {s.name for s in specs}
    unknown = [k for k in block if k not in names and k not in EXTRA_KEYS]
    if unknown:
        raise OnnxAmpError(
            f"{where}: {unknown[0]!r} is not an input of the model (inputs: {_expected(specs)}; extra key allowed: labels)"
        )
    missing = [s.name for s in specs if s.name not in block]
    if missing:
        raise OnnxAmpError(f"{where}: model input {missing[0]!r} is missing; provide {_expected(specs)}")
    out: dict[str, np.ndarray] = {}
    n = None
    for s in specs:
        arr = block[s.name]
        if hasattr(arr, "detach"):
            arr = arr.detach().cpu().numpy()
        arr = np.asarray(arr)
        if arr.dtype == object or arr.dtype.kind in "USV":
            raise OnnxAmpError(f"{where}: tensor {s.name!r} holds {arr.dtype} values, not numbers; the model expects "
                               f"{s.describe()}")
        if arr.ndim == 0:
            raise OnnxAmpError(f"{where}: tensor {s.name!r} is a single number; put the samples on a leading axis "
                               f"(the model expects {s.describe()})")
        rank = arr.ndim if s.shape is None else len(s.shape)  # no shape in the model: any rank, leading axis = samples
        if batched is None:
            is_batched = arr.ndim == rank
        else:
            is_batched = batched
        if not is_batched and arr.ndim == rank - 1:
            arr = arr[None]
        if arr.ndim != rank:
            raise OnnxAmpError(
                f"{where}: tensor {s.name!r} has shape {list(arr.shape)} (rank {arr.ndim}); "
                f"the model expects rank {rank}: {s.describe()}; reshape it (leading axis = samples)"
            )
        for i, d in enumerate(s.shape or []):
            if i > 0 and isinstance(d, int) and arr.shape[i] != d:
                raise OnnxAmpError(
                    f"{where}: tensor {s.name!r} has shape {list(arr.shape)}; the model expects {s.describe()} (dim {i} = {d})"
                )
        want = _NP_KIND.get(s.dtype)
        if want is not None and arr.dtype != want:
            kind_ok = (np.dtype(want).kind in "iu" and arr.dtype.kind in "iub") or (
                np.dtype(want).kind == "f" and arr.dtype.kind == "f") or (np.dtype(want).kind == "b" and arr.dtype.kind in "bi")
            if not kind_ok:
                raise OnnxAmpError(
                    f"{where}: tensor {s.name!r} has dtype {arr.dtype}; the model expects {s.describe()} "
                    f"(convert it, e.g. arr.astype(np.{np.dtype(want).name}))"
                )
            arr = arr.astype(want)
        _check_values(arr, s, where)
        if n is None:
            n = arr.shape[0]
        elif arr.shape[0] != n:
            raise OnnxAmpError(f"{where}: tensor {s.name!r} has {arr.shape[0]} samples, other inputs have {n}")
        out[s.name] = np.ascontiguousarray(arr)
    if "labels" in block:
        lab = np.asarray(block["labels"].detach().cpu().numpy() if hasattr(block["labels"], "detach") else block["labels"])
        if lab.ndim == 0:
            lab = lab[None]
        if lab.shape[0] != n:
            raise OnnxAmpError(f"{where}: 'labels' has {lab.shape[0]} entries for {n} samples; give one label per sample")
        out["labels"] = lab
    return out


def _check_values(arr: np.ndarray, s: InputSpec, where: str) -> None:
    """No sample at all, NaN/Inf in a float input, token ids outside the embedding table."""
    if arr.shape[0] == 0:
        raise OnnxAmpError(f"{where}: tensor {s.name!r} holds 0 samples (shape {list(arr.shape)}); give at least one "
                           "sample per input")
    if arr.size == 0:
        return
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        if not finite.all():
            bad = np.argwhere(~finite)[0]
            kind = "NaN" if np.isnan(arr[tuple(bad)]) else "Inf"
            raise OnnxAmpError(
                f"{where}: tensor {s.name!r} has {int((~finite).sum())} NaN/Inf value(s) ({kind} first in sample "
                f"{int(bad[0])}); remove or fix those samples")
    elif s.vocab is not None and arr.dtype.kind in "iu":
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= s.vocab:
            bad = lo if lo < 0 else hi
            sample = int(np.argwhere(arr == bad)[0][0])
            raise OnnxAmpError(
                f"{where}: tensor {s.name!r} has token id {bad} (sample {sample}) outside the embedding table of node "
                f"{s.vocab_node!r} (ids 0..{s.vocab - 1}); tokenize with the model's own tokenizer and replace "
                "negative ids (e.g. -100 padding) with the pad token id")


def _static_batch(specs: list[InputSpec]) -> int | None:
    sizes = {s.static_batch for s in specs if s.static_batch is not None}
    return min(sizes) if sizes else None


def _rebatch(cd: "CalibrationData", specs: list[InputSpec]) -> "CalibrationData":
    """A model with a static batch dimension ``d`` runs batches of exactly ``d`` samples: record it,
    and drop the samples beyond a multiple of ``d`` (with a note)."""
    d = _static_batch(specs)
    if d is None:
        return cd
    n = cd.num_samples
    which = next(s for s in specs if s.static_batch == d)
    if n < d:
        raise OnnxAmpError(
            f"{cd.source}: {n} sample(s), but the model's input {which.name!r} has a static batch dimension of {d} "
            f"({which.describe()}); give at least {d} samples or re-export the model with a dynamic batch axis")
    keep = n - n % d
    if keep != n:
        cd.blocks = list(cd.batches(n, keep))
        cd.info.setdefault("notes", []).append(
            f"{cd.source}: the model's batch dimension is static ({d}); used {keep} of {n} samples (a multiple of {d})")
    cd.info["static_batch"] = d
    return cd


def load_calibration_data(data: Any, model: ir.Model, tokenizer: Any = None, seq_len: int = 128,
                          max_samples: int | None = None, flag: str = "--calibration_data") -> CalibrationData:
    """Turn ``data`` (see module docstring) into validated :class:`CalibrationData` for ``model``
    (``flag``: the option named in error messages)."""
    if isinstance(data, CalibrationData):
        return data
    specs = input_specs(model)
    if isinstance(data, (str, os.PathLike)):
        p = Path(data)
        if not p.exists():
            raise OnnxAmpError(f"{flag} {p}: no such file; check the path")
        if p.suffix == ".npz":
            try:
                with np.load(p, allow_pickle=False) as z:
                    block = {k: z[k] for k in z.files}
            except Exception as e:
                raise OnnxAmpError(f"{p}: not a readable .npz file ({type(e).__name__}: {e}); save it with "
                                   "np.savez(path, input_name=array) (numbers, no pickled objects)") from e
            b = validate_block(block, specs, str(p), batched=True)
            if max_samples is not None:
                b = {k: v[:max_samples] for k, v in b.items()}
            return _rebatch(CalibrationData([b], str(p)), specs)
        if p.suffix in (".txt", ".text", ".md", ".cor") or p.suffix == "":
            from onnx_amp.runtime.text_data import text_windows
            block, notes = text_windows(p, tokenizer, seq_len, specs, max_samples)
            return _rebatch(CalibrationData([validate_block(block, specs, str(p), batched=True)], str(p),
                                            {"seq_len": seq_len, "notes": notes}), specs)
        raise OnnxAmpError(f"{flag} {p}: unknown kind {p.suffix!r}; give an .npz keyed by input name or a .txt with --tokenizer")
    if isinstance(data, dict):
        b = validate_block(data, specs, "calibration data dict", batched=True)
        if max_samples is not None:
            b = {k: v[:max_samples] for k, v in b.items()}
        return _rebatch(CalibrationData([b], "dict"), specs)
    if hasattr(data, "get_next"):
        def reader_iter():
            while True:
                item = data.get_next()
                if item is None:
                    return
                yield item
        items: Iterable = reader_iter()
        source = f"CalibrationDataReader {type(data).__name__}"
    elif hasattr(data, "__iter__"):
        items, source = data, f"iterable {type(data).__name__}"
    else:
        raise OnnxAmpError(
            f"calibration data of type {type(data).__name__} is not supported; give an .npz path, a .txt path with a tokenizer, "
            "a dict of arrays, an iterable of input dicts or an onnxruntime CalibrationDataReader"
        )
    blocks, n = [], 0
    for i, item in enumerate(items):
        b = validate_block(item, specs, f"{source} item {i}")
        blocks.append(b)
        n += _block_len(b)
        if max_samples is not None and n >= max_samples:
            break
    if not blocks:
        raise OnnxAmpError(f"{source}: yielded no samples")
    return _rebatch(CalibrationData(blocks, source), specs)


def check_calibration(result: Any, where: str, force: bool = False) -> list[str]:
    """After calibration: a loss of 0 on every sample, or every layer's sensitivity 0 (data scaled
    far out of range, a saturated model, a loss that ignores the model), makes every plan look free.
    ``OnnxAmpError`` naming the cause, unless ``force`` (then a note)."""
    layers = getattr(result, "layers", None) or {}
    if not layers:
        return []

    def sensitive(st) -> bool:
        vals = [st.s_a, st.s_w, st.s_b, st.gsq_a, st.gsq_b]
        if st.gsq_w is not None:
            vals.append(float(np.max(np.abs(st.gsq_w))) if np.size(st.gsq_w) else 0.0)
        return any(np.isfinite(v) and v > 0 for v in vals)

    mean = float(getattr(result, "mean_loss", float("nan")))
    if mean == 0.0:
        what = f"the loss is 0 on all {getattr(result, 'samples', '?')} calibration samples"
    elif not any(sensitive(st) for st in layers.values()):
        what = f"every layer's sensitivity is 0 ({len(layers)} layers; mean loss {mean:.4g})"
    else:
        return []
    msg = (f"{where}: {what}, so every plan would look free; check the data (its scale: e.g. pixel values "
           "0..1 vs 0..255, or inputs saturating the model) and the loss")
    if not force:
        raise OnnxAmpError(msg + "; or pass --force to plan with it anyway")
    return [msg + " (--force: kept)"]
