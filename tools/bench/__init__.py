"""Benchmarks that reproduce measured findings (run with ``python -m onnx_amp.tools.bench.<name>``)."""
