"""Text calibration data: a text file and a tokenizer cut into windows of ``seq_len`` tokens,
each wrapped in the special tokens (BOS/EOS) the tokenizer's own configuration adds; the
``attention_mask`` / ``position_ids`` / ``token_type_ids`` inputs a language model has are filled.
Used by :func:`onnx_amp.runtime.data.load_calibration_data` for ``.txt`` files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from onnx_amp.core.errors import OnnxAmpError
from onnx_amp.runtime.data import InputSpec, _expected


def _load_tokenizer(tokenizer: Any):
    if tokenizer is None:
        raise OnnxAmpError("a text calibration file needs --tokenizer; give a tokenizer.json file or a Hugging Face "
                           "tokenizer folder")
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


def _encode(tok, text: str, special: bool = False) -> list[int]:
    if hasattr(tok, "encode") and type(tok).__module__.startswith("tokenizers"):
        return tok.encode(text, add_special_tokens=special).ids
    return list(tok(text, add_special_tokens=special)["input_ids"])


#: windows a text file gives by default (each one a calibration forward + backward); more with --calibration_samples
DEFAULT_TEXT_WINDOWS = 64


def special_tokens(tok) -> tuple[list[int], list[int]]:
    """(prefix, suffix): the special tokens the tokenizer's own configuration adds around a text
    (BOS and EOS as the model was trained to see them), found by encoding a probe with and without them."""
    probe = "The quick brown fox."
    plain, full = _encode(tok, probe), _encode(tok, probe, special=True)
    for i in range(len(full) - len(plain) + 1):
        if full[i:i + len(plain)] == plain:
            return full[:i], full[i + len(plain):]
    return [], []


def text_windows(path: str | os.PathLike, tokenizer: Any, seq_len: int, specs: list[InputSpec],
                 max_samples: int | None = None) -> tuple[dict[str, np.ndarray], list[str]]:
    """Windows of ``seq_len`` tokens of a text file, each wrapped in the special tokens the
    tokenizer's configuration adds (BOS/EOS), at most ``max_samples`` (default
    :data:`DEFAULT_TEXT_WINDOWS`); returns the inputs and notes."""
    p = Path(path)
    names = {s.name for s in specs}
    ids_spec = next((s for s in specs if s.name == "input_ids"), None)
    if ids_spec is not None and ids_spec.shape and len(ids_spec.shape) >= 2 and isinstance(ids_spec.shape[1], int):
        seq_len = ids_spec.shape[1]  # the model's own (static) sequence length wins over --seq_len
    if "input_ids" not in names:
        raise OnnxAmpError(f"{p}: text calibration data needs a model with an 'input_ids' input; use an .npz keyed by "
                           f"input name for this model (inputs: {_expected(specs)})")
    other = names - {"input_ids", "attention_mask", "position_ids", "token_type_ids"}
    if other:
        raise OnnxAmpError(f"{p}: text calibration cannot fill model input(s) {sorted(other)}; use an .npz keyed by input name")
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise OnnxAmpError(f"{p}: cannot read the text file ({e})") from e
    tok = _load_tokenizer(tokenizer)
    prefix, suffix = special_tokens(tok)
    body = seq_len - len(prefix) - len(suffix)
    if body < 1:
        raise OnnxAmpError(f"--seq_len {seq_len} leaves no room for text beside the tokenizer's special tokens "
                           f"{prefix + suffix}; use a longer window")
    cap = DEFAULT_TEXT_WINDOWS if max_samples is None else max_samples
    ids: list[int] = []
    for para in text.split("\n\n"):
        para = para.strip()
        if para:
            ids.extend(_encode(tok, para + "\n\n"))
        if len(ids) >= (cap + 1) * body:
            break
    n_all = len(ids) // body
    n = min(n_all, cap)
    if n == 0:
        raise OnnxAmpError(f"{p}: {len(ids)} tokens is less than one window of --seq_len {seq_len}; "
                           "give more text or a shorter window")
    # each window as the model saw text in training: the tokenizer's BOS/EOS around its tokens
    ids = [t for i in range(n) for t in prefix + ids[i * body:(i + 1) * body] + suffix]
    notes = []
    if prefix or suffix:
        notes.append(f"{p}: each window of {seq_len} tokens carries the tokenizer's special tokens "
                     f"{prefix} ... {suffix}")
    if n_all > n:
        notes.append(f"{p}: the text gives {n_all}+ windows of {seq_len} tokens; using the first {n} "
                     "(--calibration_samples sets how many)")
    arr = np.asarray(ids, dtype=np.int64).reshape(n, seq_len)
    block = {"input_ids": arr}
    if "attention_mask" in names:
        block["attention_mask"] = np.ones_like(arr)
    if "position_ids" in names:
        block["position_ids"] = np.broadcast_to(np.arange(seq_len, dtype=np.int64), arr.shape).copy()
    if "token_type_ids" in names:
        block["token_type_ids"] = np.zeros_like(arr)
    return block, notes
