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

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/relay dev

$(JS_STAMP): $(JS)/package-lock.json
	cd $(JS) && npm ci --no-audit --no-fund

js:
	@if ! command -v npm >/dev/null; then echo "npm not found: the TypeScript client's tests will skip"; \
	elif ! $(MAKE) --no-print-directory $(JS_STAMP); then echo "npm ci failed: those tests will skip"; fi

test: $(STAMP) js
	$(VENV)/bin/ruff check relay loadtest tests
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check relay loadtest tests

fmt: $(STAMP)
	$(VENV)/bin/ruff format relay loadtest tests

clean:
	rm -rf $(VENV) .relay .pytest_cache $(JS)/node_modules $(JS)/dist $(JS)/build
