# Every target installs what it needs into .venv first, so each works on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed
# s3: the tests keep a state on S3 (tests/export/test_s3_state.py, against moto's server).
EXTRAS := test,demo,parquet,sandbox,openlineage,docs,s3
# Exact versions of everything installed, for every supported Python: a new upstream release cannot
# change what a fresh clone installs. `make lock` refreshes it; `make test-latest` tries the newest.
LOCK ?= constraints/constraints.txt
CONSTRAINTS ?= -c $(LOCK)
# Extras that are locked (in the main lock only) but not installed by `make install`: Selenium for the
# browser test, matplotlib for `make bench`'s plot, prodtest for `make prod-test` (Celery, Redis, moto's
# S3 server), and GCS, the other object store users may need for a state or a segment file
# (`pip install -c constraints/constraints.txt '.[gcs]'` resolves). s3 is in EXTRAS: installed, and
# locked in both lock files.
LOCK_EXTRAS := $(EXTRAS),ui,gcs,bench,prodtest
# The oldest supported Airflow: 3.3.0, the floor in setup.cfg (the providers' policy would allow 3.2,
# but the provider needs Task SDK 1.3's Variable.keys; see docs/installation.md), with everything
# else as it was the day after its release (what Airflow's own constraints for it pin), in a lock of
# its own for `make test-oldest`.
AIRFLOW_OLDEST := 3.3.0
AIRFLOW_OLDEST_DAY := 2026-07-07
LOCK_OLDEST := constraints/constraints-oldest.txt
# `make test-oldest` runs on the oldest supported Python too, where the machine has one.
PYTHON_OLDEST ?= $(firstword $(foreach p,python3.10 $(wildcard $(HOME)/.pyenv/versions/3.10*/bin/python3.10),\
    $(shell $(p) -c 'import sys; print(sys.executable)' 2>/dev/null)) $(PYTHON))
#: make pytest PYTEST_ARGS='tests/core -n 2'
PYTEST_ARGS ?=
#: make sandbox PORT=8030
PORT ?= 8025

.PHONY: install test lint typecheck pytest docs demo bench prod-test sandbox lock test-latest test-oldest ui-test clean

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
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test: lint typecheck pytest docs

# The documentation site (docs/, Sphinx + MyST) into build/docs; every warning, broken cross-reference
# included, fails the build.
docs: $(STAMP)
	$(VENV)/bin/sphinx-build -b html -E -W --keep-going -n -q docs build/docs
	@echo "Documentation: build/docs/index.html"

#: make demo DEMO_ARGS=--full (every report key)
demo: $(STAMP)
	$(PY) -m airflow_provider_ciexport.tools.demo $(DEMO_ARGS)

bench: $(STAMP)
	$(UV) pip install --quiet --python $(PY) $(CONSTRAINTS) -e '.[$(EXTRAS),bench]'
	$(PY) benchmarks/run.py $(BENCH_ARGS)
	$(PY) benchmarks/pace.py $(PACE_BENCH_ARGS)
	$(PY) benchmarks/sync.py $(SYNC_BENCH_ARGS)
	$(PY) benchmarks/year.py $(YEAR_BENCH_ARGS)
	$(PY) benchmarks/outcomes.py $(OUTCOMES_BENCH_ARGS)

# A deployment rehearsal, not part of `make test`: Airflow with the CeleryExecutor on two workers,
# PostgreSQL, Redis (Debian's redis-server, installed if missing) and a local S3 server on 127.0.0.1,
# running exports through the scheduler (benchmarks/prod_test.py; docs/deploying.md).
#: make prod-test PROD_TEST_ARGS="--profiles 20000 --scale 20"
prod-test: $(STAMP)
	$(UV) pip install --quiet --python $(PY) $(CONSTRAINTS) -e '.[$(EXTRAS),prodtest]'
	$(PY) benchmarks/prod_test.py $(PROD_TEST_ARGS)

sandbox: $(STAMP)
	@$(PY) -m airflow_provider_ciexport.tools.sandbox --port $(PORT)

# Re-resolve every dependency to its newest release (for Python 3.10 and up) and pin the result;
# then the oldest supported Airflow with the releases of its day.
lock: $(STAMP)
	$(UV) pip compile --quiet --universal --python-version 3.10 --upgrade --custom-compile-command 'make lock' \
	    $(foreach extra,$(subst $(comma), ,$(LOCK_EXTRAS)),--extra $(extra)) setup.cfg -o $(LOCK)
	echo 'apache-airflow==$(AIRFLOW_OLDEST)' > $(VENV)/airflow-oldest.txt
	$(UV) pip compile --quiet --universal --python-version 3.10 --upgrade --custom-compile-command 'make lock' \
	    --exclude-newer $(AIRFLOW_OLDEST_DAY)T00:00:00Z -c $(VENV)/airflow-oldest.txt \
	    $(foreach extra,$(subst $(comma), ,$(EXTRAS)),--extra $(extra)) setup.cfg -o $(LOCK_OLDEST)

# The test suite against the newest releases of everything, in a venv of its own (.venv-latest).
test-latest:
	rm -f .venv-latest/.installed
	$(MAKE) pytest VENV=.venv-latest CONSTRAINTS='--upgrade --refresh'

# The test suite against the oldest supported Airflow and Python, pinned, in .venv-oldest. It leaves
# out the tests marked version_independent: they import no Airflow and check what no Airflow or Python
# version changes (the source's shape, the built distributions, the sandbox on its own, which every
# integration test here runs on the oldest versions anyway), so `make test` proves them once; and the
# variants marked airflow_covered_by_sibling, which use Airflow as a sibling variant that runs here does.
test-oldest:
	@$(PYTHON_OLDEST) -c 'import sys; v = sys.version_info[:2]; print("test-oldest: Airflow $(AIRFLOW_OLDEST) on Python %d.%d" % v + ("" if v == (3, 10) else " (no Python 3.10 on this machine)"))'
	$(MAKE) pytest VENV=.venv-oldest LOCK=$(LOCK_OLDEST) PYTHON=$(PYTHON_OLDEST) PYTEST_ARGS='-m "not version_independent and not airflow_covered_by_sibling"'

# The Airflow UI in headless Chromium (installs Debian's chromium and chromium-driver if missing).
ui-test: $(STAMP)
	sh tests/ui/install_browser.sh
	$(UV) pip install --quiet --python $(PY) $(CONSTRAINTS) -e '.[$(EXTRAS),ui]'
	CIEXPORT_UI_TEST=1 $(VENV)/bin/pytest tests/ui -m ui -n 0 --timeout 900 -p no:cacheprovider $(UI_ARGS)

clean:
	rm -rf $(VENV) .venv-latest .venv-oldest .airflow .mypy_cache .ruff_cache .pytest_cache build/ui build/docs

comma := ,
