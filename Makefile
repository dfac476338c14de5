# `make run` starts the whole system on this machine; `make test` runs every test.
# Both bootstrap .venv from pyproject.toml (re-installed when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test lint fmt bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/relay dev

test: $(STAMP)
	$(VENV)/bin/ruff check relay loadtest tests
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check relay loadtest tests

fmt: $(STAMP)
	$(VENV)/bin/ruff format relay loadtest tests

clean:
	rm -rf $(VENV) .relay .pytest_cache
