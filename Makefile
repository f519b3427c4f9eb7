# make demo: install, train on the embedded digits, fuse, deploy (no network needed beyond PyPI)
# make test: install with dev extras, run the tests that are not marked slow (the README's commands included) on
# every core; make test-slow: the slow ones; make test-all: both (CI runs both, .ci/run)
# make test-min: the fast tests on the lowest versions pyproject.toml allows; make lock: refresh constraints.txt
# make lint: ruff (lint + format check) and mypy, with the settings in pyproject.toml
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= logs/demo-make
# the versions the suite was run with (make lock); `make install CONSTRAINTS=` installs without them (your own torch)
CONSTRAINTS ?= constraints.txt
PIN := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
MIN_VENV ?= .venv-min

# pytest-xdist workers (-n auto: one per core)
TEST_WORKERS ?= auto

.PHONY: install install-dev demo lint test test-fast test-slow test-all test-min lock gpu-check clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

install: $(VENV)/bin/python
	$(PY) -m pip install --quiet $(PIN) -e '.[serve,search,timm]'

install-dev: $(VENV)/bin/python
	$(PY) -m pip install --quiet $(PIN) -e '.[dev]'

demo: install
	rm -rf $(DEMO_DIR)
	$(PY) train.py experiment=demo hydra.run.dir=$(DEMO_DIR)/train
	$(PY) deploy.py ckpt=$(DEMO_DIR)/train hydra.run.dir=$(DEMO_DIR)/deploy

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: install-dev
	$(PY) -m pytest -n $(TEST_WORKERS) -m "not slow"

# the unit tests that are not slow: the edit-and-check loop (no training run, no README commands)
test-fast: install-dev
	$(PY) -m pytest -n $(TEST_WORKERS) -m "not slow" tests/unit

test-slow: install-dev
	$(PY) -m pytest -n $(TEST_WORKERS) -m slow

test-all: install-dev
	$(PY) -m pytest -n $(TEST_WORKERS)

# the lowest versions the bounds in pyproject.toml allow for every direct dependency (uv's lowest-direct resolution),
# in a venv of their own; a bound that is too low fails here
test-min:
	rm -rf $(MIN_VENV)
	$(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install --quiet uv
	$(MIN_VENV)/bin/python -m uv pip install --quiet --python $(MIN_VENV)/bin/python --resolution lowest-direct -e '.[dev]'
	$(MIN_VENV)/bin/python -m pytest -n $(TEST_WORKERS) -m "not slow" --ignore=tests/integration/test_readme.py

# constraints.txt := pip freeze of $(VENV) (run make test first), marked for its Python version (other Pythons ignore
# it). Newer versions: rm -rf $(VENV); make install-dev CONSTRAINTS=; make test; make lock
lock: $(VENV)/bin/python
	@pyver=$$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	{ echo "# The versions make test was run with (make lock: pip freeze of $(VENV)), for Python $$pyver; used by"; \
	  echo "# make install / install-dev (pip install -c constraints.txt). Without them: make install CONSTRAINTS="; \
	  $(PY) -m pip freeze --exclude-editable | sed "s/\$$/ ; python_version == \"$$pyver\"/"; } > constraints.txt
	@echo "constraints.txt: $$(grep -vc '^#' constraints.txt) pinned packages"

clean:
	rm -rf logs .pytest_cache .hypothesis

# every GPU path end to end on one GPU (generated data, ~5 min): train with each preset, fuse, deploy with each option
gpu-check: install-dev
	$(PY) scripts/gpu_check.py
