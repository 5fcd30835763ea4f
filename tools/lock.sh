#!/usr/bin/env bash
# Refresh requirements.lock, the exact set of versions `bash tools/install.sh` installs:
# a fresh virtual environment gets the newest versions pyproject.toml's ranges allow (plus the
# subjects, tools/install.sh --ranges), and `pip freeze` of it becomes the lock. Run the tests
# on it (.ci/run) before committing the new lock.
#
#   bash tools/lock.sh            # writes requirements.lock
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m venv "$tmp/venv"
PYTHON="$tmp/venv/bin/python" bash tools/install.sh --ranges
here=$("$tmp/venv/bin/python" -c 'import platform, sys; print(f"python {sys.version_info[0]}.{sys.version_info[1]}, {platform.system().lower()} {platform.machine()}")')
{
  echo "# onnx-amp's tested environment: every package, transitive ones included."
  echo "# Installed by 'bash tools/install.sh' (pip install --no-deps -r requirements.lock);"
  echo "# refreshed by 'bash tools/lock.sh' on $(date -u +%Y-%m-%d)."
  echo "# resolved for: $here"
  # torch: the CPU build lies on this machine's disk as 2.13.0+cpu; '==2.13.0' selects it here
  # and stays installable elsewhere (where it is the CUDA build: see README)
  # --all: setuptools is a runtime dependency of torch; pip itself is the installer, not locked
  "$tmp/venv/bin/python" -m pip freeze --all --exclude-editable --disable-pip-version-check \
    | grep -v '^pip==' | sed -E 's/^torch==([0-9.]+)\+cpu$/torch==\1/' | LC_ALL=C sort -f
} > requirements.lock.tmp
mv requirements.lock.tmp requirements.lock
echo "lock.sh: wrote requirements.lock ($(grep -vc '^#' requirements.lock) packages)"
