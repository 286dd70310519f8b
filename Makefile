# wsup — developer entry points. Each target creates .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
HOST   ?= 127.0.0.1
PORT   ?= 8765

.PHONY: demo test lint typecheck check bench test-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[uvloop]'
	touch $@

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	@echo "wsup chat demo: open http://$(HOST):$(PORT)/ in a browser (Ctrl-C stops it)"
	$(BIN)/wsup serve examples.chat:app --host $(HOST) --port $(PORT)

# What the tests need beyond Python packages: redis-server, prometheus/promtool,
# Node's ws client and Chromium. Each is installed only when missing.
test-deps: $(STAMP)
	@./.ci/test-deps

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck

test: test-deps check
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache bench/node_modules tests/e2e/node_modules
