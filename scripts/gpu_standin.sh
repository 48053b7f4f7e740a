#!/usr/bin/env bash
# `make gpu-standin`: on a CPU machine with the package index, a stand-in for the offline GPU
# machine `make gpu-check` is built for (Python, torch, transformers, peft, accelerate and triton,
# no Unsloth, no network: ../shared/device/README.md), to catch what would fail there before a
# GPU's minutes are spent on it:
#   - a Python with only that machine's packages (at .venv's versions), plus requests, pandas and
#     pyarrow, which Unsloth's import needs and which that machine had when its wheels first ran;
#   - a copy of the checkout's tracked files (no .venv/, no embedded model);
#   - the bundle as `make gpu-bundle` makes it, for this Python's version;
#   - `make gpu-check` there with the network cut (`unshare -n` where allowed): it installs the
#     bundle as it would on the GPU machine, then runs its CPU form on the small taught model
#     (taught 150 steps, enough for the chat recipe to pass on it) with the chat and code recipes,
#     the code recipe's sandbox in best-effort mode as in a container without user namespaces.
#     Arguments replace those defaults (they go to bench/gpu_check.py).
# Everything lives under $STANDIN (default /tmp/kit-gpu-standin); the Python is kept for reruns.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV_PY=$ROOT/.venv/bin/python
W=${STANDIN:-/tmp/kit-gpu-standin}
mkdir -p "$W"

version() { "$VENV_PY" -c "import importlib.metadata as m; print(m.version('$1').split('+')[0])"; }
WANT=""
for name in torch transformers peft accelerate triton requests pandas pyarrow; do
  WANT="$WANT $name==$(version "$name")"
done
if [ "$(cat "$W/py/.want" 2>/dev/null)" != "$WANT" ]; then
  echo "gpu-standin: a Python with only:$WANT"
  rm -rf "$W/py"
  python3 -m venv "$W/py"
  "$W/py/bin/python" -m pip install -q $WANT
  echo "$WANT" > "$W/py/.want"
fi
PY=$W/py/bin/python
if "$PY" -c "import unsloth" >/dev/null 2>&1 || "$PY" -c "import trl" >/dev/null 2>&1; then
  echo "error: $W/py has Unsloth or TRL: it no longer stands in for the GPU machine" >&2
  exit 1
fi

rm -rf "$W/tree" "$W/site" "$W/work"
mkdir -p "$W/tree"
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$W/tree"
PYVER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
(cd "$W/tree" && GPU_PYTHON=$PYVER PY=$VENV_PY bash scripts/gpu_bundle.sh 2>&1 | { grep -v "^WARNING: Location" || true; })

NET="unshare -n"
$NET true 2>/dev/null || { NET=""; echo "gpu-standin: unshare -n is not allowed here; the network stays on"; }
cd "$W/tree"
[ $# -gt 0 ] || set -- --teach-steps 150 --recipes chat,code
set +e
$NET env -u PYTHONPATH PYTHON="$PY" KIT_GPU_SITE="$W/site" KIT_SANDBOX=best-effort bash scripts/gpu_check.sh \
  --work "$W/work" --out "$W/gpu-check.json" --md "$W/gpu-check.md" "$@"
code=$?
echo "gpu-standin: gpu-check exited $code; its record: $W/gpu-check.json, $W/gpu-check.md, logs in $W/work"
exit $code
