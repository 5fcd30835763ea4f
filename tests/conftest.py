"""Shared fixtures: the real subject models (exported once, cached) and small real data batches.

Exports live in ``$ONNX_AMP_CACHE/exports/<smollm2|minilm|effnet|paraphrase>/model.onnx``
(default ``~/.cache/onnx_amp``), keyed by ``onnx_amp.runtime.subjects.EXPORT_VERSION``: a fresh
clone exports them on first use (SmolLM2 about 2 minutes on 2 cores), reruns reuse them.
Treat them as read-only: write outputs to ``tmp_path``.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _subject(name: str):
    from onnx_amp.runtime.export import ensure_subject_onnx

    return ensure_subject_onnx(name)


@pytest.fixture(scope="session")
def smollm2_onnx():
    """Path of SmolLM2-135M's un-partitioned ONNX (input_ids -> logits)."""
    return _subject("smollm2")


@pytest.fixture(scope="session")
def minilm_onnx():
    """Path of MiniLM-sentiment's un-partitioned ONNX (input_ids, attention_mask -> logits [B, 2])."""
    return _subject("minilm-sentiment")


@pytest.fixture(scope="session")
def effnet_onnx():
    """Path of EfficientNet-Lite0's un-partitioned ONNX (pixel_values -> logits [B, 1000])."""
    return _subject("effnet-lite0")


@pytest.fixture(scope="session")
def paraphrase_onnx():
    """Path of the ready-made paraphrase-MiniLM-L3-v2 ONNX (not made by our exporter)."""
    return _subject("paraphrase")


@pytest.fixture(scope="session")
def smollm2_data():
    """4 Wikipedia windows of 64 tokens: {"input_ids": int64 [4, 64], "labels": same}."""
    from onnx_amp.runtime.subjects import smollm2_batch

    return smollm2_batch(4, 64, "calib", seed=0)


@pytest.fixture(scope="session")
def minilm_data():
    """16 Rotten Tomatoes eval sentences: input_ids/attention_mask int64 [16, 64], labels int64 [16]."""
    from onnx_amp.runtime.subjects import minilm_batch

    return minilm_batch(16, "eval", max_len=64, seed=0)


@pytest.fixture(scope="session")
def photo_data():
    """8 photo samples: pixel_values float32 [8, 3, 224, 224], labels (fp32 model top-1) int64 [8]."""
    from onnx_amp.runtime.subjects import photo_batch

    return photo_batch(8, "calib", seed=0, labels=True)


@pytest.fixture(scope="session")
def tiny_models():
    """The small torch models of ``tests/tiny_models.py``, loaded without putting ``tests/`` on ``sys.path``."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("onnx_amp_tests_tiny_models", Path(__file__).with_name("tiny_models.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
