"""Side by side with the tools users would pick instead (issue 16): ONNX Runtime's quantize_static, NNCF's
accuracy control, Intel Neural Compressor's tuning, AIMET (W8A8 and AMP), NVIDIA ModelOpt, and onnx-amp.

``bash tools/bench/peers/setup.sh`` creates one venv per peer; ``python -m onnx_amp.tools.bench.peers --out DIR``
runs everything (set-up included) and writes ``DIR/peers.{md,json,png}``. Runners (``runner_<peer>.py``) run
inside their peer's venv and import only ``_common``.
"""
