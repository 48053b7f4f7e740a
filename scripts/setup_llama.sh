#!/usr/bin/env bash
# Install the GGUF export tools into .venv/ from PyPI only (no GitHub clone, works offline
# once cached). Called by `make gguf-tools`; safe to re-run.
#   1. download the llama-cpp-python sdist (cached outside the venv)
#   2. extract llama.cpp's HF->GGUF converters (convert_hf_to_gguf.py, convert_lora_to_gguf.py,
#      conversion/, gguf-py/) into $VENV/share/kit-llama.cpp/, where kit/gguf.py looks for them
#   3. build the llama_cpp binding CPU-only (for k-quant quantization and for loading GGUFs)
# We run llama.cpp's own scripts from where they are extracted; nothing is copied into the repo.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
VERSION=0.3.36
SDIST_NAME="llama_cpp_python-$VERSION"
CACHE=${KIT_CACHE:-$HOME/.cache/unsloth-recipe-kit}/llama-cpp-python
TOOLS="$VENV/share/kit-llama.cpp"
# The wheel depends on these flags, so the cached wheel's folder is named after them.
CMAKE_ARGS=${CMAKE_ARGS:-"-DGGML_CUDA=off -DGGML_NATIVE=off -DLLAMA_BUILD_TESTS=off -DLLAMA_BUILD_EXAMPLES=off"}
export CMAKE_ARGS
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}

[ -x "$PY" ] || { echo "error: $VENV/bin/python missing; run 'make setup' first" >&2; exit 2; }
# (this machine's pip config names extra local indexes; their "ignored" notices are noise)
pip() { "$PY" -m pip "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
# Run quietly, but on failure show the end of what the command printed.
quiet() {
  local log; log=$(mktemp)
  if ! "$@" >"$log" 2>&1; then
    echo "error: '$*' failed; last lines:" >&2; tail -n 40 "$log" >&2; rm -f "$log"; return 1
  fi
  rm -f "$log"
}
start=$SECONDS
stamp() { echo "gguf-tools: $1 ($((SECONDS - start)) s)"; }

# 1. sdist
mkdir -p "$CACHE"
SDIST="$CACHE/$SDIST_NAME.tar.gz"
if [ -s "$SDIST" ]; then
  stamp "sdist cached at $SDIST"
else
  quiet pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$CACHE"
  [ -s "$SDIST" ] || { echo "error: pip download did not produce $SDIST" >&2; exit 1; }
  stamp "downloaded $SDIST_NAME.tar.gz ($(du -m "$SDIST" | cut -f1) MiB)"
fi

# 2. converter (extracted to a temp folder, then renamed, so a half-extracted tree never counts)
# (an extraction older than the LoRA converter lacks convert_lora_to_gguf.py: extract again)
if [ -f "$TOOLS/.version" ] && [ "$(cat "$TOOLS/.version")" = "$VERSION" ] \
   && [ -f "$TOOLS/convert_lora_to_gguf.py" ]; then
  stamp "converter already in $TOOLS"
else
  mkdir -p "$VENV/share"
  tmp=$(mktemp -d "$VENV/share/.kit-llama.cpp.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  V="$SDIST_NAME/vendor/llama.cpp"
  members=("$V/convert_hf_to_gguf.py" "$V/convert_lora_to_gguf.py" "$V/gguf-py" "$V/LICENSE")
  tar tzf "$SDIST" "$V/conversion/__init__.py" >/dev/null 2>&1 && members+=("$V/conversion")
  tar xzf "$SDIST" -C "$tmp" --strip-components=3 "${members[@]}"
  echo "$VERSION" >"$tmp/.version"
  rm -rf "$TOOLS"
  mv "$tmp" "$TOOLS"
  trap - EXIT
  stamp "extracted llama.cpp's converters into $TOOLS"
fi
# The converter's imports (besides the gguf-py beside it): fail here, not mid-export.
missing=$("$PY" - <<'EOF'
import importlib.util
need = ["torch", "numpy", "transformers", "safetensors", "sentencepiece", "yaml", "tqdm", "requests"]
print(" ".join(m for m in need if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
  echo "gguf-tools: installing the converter's missing imports: $missing"
  declare -A pkg=([yaml]=pyyaml)
  quiet pip install -q $(for m in $missing; do echo "${pkg[$m]:-$m}"; done)
fi
PYTHONPATH="$TOOLS/gguf-py" quiet "$PY" "$TOOLS/convert_hf_to_gguf.py" --help
PYTHONPATH="$TOOLS/gguf-py" quiet "$PY" "$TOOLS/convert_lora_to_gguf.py" --help
stamp "converters run"

# 3. binding
have=$("$PY" -c "import llama_cpp; print(llama_cpp.__version__)" 2>/dev/null || true)
if [ "$have" = "$VERSION" ]; then
  stamp "llama_cpp $VERSION already installed"
else
  WHEELS="$CACHE/wheels-$(echo "$CMAKE_ARGS" | md5sum | cut -c1-8)-py$("$PY" -c 'import sys; print("%d%d" % sys.version_info[:2])')"
  if ! ls "$WHEELS"/llama_cpp_python-"$VERSION"-*.whl >/dev/null 2>&1; then
    command -v cmake >/dev/null || echo "gguf-tools: no system cmake; pip will fetch the cmake package"
    echo "gguf-tools: building llama_cpp $VERSION CPU-only with $CMAKE_BUILD_PARALLEL_LEVEL jobs (~8 min on 2 cores)"
    quiet pip wheel --no-deps "$SDIST" -w "$WHEELS"
    stamp "built the llama_cpp wheel into $WHEELS"
  fi
  # Its runtime deps (numpy, jinja2, typing-extensions, diskcache) resolve under the stack's
  # pins; only diskcache is new.
  quiet pip install -q -c requirements/constraints.txt "$WHEELS"/llama_cpp_python-"$VERSION"-*.whl
  stamp "installed llama_cpp $VERSION"
fi
"$PY" -c "import llama_cpp; assert llama_cpp.llama_model_quantize" >/dev/null
stamp "done"
