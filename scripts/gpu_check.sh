#!/usr/bin/env bash
# `make gpu-check`: run bench/gpu_check.py with the project's .venv, or on a GPU machine without
# it (Python, torch and transformers there, no network) with python3 plus the wheels that
# `make gpu-bundle` put into .gpu/ on a machine with the package index.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=${PYTHON:-python3}; fi
NEEDED="import unsloth, unsloth_zoo, trl, bitsandbytes, datasets, peft"
if ! "$PY" -c "$NEEDED" >/dev/null 2>&1; then
  if ! ls .gpu/whl/*.whl >/dev/null 2>&1; then
    echo "error: this Python lacks the stack (unsloth, trl, bitsandbytes, datasets) and .gpu/whl/ is empty;" \
         "run \`make setup\` where the package index is reachable, or \`make gpu-bundle\` there and bring .gpu/ along" >&2
    exit 2
  fi
  SITE=${KIT_GPU_SITE:-/tmp/kit-gpu-site}
  echo "gpu-check: installing $(ls .gpu/whl | wc -l) wheels from .gpu/whl into $SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .gpu/whl/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  "$PY" -c "$NEEDED"
fi
exec "$PY" bench/gpu_check.py "$@"
