"""Kept for one release: model and JSON I/O now live in :mod:`onnx_amp.core.onnx_io`."""

from onnx_amp.core.errors import OnnxAmpError  # noqa: F401
from onnx_amp.core.onnx_io import (  # noqa: F401
    check_external_data, check_output_path, load_model, save_json, save_model,
)
