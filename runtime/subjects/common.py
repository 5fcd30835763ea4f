"""What the subject modules share: package lookup, the cache folder, offline Hugging Face."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path


class SubjectError(RuntimeError):
    pass


def _pkg_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SubjectError(f"package {pip_name} is not installed; run tools/install.sh")
    return Path(list(spec.submodule_search_locations)[0])


def default_cache_dir() -> Path:
    """Where subject artefacts (exports, the MiniLM head) live: ``$ONNX_AMP_CACHE`` or ``~/.cache/onnx_amp``."""
    return Path(os.environ.get("ONNX_AMP_CACHE", Path.home() / ".cache" / "onnx_amp"))


def offline() -> None:
    """Hugging Face libraries read only what is installed (no hub): set before each load, not at import."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
