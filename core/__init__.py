"""The core vocabulary every other part of onnx-amp imports, and that imports nothing of ours:
errors (``core.errors``). Graph passes (``onnx_amp.passes``), what executes (``onnx_amp.runtime``)
and the command line (``onnx_amp.tools``) build on it, in that order."""
