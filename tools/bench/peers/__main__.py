"""``python -m onnx_amp.tools.bench.peers --out DIR``: see ``run.py``."""

from onnx_amp.tools.bench.peers.run import main

raise SystemExit(main())
