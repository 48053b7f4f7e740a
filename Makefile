# Two commands:  make recipe=chat [ARGS="key=value ..."]   and   make test
# Each creates .venv/ with the pinned stack first if it is missing or out of date.
recipe ?= chat
ARGS ?=
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kit-stack

.DEFAULT_GOAL := run
.PHONY: run test test-fast lint setup clean

$(STAMP): requirements/stack.txt requirements/constraints.txt scripts/setup_venv.sh pyproject.toml
	bash scripts/setup_venv.sh
	touch $@

setup: $(STAMP)

run: $(STAMP)
	@test -f recipes/$(recipe).py || { echo "error: no recipe '$(recipe)'; have: $$(ls recipes | sed -n 's/\.py$$//p' | tr '\n' ' ')" >&2; exit 2; }
	$(PY) recipes/$(recipe).py $(ARGS)

test: $(STAMP)
	$(PY) -m ruff check kit recipes tests scripts
	$(PY) -m pytest -q $(ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check kit recipes tests scripts

clean:
	rm -rf outputs .pytest_cache .ruff_cache
