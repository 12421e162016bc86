# The verbs the README tells people to run. `make demo` and `make test` are all a new user needs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Label Studio (the review queue's labeling tool) lives in its own environment: its pins clash.
LS_VENV ?= .venv-label-studio
LS_STAMP := $(LS_VENV)/.installed-stamp
export MASKFIND_HOME ?= $(CURDIR)/.maskfind

.PHONY: install lock label-studio demo test test-slow test-all lint format ui docs bench clean

# constraints.txt pins every package to the version the README's numbers were measured with
# (`make lock` writes it); a CPU-only machine can take torch from PyTorch's CPU index first
# (docs/installing.md): the pins match its `+cpu` builds too.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade -c constraints.txt pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,lite0,lite1,lite2]'
	touch $(STAMP)

# The environment, then a database with every migration applied (`label-studio version` migrates
# and exits): a server starts from a copy of it in seconds (maskfind_pipeline/labeling/server.py).
$(LS_STAMP): deploy/label-studio/requirements.txt deploy/label-studio/constraints.txt
	test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LS_VENV)/bin/python -m pip install --quiet -r deploy/label-studio/requirements.txt \
		-c deploy/label-studio/constraints.txt
	rm -rf $(LS_VENV)/template.tmp && mkdir -p $(LS_VENV)/template.tmp
	LABEL_STUDIO_BASE_DATA_DIR=$(abspath $(LS_VENV))/template.tmp LATEST_VERSION_CHECK=false \
		COLLECT_ANALYTICS=false $(LS_VENV)/bin/label-studio version >/dev/null
	mv $(LS_VENV)/template.tmp/label_studio.sqlite3 $(LS_VENV)/template.sqlite3
	rm -rf $(LS_VENV)/template.tmp
	touch $(LS_STAMP)

label-studio: $(LS_STAMP)

install: $(STAMP) $(LS_STAMP)

# Pin what the environment holds now (after changing dependencies in pyproject.toml and
# upgrading them in $(VENV)); commit constraints.txt with the change.
lock:
	test -x $(PY) || { echo "no $(VENV): run make install first" >&2; exit 1; }
	{ echo "# The versions \`make install\` installs (pip constraints), written by \`make lock\` from"; \
	  echo "# an installed $(VENV) (Python $$($(PY) -c 'import platform; print(platform.python_version())'), $$(uname -sm)). Do not edit by hand."; \
	  $(PY) -m pip freeze --all --exclude-editable --disable-pip-version-check; } > constraints.txt

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

# Label Studio beside Dagster and MLflow (loopback; LABEL_STUDIO=0 leaves it out).
ui: install
	@if [ "$(LABEL_STUDIO)" = "0" ]; then exec $(VENV)/bin/maskfind ui; fi; \
	$(VENV)/bin/maskfind review label-studio & ls_pid=$$!; \
	trap 'kill $$ls_pid 2>/dev/null; wait $$ls_pid' EXIT INT TERM; \
	$(VENV)/bin/maskfind ui

# The documentation site in site/; --strict fails on a broken link between pages.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

bench: install
	$(PY) -m bench.ingest
	$(PY) -m bench.dataset
	$(PY) -m bench.loader
	$(PY) -m bench.train

clean:
	rm -rf $(VENV) $(LS_VENV) .pytest_cache .ruff_cache *.egg-info site
