# aiopt: `make run` and `make test` set up .venv on first use from the committed lock file
# (requirements.lock: exact versions of every package, the CPU torch wheel included) and skip the
# setup afterwards, until the lock changes. `make lock` refreshes the lock from pyproject.toml.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.aiopt-installed
LOCK := requirements.lock
PIP_VERSION := 26.3
# the CPU build of torch: any other torch resolves to gigabytes of CUDA wheels
TORCH := torch==2.13.0+cpu
CONFIG ?= papermill_runs/default.yaml
PYTEST_ARGS ?=
# make test fails below this total coverage of aiopt_lib (pytest-cov's figure: lines and branches
# together, [tool.coverage] in pyproject.toml); COV_FAIL_UNDER=0 for a subset via PYTEST_ARGS
COV_FAIL_UNDER ?= 90

.PHONY: run test lint format lab setup bench clean-reports help lock check-lock test-latest docs
.DEFAULT_GOAL := help

help:
	@echo "make run     run the pipeline on the embedded EUR/USD sample; prints where the report is"
	@echo "make test    run the test suite with line and branch coverage (coverage.json; fails below 90%)"
	@echo "make lint    ruff check + format check + the import-layer contract (lint-imports)"
	@echo "make format  ruff format + autofix"
	@echo "make docs    the API site into site/ (mkdocs, warnings are errors, offline; see docs/)"
	@echo "make lab     JupyterLab on notebooks/ with this environment as the kernel"
	@echo "make bench   run benchmarks/ (installs the peers of the [bench] extra)"
	@echo "make setup   create/refresh .venv"
	@echo "make lock    recompile requirements.lock from pyproject.toml (newest allowed versions)"
	@echo "make test-latest  the suite on the newest allowed versions, in .venv-latest (not in CI)"

check-lock:
	@$(PYTHON) .ci/lock.py check

$(STAMP): $(LOCK) | check-lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "aiopt needs Python >= 3.11; set PYTHON=python3.11 or newer")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet pip==$(PIP_VERSION)
	# exactly the locked versions, nothing resolved today
	$(PY) -m pip install --quiet --no-deps -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

setup: $(STAMP)

run: check-lock $(STAMP)
	$(VENV)/bin/aiopt run --config $(CONFIG)

test: check-lock $(STAMP)
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest --cov --cov-report=term:skip-covered --cov-report=json:coverage.json \
	  --cov-fail-under=$(COV_FAIL_UNDER) $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# site/index.html opens from disk; nothing is fetched from the network while building or reading
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

lab: $(STAMP)
	$(PY) -m ipykernel install --sys-prefix --name aiopt --display-name "aiopt (.venv)" >/dev/null
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

bench: check-lock $(STAMP)
	@for script in benchmarks/bench_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean-reports:
	rm -rf reports/*/ papermill_runs/*/

# uv resolves for CPython 3.11 on x86-64 Linux; the CPU torch wheel comes from the find-links
# folder (PyPI's torch of the same version is the CUDA build)
TORCH_WHEELS ?= /opt/wheels
UV_VERSION := 0.13.9
lock:
	test -x .venv-lock/bin/uv || ($(PYTHON) -m venv .venv-lock && .venv-lock/bin/pip install --quiet uv==$(UV_VERSION))
	echo "$(TORCH)" > .venv-lock/torch-constraint.txt
	.venv-lock/bin/uv pip compile pyproject.toml --all-extras --quiet \
	  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	  --find-links $(TORCH_WHEELS) --constraints .venv-lock/torch-constraint.txt \
	  --no-header --output-file $(LOCK)
	$(PYTHON) .ci/lock.py stamp
	@echo "requirements.lock refreshed: run make test, then commit it"

# drift watch: the newest versions pyproject.toml allows, in a separate environment
test-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install --quiet --upgrade pip
	.venv-latest/bin/python -m pip install --quiet "$(TORCH)"
	.venv-latest/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e ".[dev,bench]"
	.venv-latest/bin/python -m pip freeze --exclude-editable > .venv-latest/versions.txt
	AIOPT_TEST_LATEST=1 .venv-latest/bin/python -m pytest $(PYTEST_ARGS)
