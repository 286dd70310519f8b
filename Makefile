# wsup — developer entry points. Each target creates .venv on first use and
# installs exactly what uv.lock pins (uv sync --locked); `make lock` is the only
# target that moves a version.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8765

# uv from PATH when there is one; else this pinned release, installed with pip
# into a venv of its own (.tools/), never into the project's environment.
UV_VERSION := 0.13.9
TOOLS      := .tools
UV         ?= $(shell command -v uv 2>/dev/null || echo $(TOOLS)/bin/uv)
# Never download a Python: the one named by PYTHON is used.
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
SYNC := $(UV) sync --locked --python $(PYTHON)

# The unit suite again, against the lowest versions pyproject.toml allows
# (tests/lowest-direct.txt, written by `make lock`).
LOWEST_VENV := .venv-lowest
LOWEST_REQS := tests/lowest-direct.txt

.PHONY: demo test test-suite test-lowest lint typecheck check bench test-deps \
	lock lock-check clean docs fuzz soak attacks

$(TOOLS)/bin/uv:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check 'uv==$(UV_VERSION)'

# One line, naming the fix, when pyproject.toml and uv.lock disagree.
lock-check: | $(UV)
	@$(UV) lock --check --quiet --python $(PYTHON) 2>/dev/null || { \
	  echo "wsup: uv.lock does not match pyproject.toml: run 'make lock' and commit uv.lock" >&2; \
	  exit 1; }

# The demo needs the library and uvloop only; --inexact keeps the dev tools of a
# `make test` venv in place.
$(VENV)/.installed: pyproject.toml uv.lock | lock-check
	$(SYNC) --inexact --no-default-groups --extra uvloop
	touch $@

$(VENV)/.installed-dev: pyproject.toml uv.lock | lock-check
	$(SYNC) --all-extras
	touch $@ $(VENV)/.installed

demo: lock-check $(VENV)/.installed
	@echo "wsup chat demo: open http://$(HOST):$(PORT)/ in a browser (Ctrl-C stops it)"
	$(BIN)/wsup serve examples.chat:app --host $(HOST) --port $(PORT)

# What the tests need beyond Python packages: redis-server, prometheus/promtool,
# Node's ws client and Chromium. Each is installed only when missing.
test-deps: $(VENV)/.installed-dev
	@./.ci/test-deps

lint: lock-check $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: lock-check $(VENV)/.installed-dev
	$(BIN)/mypy

check: lint typecheck

test-suite: test-deps
	$(BIN)/python -m pytest

$(LOWEST_VENV)/.installed: $(LOWEST_REQS) | $(UV)
	$(UV) venv --quiet --allow-existing --python $(PYTHON) $(LOWEST_VENV)
	$(UV) pip sync --quiet --python $(LOWEST_VENV)/bin/python $(LOWEST_REQS)
	$(UV) pip install --quiet --no-deps --python $(LOWEST_VENV)/bin/python -e .
	touch $@

# Unit tests only: the end-to-end tests drive browsers, Prometheus and Redis
# servers, and the bench's tests its peer servers and load generators (dev
# dependencies, not installed here): neither says more about the library's
# lower bounds.
test-lowest: lock-check $(LOWEST_VENV)/.installed
	@$(LOWEST_VENV)/bin/python -c 'import importlib.metadata as m; \
	  print("lowest-direct:", ", ".join(f"{d}=={m.version(d)}" for d in \
	  ("anyio", "structlog", "prometheus-client", "websockets", "sniffio", "uvloop", "redis", "trio")))'
	$(LOWEST_VENV)/bin/python -m pytest -q -p no:cacheprovider --ignore=tests/e2e --ignore=tests/bench

# The docs site (mkdocs.yml): docs/ and the API reference from the docstrings,
# into site/. Strict: a broken link or anchor, a page left out of the nav, a
# docstring that does not render, or a public name missing from the reference
# fails it. About ten seconds.
docs: lock-check $(VENV)/.installed-dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	$(BIN)/python docs/_tools/docs_site.py site
	@echo "docs: site/index.html"

# The main suite and the lowest-direct run side by side: the suite spends most of
# its time waiting (child servers, browsers, timers), so on two cores the pair takes
# little longer than the suite alone. --output-sync keeps each run's output whole.
test: lock-check check docs
	$(MAKE) --no-print-directory -j2 --output-sync=target test-suite test-lowest

bench: lock-check $(VENV)/.installed-dev
	$(BIN)/python -m bench

# Property-based fuzzing of the handshake and frame paths (tests/fuzz) under the
# `fuzz` hypothesis profile: FUZZ_SECONDS in all, shared by the fuzz tests, then a
# table of the examples each ran. `make test` runs the same tests, a few dozen
# examples each. The per-test timeout only guards against a hang.
FUZZ_SECONDS ?= 300
fuzz: lock-check $(VENV)/.installed-dev
	WSUP_FUZZ_SECONDS=$(FUZZ_SECONDS) $(BIN)/python -m pytest tests/fuzz -q -p no:cacheprovider \
	  --timeout=$$(( $(FUZZ_SECONDS) + 600 ))

# A bounded soak of `wsup serve` under churn, slow readers, floods, ping floods and
# idle holders together (bench/soak.py): prints RSS, descriptors, CPU and loop lag
# over time, and fails when memory grows under steady load or descriptors stay open.
SOAK_SECONDS ?= 300
soak: lock-check $(VENV)/.installed-dev
	$(BIN)/python -m bench.soak --seconds $(SOAK_SECONDS)

# Each limit against the attack it answers, wsup beside the websockets server
# (bench/attacks.py): RSS, descriptors and CPU before, at the peak and after, and
# what the hostile clients saw. About ten minutes; 127.0.0.1 only.
attacks: lock-check $(VENV)/.installed-dev
	$(BIN)/python -m bench.attacks

# Re-resolve on purpose; uv prints each package that moved. `make lock UPGRADE=1`
# also takes newer releases of everything already locked.
lock: | $(UV)
	$(UV) lock --python $(PYTHON) $(if $(UPGRADE),--upgrade)
	@# The library's direct dependencies at their lowest; the test tools as locked.
	@tools=$$(mktemp) && trap 'rm -f "$$tools"' EXIT && \
	$(UV) export --quiet --frozen --only-group dev --no-emit-project --no-hashes \
	  --no-header --output-file "$$tools" && \
	$(UV) pip compile --quiet --python $(PYTHON) --python-version 3.11 \
	  --resolution lowest-direct --all-extras --no-annotate --custom-compile-command "make lock" \
	  --output-file $(LOWEST_REQS) pyproject.toml "$$tools"
	@echo "lowest-direct pins in $(LOWEST_REQS):"
	@grep -E '^(anyio|structlog|prometheus-client|websockets|httptools|sniffio|uvloop|redis|trio)==' $(LOWEST_REQS)

clean:
	rm -rf $(VENV) $(LOWEST_VENV) $(TOOLS) .mypy_cache .pytest_cache .ruff_cache site \
	  bench/node_modules tests/e2e/node_modules
