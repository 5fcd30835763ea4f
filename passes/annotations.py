"""Kept for one release: the annotation contract now lives in :mod:`onnx_amp.core.annotations`."""

from onnx_amp.core.annotations import *  # noqa: F401,F403
from onnx_amp.core.annotations import _props  # noqa: F401
