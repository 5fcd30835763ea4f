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
tensor and the expected form.
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
    shape: list  # ints for static dims, str/None for dynamic

    def describe(self) -> str:
        dims = ",".join(str(d) if isinstance(d, int) else (d or "?") for d in self.shape)
        return f"{self.name}: {self.dtype.name if self.dtype is not None else '?'}[{dims}]"


def input_specs(model: ir.Model) -> list[InputSpec]:
    inits = set(model.graph.initializers)
    out = []
    for v in model.graph.inputs:
        if v.name in inits:
            continue
        shape = [] if v.shape is None else [d if isinstance(d, int) else (str(d) if d is not None else None) for d in v.shape]
        out.append(InputSpec(v.name, v.dtype, shape))
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
        """Batches of at most ``batch_size`` samples (blocks of different shapes never mix)."""
        if batch_size < 1:
            raise OnnxAmpError(f"--batch_size {batch_size}: must be >= 1")
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

    def split(self, holdout: int | float) -> tuple["CalibrationData", "CalibrationData"]:
        """(calibration, held-out): the last ``holdout`` samples (a count, or a fraction < 1) are held out."""
        n = self.num_samples
        k = int(round(holdout * n)) if isinstance(holdout, float) and holdout < 1 else int(holdout)
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
        return CalibrationData(a, self.source + "[calib]", dict(self.info)), CalibrationData(b, self.source + "[heldout]", dict(self.info))


def _block_len(block: dict[str, np.ndarray]) -> int:
    return int(next(iter(block.values())).shape[0])


def _shape_key(block):
    return tuple((k, v.shape[1:], v.dtype.str) for k, v in sorted(block.items()))


def validate_block(block: dict[str, Any], specs: list[InputSpec], where: str, batched: bool | None = None) -> dict[str, np.ndarray]:
    """Check one dict of arrays against the model inputs; returns arrays with a leading sample axis."""
    if not isinstance(block, dict):
        raise OnnxAmpError(f"{where}: expected a dict of input name -> array, got {type(block).__name__}; model inputs: {_expected(specs)}")
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
        rank = len(s.shape)
        if batched is None:
            is_batched = arr.ndim == rank
        else:
            is_batched = batched
        if not is_batched and arr.ndim == rank - 1:
            arr = arr[None]
        if arr.ndim != rank:
            raise OnnxAmpError(
                f"{where}: tensor {s.name!r} has shape {list(arr.shape)} (rank {arr.ndim}); "
                f"the model expects rank {rank}: {s.describe()}"
            )
        for i, d in enumerate(s.shape):
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
            raise OnnxAmpError(f"{where}: 'labels' has {lab.shape[0]} entries for {n} samples")
        out["labels"] = lab
    return out


def _load_tokenizer(tokenizer: Any):
    if tokenizer is None:
        raise OnnxAmpError("a text calibration file needs --tokenizer (a tokenizer.json file or a Hugging Face tokenizer folder)")
    if not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer  # already a tokenizer object
    p = Path(tokenizer)
    if not p.exists():
        raise OnnxAmpError(f"--tokenizer {p}: no such file or folder")
    if p.is_file():
        from tokenizers import Tokenizer
        try:
            return Tokenizer.from_file(str(p))
        except Exception as e:
            raise OnnxAmpError(f"--tokenizer {p}: not a tokenizers JSON file ({e})") from e
    import transformers
    try:
        return transformers.AutoTokenizer.from_pretrained(str(p))
    except Exception as e:
        raise OnnxAmpError(f"--tokenizer {p}: transformers could not load a tokenizer from it ({type(e).__name__}: {e})") from e


def _encode(tok, text: str) -> list[int]:
    if hasattr(tok, "encode") and type(tok).__module__.startswith("tokenizers"):
        return tok.encode(text, add_special_tokens=False).ids
    return list(tok(text, add_special_tokens=False)["input_ids"])


def text_windows(path: str | os.PathLike, tokenizer: Any, seq_len: int, specs: list[InputSpec],
                 max_samples: int | None = None) -> dict[str, np.ndarray]:
    p = Path(path)
    names = {s.name for s in specs}
    if "input_ids" not in names:
        raise OnnxAmpError(f"{p}: text calibration data needs a model with an 'input_ids' input; model inputs: {_expected(specs)}")
    other = names - {"input_ids", "attention_mask", "position_ids", "token_type_ids"}
    if other:
        raise OnnxAmpError(f"{p}: text calibration cannot fill model input(s) {sorted(other)}; use an .npz keyed by input name")
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise OnnxAmpError(f"{p}: cannot read the text file ({e})") from e
    tok = _load_tokenizer(tokenizer)
    ids: list[int] = []
    for para in text.split("\n\n"):
        para = para.strip()
        if para:
            ids.extend(_encode(tok, para + "\n\n"))
        if max_samples is not None and len(ids) >= max_samples * seq_len:
            break
    n = len(ids) // seq_len
    if max_samples is not None:
        n = min(n, max_samples)
    if n == 0:
        raise OnnxAmpError(f"{p}: {len(ids)} tokens is less than one window of --seq_len {seq_len}; give more text or a shorter window")
    arr = np.asarray(ids[: n * seq_len], dtype=np.int64).reshape(n, seq_len)
    block = {"input_ids": arr}
    if "attention_mask" in names:
        block["attention_mask"] = np.ones_like(arr)
    if "position_ids" in names:
        block["position_ids"] = np.broadcast_to(np.arange(seq_len, dtype=np.int64), arr.shape).copy()
    if "token_type_ids" in names:
        block["token_type_ids"] = np.zeros_like(arr)
    return block


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
            raise OnnxAmpError(f"{flag} {p}: no such file")
        if p.suffix == ".npz":
            try:
                with np.load(p, allow_pickle=False) as z:
                    block = {k: z[k] for k in z.files}
            except Exception as e:
                raise OnnxAmpError(f"{p}: not a readable .npz file ({type(e).__name__}: {e})") from e
            b = validate_block(block, specs, str(p), batched=True)
            if max_samples is not None:
                b = {k: v[:max_samples] for k, v in b.items()}
            return CalibrationData([b], str(p))
        if p.suffix in (".txt", ".text", ".md", ".cor") or p.suffix == "":
            block = text_windows(p, tokenizer, seq_len, specs, max_samples)
            return CalibrationData([validate_block(block, specs, str(p), batched=True)], str(p), {"seq_len": seq_len})
        raise OnnxAmpError(f"{flag} {p}: unknown kind {p.suffix!r}; give an .npz keyed by input name or a .txt with --tokenizer")
    if isinstance(data, dict):
        b = validate_block(data, specs, "calibration data dict", batched=True)
        if max_samples is not None:
            b = {k: v[:max_samples] for k, v in b.items()}
        return CalibrationData([b], "dict")
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
    return CalibrationData(blocks, source)
