# `make run` starts the whole system on this machine; `make test` runs every test.
# Both bootstrap .venv from pyproject.toml (re-installed when pyproject.toml changes); `make test`
# also installs clients/js's npm packages (`npm ci`) where npm exists, for the TypeScript client's
# tests (tests/js: they skip, saying why, without Node or Chromium).
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
JS := clients/js
JS_STAMP := $(JS)/node_modules/.package-lock.json

.PHONY: run test lint fmt bench clean js

# setup.py and the .c and .h files: the C part, built by the install (optional: skipped, with
# the Python implementation in use, where there is no C compiler or no OpenSSL headers)
$(STAMP): pyproject.toml setup.py relay/protocol/_aead.c relay/protocol/_aead.h relay/server/_datagrams.c \
		relay/server/_ratelimit.c relay/server/_ratelimit.h relay/server/_lane.c
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

# compileall: as for the tests (below), where PYTHONDONTWRITEBYTECODE is set `relay dev` and the
# relays it starts would otherwise compile the project's modules at every start
run: $(STAMP)
	$(VENV)/bin/python -m compileall -q relay
	$(VENV)/bin/relay dev

$(JS_STAMP): $(JS)/package-lock.json
	cd $(JS) && npm ci --no-audit --no-fund

js:
	@if ! command -v npm >/dev/null; then echo "npm not found: the TypeScript client's tests will skip"; \
	elif ! $(MAKE) --no-print-directory $(JS_STAMP); then echo "npm ci failed: those tests will skip"; fi

# The tests run in two parts: those that measure nothing in $(TEST_WORKERS) workers (pytest-xdist,
# a module's tests in one worker: their module fixtures run once; the longest files first, in
# tests/conftest.py's order), then those marked `serial` (they measure the relay's CPU and
# latency) one at a time, alone on the machine. PYTEST_ARGS goes to both; a part it leaves empty
# (pytest's exit status 5) is no failure. Each part names its slowest tests (--durations): the
# suite is held to about 10 minutes on 2 cores.
# compileall: the bytecode of the project's own modules, written once, where an environment with
# PYTHONDONTWRITEBYTECODE (this one's) would have each relay and tool the tests start compile them.
# Three workers on two cores: the parallel part's tests mostly wait (processes starting, timeouts,
# peers), and two workers left the two cores 40-60% idle through most of it.
TEST_WORKERS ?= 3

test: $(STAMP) js
	$(VENV)/bin/ruff check relay loadtest tests
	$(VENV)/bin/python -m compileall -q relay loadtest
	$(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not serial" --no-loadscope-reorder --durations=15 $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(VENV)/bin/python -m pytest -m serial --durations=10 $(PYTEST_ARGS) || [ $$? -eq 5 ]

lint: $(STAMP)
	$(VENV)/bin/ruff check relay loadtest tests

fmt: $(STAMP)
	$(VENV)/bin/ruff format relay loadtest tests

clean:
	rm -rf $(VENV) .relay .pytest_cache $(JS)/node_modules $(JS)/dist $(JS)/build build relay/*/_*.so
