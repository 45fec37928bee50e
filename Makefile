# Every target installs what it needs into .venv first, so each works on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint typecheck pytest demo bench sandbox clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check uv
	$(VENV)/bin/uv pip install --quiet --python $(PY) -e '.[test,demo,parquet]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(VENV)/bin/pytest

test: lint typecheck pytest

demo: $(STAMP)
	$(PY) -m airflow_provider_ciexport.demo

bench: $(STAMP)
	$(PY) benchmarks/run.py $(BENCH_ARGS)

sandbox: $(STAMP)
	$(PY) -m airflow_provider_ciexport.sandbox

clean:
	rm -rf $(VENV) .airflow .mypy_cache .ruff_cache .pytest_cache
