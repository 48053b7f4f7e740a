# Two commands:  make recipe=chat [ARGS="key=value ..."]   and   make test
# Each creates .venv/ with the pinned stack first if it is missing or out of date.
recipe ?= chat
ARGS ?=
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kit-stack
LLAMA_STAMP := $(VENV)/.kit-llama
# llama.cpp's converter and the llama-cpp-python binding (built from the PyPI sdist, minutes on
# 2 cores, cached): only runs that export GGUF, and the tests, need them.
NEEDS_LLAMA := $(if $(findstring gguf,$(ARGS))$(findstring export=all,$(ARGS)),$(LLAMA_STAMP))

.DEFAULT_GOAL := run
.PHONY: run plan bench gpu-check gpu-bundle gpu-standin notebooks test test-fast lint setup gguf-tools clean check-recipe

$(STAMP): requirements/stack.txt requirements/constraints.txt scripts/setup_venv.sh pyproject.toml
	bash scripts/setup_venv.sh
	touch $@

setup: $(STAMP)

$(LLAMA_STAMP): $(STAMP) scripts/setup_llama.sh
	bash scripts/setup_llama.sh
	touch $@

gguf-tools: $(LLAMA_STAMP)

check-recipe:
	@test -f recipes/$(recipe).py || { echo "error: no recipe '$(recipe)'; have: $$(ls recipes | sed -n '/^_/!s/\.py$$//p' | tr '\n' ' ')" >&2; exit 2; }

run: $(STAMP) $(NEEDS_LLAMA) check-recipe
	$(PY) recipes/$(recipe).py $(ARGS)

# The memory plan for a recipe and card, without loading weights: make plan recipe=chat ARGS="model=... gpu_memory_gib=15"
plan: $(STAMP) check-recipe
	@$(PY) recipes/$(recipe).py --plan $(ARGS)

# kit's training path against plain transformers+PEFT+bitsandbytes (bench/bench.py --help).
# A GPU: Llama-3.1-8B shapes per memory budget; CPU: a tiny shape, full and chat-length rows, a few minutes.
bench: $(STAMP)
	@if nvidia-smi >/dev/null 2>&1; then $(PY) bench/bench.py suite --shape 8b --seq 2048 $(ARGS); \
	else $(PY) bench/bench.py suite --shape tiny --seq 256 --batch 4 --steps 8 --out outputs/bench-cpu.json $(ARGS); fi

# Prove the GPU path on the card at hand (bench/gpu_check.py): speed on 8B shapes, each recipe end
# to end in 4-bit; outputs/gpu-check.json and .md. Needs no network: on a GPU machine without the
# stack, it installs the wheels `make gpu-bundle` gathered into .gpu/ beforehand.
gpu-check:
	bash scripts/gpu_check.sh $(ARGS)

gpu-bundle: $(STAMP)
	bash scripts/gpu_bundle.sh

# Before spending a GPU's minutes: the offline GPU machine stood in for on CPU (a Python with only
# its packages, the bundle installed as there, no network), then gpu-check's CPU form there.
gpu-standin: $(STAMP)
	bash scripts/gpu_standin.sh $(ARGS)

# Regenerate notebooks/ from the recipes (tests fail while they are out of date).
notebooks: $(STAMP)
	$(PY) scripts/make_notebooks.py

# One pytest-xdist worker per core (fixtures that train something are made once for all:
# tests/conftest.py's made_once).
WORKERS ?= $(shell nproc 2>/dev/null || echo 1)

test: $(STAMP) $(LLAMA_STAMP)
	$(PY) -m ruff check kit recipes tests scripts bench
	$(PY) -m pytest -q -n $(WORKERS) --dist worksteal --durations=20 $(ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -n $(WORKERS) --dist worksteal -m "not slow" $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check kit recipes tests scripts bench

clean:
	rm -rf outputs .pytest_cache .ruff_cache
