"""ONNX in, ONNX out: the onnx-amp passes (``onnx_ir.passes`` passes)."""
