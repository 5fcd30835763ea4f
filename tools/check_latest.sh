#!/usr/bin/env bash
# Before a release (not part of CI): does onnx-amp still work with the newest versions its ranges
# allow? In a fresh virtual environment, install those (tools/install.sh --ranges), print which
# packages moved against requirements.lock, and run the fast tests (-m "not slow").
#
#   bash tools/check_latest.sh [extra pytest args]
# Exit status: pytest's. If it passes, 'bash tools/lock.sh' makes the new versions the lock.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m venv "$tmp/venv" || exit 2
PYTHON="$tmp/venv/bin/python" bash tools/install.sh --ranges > "$tmp/install.log" 2>&1 || {
  echo "check_latest: install failed:"; tail -30 "$tmp/install.log"; exit 2; }
"$tmp/venv/bin/python" -m pip freeze --all --exclude-editable --disable-pip-version-check \
  | grep -v '^pip==' | sed -E 's/^torch==([0-9.]+)\+cpu$/torch==\1/' > "$tmp/latest.txt"
echo "== packages that moved against requirements.lock (locked -> latest allowed)"
"$PY" - requirements.lock "$tmp/latest.txt" <<'PY'
import re, sys
def read(p):
    out = {}
    for line in open(p):
        line = line.strip()
        if line and not line.startswith("#") and "==" in line:
            k, v = line.split("==", 1)
            out[re.sub(r"[-_.]+", "-", k).lower()] = v
    return out
lock, new = read(sys.argv[1]), read(sys.argv[2])
moved = [(k, lock.get(k, "-"), new.get(k, "-")) for k in sorted(set(lock) | set(new)) if lock.get(k) != new.get(k)]
for k, a, b in moved:
    print(f"  {k}: {a} -> {b}")
print(f"  ({len(moved)} of {len(set(lock) | set(new))} packages moved)" if moved else "  none")
PY
echo "== fast tests on the latest versions"
"$tmp/venv/bin/python" -m pytest tests -q -m "not slow" -p no:cacheprovider "$@" 2>&1 | tail -40
rc=${PIPESTATUS[0]}
echo "== check_latest: pytest exit status $rc ($( [ $rc -eq 0 ] && echo 'the latest versions pass: refresh the lock with bash tools/lock.sh' || echo 'see the failures above'))"
exit $rc
