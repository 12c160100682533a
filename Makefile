# aiopt: `make run` and `make test` set up .venv on first use (torch 2.13.0 first, then the package
# with its dev extra) and skip the setup afterwards, until pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.aiopt-installed
CONFIG ?= papermill_runs/default.yaml
PYTEST_ARGS ?=

.PHONY: run test lint format lab setup bench clean-reports help
.DEFAULT_GOAL := help

help:
	@echo "make run     run the pipeline on the embedded EUR/USD sample; prints where the report is"
	@echo "make test    run the test suite"
	@echo "make lint    ruff check + format check"
	@echo "make format  ruff format + autofix"
	@echo "make lab     JupyterLab on notebooks/ with this environment as the kernel"
	@echo "make bench   run benchmarks/ (installs the peers of the [bench] extra)"
	@echo "make setup   create/refresh .venv"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "aiopt needs Python >= 3.11; set PYTHON=python3.11 or newer")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: any other version resolves to gigabytes of CUDA wheels
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/aiopt run --config $(CONFIG)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

lab: $(STAMP)
	$(PY) -m ipykernel install --sys-prefix --name aiopt --display-name "aiopt (.venv)" >/dev/null
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,bench]"
	@for script in benchmarks/bench_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean-reports:
	rm -rf reports/*/ papermill_runs/*/
