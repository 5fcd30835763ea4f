"""Execution backends behind one interface (:class:`~onnx_amp.runtime.backends.base.Backend`).

A backend runs ONNX models on a device at the precision the graph states: ONNX Runtime's CPU
provider (``ort_cpu``) and, when installed, OpenVINO's CPU plugin (``openvino_cpu``). Profiling,
plan evaluation and validation ask :func:`get_backend` for a backend by the name a target's
``measured_backend`` gives, and use only the interface. Adding a backend is one module plus one
:func:`register` call in it, and one entry in :data:`_MODULES`.
"""

from __future__ import annotations

import importlib

from onnx_amp.core.errors import OnnxAmpError
from onnx_amp.runtime.backends.base import Backend, Session

__all__ = ["MEASURED_BACKENDS", "Backend", "Session", "available_backends", "get_backend", "register"]

#: backends that time region configurations and evaluate plans on this machine (``measure``)
MEASURED_BACKENDS = ("ort_cpu", "openvino_cpu")

_REGISTRY: dict[str, type[Backend]] = {}
_INSTANCES: dict[str, Backend] = {}
#: backend name -> module that registers it (imported on first use: each imports its runtime lazily)
_MODULES = {"ort_cpu": "onnx_amp.runtime.backends.ort", "openvino_cpu": "onnx_amp.runtime.backends.openvino"}


def register(cls: type[Backend]) -> type[Backend]:
    """Class decorator: make ``cls`` available as ``get_backend(cls.name)``."""
    _REGISTRY[cls.name] = cls
    return cls


def available_backends() -> list[str]:
    return sorted(_MODULES)


def get_backend(name: str) -> Backend:
    """The backend called ``name`` (one instance per process); ``OnnxAmpError`` when unknown."""
    if name not in _INSTANCES:
        if name not in _REGISTRY:
            mod = _MODULES.get(name)
            if mod is None:
                raise OnnxAmpError(f"unknown backend {name!r}; known backends: {', '.join(available_backends())}")
            try:
                importlib.import_module(mod)
            except ModuleNotFoundError as e:
                raise OnnxAmpError(f"backend {name} is not installed here ({e}); "
                                   "install it with 'bash tools/install.sh'") from None
        _INSTANCES[name] = _REGISTRY[name]()
    return _INSTANCES[name]
