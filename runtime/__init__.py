"""What executes: torch export and calibration, ONNX Runtime sessions, targets, timing, Gaudi export."""
