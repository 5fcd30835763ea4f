"""Kept for one release: the formats now live in :mod:`onnx_amp.core.formats` (no torch there);
``Format.torch_dtype`` became ``runtime.torch_graph.torch_dtype(fmt.onnx_dtype)``."""

from onnx_amp.core.formats import ALIASES, FORMATS, Format, get_format  # noqa: F401
