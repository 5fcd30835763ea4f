"""onnx-amp: automatic mixed precision for ONNX, as a compiler pass.

The repository root is this package; its stages live in sub-packages:

- ``onnx_amp.passes``: ONNX in, ONNX out (``onnx_ir`` passes): partition, plan, rewrite, ...
- ``onnx_amp.runtime``: what executes: torch export and calibration, ONNX Runtime, targets, timing.
- ``onnx_amp.tools``: the ``onnx-amp`` command line and benchmark/report scripts.
"""

__version__ = "0.1.0"


def __getattr__(name):
    """Lazy ``onnx_amp.optimize`` (``import onnx_amp`` stays light: torch etc. load on first use)."""
    if name == "optimize":
        from onnx_amp.runtime.pipeline import optimize

        return optimize
    raise AttributeError(f"module 'onnx_amp' has no attribute {name!r}")
