"""Kept for one release: the loss model is pure math over annotations and now lives in
:mod:`onnx_amp.passes.lossmodel`."""

from onnx_amp.passes.lossmodel import *  # noqa: F401,F403
