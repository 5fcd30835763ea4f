"""The ``onnx-amp`` command line and benchmark/report scripts."""
