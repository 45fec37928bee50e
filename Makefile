# Every target installs what it needs into .venv first, so each works on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed
EXTRAS := test,demo,parquet,sandbox,openlineage,docs
# Exact versions of everything installed, for every supported Python: a new upstream release cannot
# change what a fresh clone installs. `make lock` refreshes it; `make test-latest` tries the newest.
LOCK := constraints/constraints.txt
CONSTRAINTS ?= -c $(LOCK)
#: make sandbox PORT=8030
PORT ?= 8025

.PHONY: install test lint typecheck pytest docs demo bench sandbox lock test-latest ui-test clean

$(STAMP): setup.cfg pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check uv
	$(UV) pip install --quiet --python $(PY) $(CONSTRAINTS) -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(VENV)/bin/pytest

test: lint typecheck pytest docs

# The documentation site (docs/, Sphinx + MyST) into build/docs; every warning, broken cross-reference
# included, fails the build.
docs: $(STAMP)
	$(VENV)/bin/sphinx-build -b html -E -W --keep-going -n -q docs build/docs
	@echo "Documentation: build/docs/index.html"

#: make demo DEMO_ARGS=--full (every report key)
demo: $(STAMP)
	$(PY) -m airflow_provider_ciexport.demo $(DEMO_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/run.py $(BENCH_ARGS)
	$(PY) benchmarks/sync.py $(SYNC_BENCH_ARGS)

sandbox: $(STAMP)
	@$(PY) -m airflow_provider_ciexport.sandbox --port $(PORT)

# Re-resolve every dependency to its newest release (for Python 3.10 and up) and pin the result.
lock: $(STAMP)
	$(UV) pip compile --quiet --universal --python-version 3.10 --upgrade \
	    $(foreach extra,$(subst $(comma), ,$(EXTRAS)) ui,--extra $(extra)) setup.cfg -o $(LOCK)

# The test suite against the newest releases of everything, in a venv of its own (.venv-latest).
test-latest:
	rm -f .venv-latest/.installed
	$(MAKE) pytest VENV=.venv-latest CONSTRAINTS='--upgrade --refresh'

# The Airflow UI in headless Chromium (installs Debian's chromium and chromium-driver if missing).
ui-test: $(STAMP)
	sh tests/ui/install_browser.sh
	$(UV) pip install --quiet --python $(PY) $(CONSTRAINTS) -e '.[$(EXTRAS),ui]'
	CIEXPORT_UI_TEST=1 $(VENV)/bin/pytest tests/ui -m ui -n 0 --timeout 900 -p no:cacheprovider $(UI_ARGS)

clean:
	rm -rf $(VENV) .venv-latest .airflow .mypy_cache .ruff_cache .pytest_cache build/ui build/docs

comma := ,
