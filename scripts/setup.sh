#!/usr/bin/env bash
# One-time set-up, run by `make demo` and `make test`: a project-local virtual environment with
# pinned versions (constraints.txt) and the system library open3d needs for `ns-export`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
if ! command -v "$PY" >/dev/null 2>&1; then
  echo "setup: $PY not found; install Python 3.11 (or run with PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade "pip>=23" setuptools wheel
# torch 2.14.1 is pinned on purpose: the CPU-only torch wheels break torchvision here.
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"

# ns-export imports open3d, which needs libusb-1.0 at run time.
if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing libusb-1.0-0 (needed by open3d, which ns-export imports)"
    (apt-get install -y -qq libusb-1.0-0 >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq libusb-1.0-0 >/dev/null; }) \
      || echo "setup: WARNING: could not install libusb-1.0-0; ns-export will fail until you run: sudo apt-get install libusb-1.0-0" >&2
  else
    echo "setup: WARNING: libusb-1.0 is missing; ns-export needs it: sudo apt-get install libusb-1.0-0" >&2
  fi
fi
touch .venv/.installed
