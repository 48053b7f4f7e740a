#!/usr/bin/env bash
# `make gpu-bundle`: on a machine with the package index, gather into .gpu/ what `make gpu-check`
# needs on a GPU machine that has Python, torch and transformers but no network:
#   .gpu/whl/  the stack's wheels the GPU machine lacks (Python 3.12, manylinux x86-64), pruned
#   .gpu/tok/  SmolLM2's tokenizer (from the embedded model), for the models gpu-check builds
# Carry .gpu/ to the GPU machine with the checkout; `make gpu-check` installs from it when an
# import is missing. Versions come from requirements/ (the same pins as .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PYVER=${GPU_PYTHON:-3.12}
LIMIT_MIB=60
rm -rf .gpu/whl .gpu/tok && mkdir -p .gpu/whl

pin() {  # the version pinned in requirements/, else the one in .venv
  local v
  v=$(grep -hiE "^$1==" requirements/stack.txt requirements/constraints.txt | head -1 | cut -d= -f3)
  [ -n "$v" ] || v=$("$PY" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null) || true
  if [ -n "$v" ]; then echo "$1==$v"; else echo "$1"; fi
}
# What a GPU image with torch+transformers+peft usually lacks: Unsloth, TRL, bitsandbytes, datasets
# and what they import. peft is carried so its version matches the tested pin.
# pyseccomp and landlockpy (a few KB): the code recipe's sandbox where a container has no user
# namespaces (best-effort mode, docs/sandbox.md).
PKGS="unsloth unsloth_zoo trl peft bitsandbytes datasets dill multiprocess xxhash torchao cut_cross_entropy
      tyro docstring_parser typeguard shtab msgspec structlog json5 nest_asyncio hf_transfer
      pyseccomp landlockpy"
PLAT=""
for p in manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  PLAT="$PLAT --platform ${p}_x86_64"
done
for name in $PKGS; do
  spec=$(pin "$name")
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    $PLAT -d .gpu/whl "$spec"
done

# Unsloth's web studio and bitsandbytes' builds for other CUDA versions, ROCm and XPU are never
# used on the GPU machine; dropping them keeps the bundle under what one device call carries.
"$PY" - <<'PY'
import glob, os, re, zipfile

def prune(path, drop):
    tmp = path + ".tmp"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if drop(item.filename):
                continue
            body = src.read(item.filename)
            if item.filename.endswith(".dist-info/RECORD"):
                kept = [ln for ln in body.decode().splitlines() if not drop(ln.split(",")[0])]
                body = ("\n".join(kept) + "\n").encode()
            dst.writestr(item, body)
    os.replace(tmp, path)

for w in glob.glob(".gpu/whl/unsloth-*.whl"):
    prune(w, lambda f: f.startswith("studio/"))
for w in glob.glob(".gpu/whl/bitsandbytes-*.whl"):
    prune(w, lambda f: re.search(r"libbitsandbytes_(cuda1[12]\d|rocm|xpu)", f) is not None)
PY

# The tokenizer of the models gpu-check builds (no download on the GPU machine).
"$PY" - <<'PY'
import shutil
from pathlib import Path
from kit import embedded
from transformers import AutoTokenizer

AutoTokenizer.from_pretrained(embedded.ensure_converted()).save_pretrained(".gpu/tok")
for junk in Path(".gpu/tok").glob("*.gguf"):
    junk.unlink()
print("tokenizer:", sorted(p.name for p in Path(".gpu/tok").iterdir()))
PY

size=$(du -sm .gpu | cut -f1)
echo "gpu-bundle: .gpu/ holds $(ls .gpu/whl | wc -l) wheels and the tokenizer, ${size} MiB"
if [ "$size" -gt "$LIMIT_MIB" ]; then
  echo "error: .gpu/ is ${size} MiB, over the ${LIMIT_MIB} MiB a device call may carry" >&2
  exit 1
fi
