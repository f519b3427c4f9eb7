# make demo: install, train on the embedded digits, fuse, deploy (no network needed beyond PyPI)
# make test: install with dev extras, run the tests that are not marked slow (the README's commands included) on
# every core; make test-slow: the slow ones; make test-all: both (CI runs both, .ci/run)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= logs/demo-make

# pytest-xdist workers (-n auto: one per core)
TEST_WORKERS ?= auto

.PHONY: install install-dev demo test test-fast test-slow test-all gpu-check clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

install: $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[serve,search,timm]'

install-dev: $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[dev]'

demo: install
	rm -rf $(DEMO_DIR)
	$(PY) train.py experiment=demo hydra.run.dir=$(DEMO_DIR)/train
	$(PY) deploy.py ckpt=$(DEMO_DIR)/train/checkpoints/last.ckpt hydra.run.dir=$(DEMO_DIR)/deploy

test: install-dev
	$(PY) -m pytest -n $(TEST_WORKERS) -m "not slow"

# the unit tests that are not slow: the edit-and-check loop (no training run, no README commands)
test-fast: install-dev
	$(PY) -m pytest -n $(TEST_WORKERS) -m "not slow" tests/unit

test-slow: install-dev
	$(PY) -m pytest -n $(TEST_WORKERS) -m slow

test-all: install-dev
	$(PY) -m pytest -n $(TEST_WORKERS)

clean:
	rm -rf logs .pytest_cache .hypothesis

# every GPU path end to end on one GPU (generated data, ~5 min): train with each preset, fuse, deploy with each option
gpu-check: install-dev
	$(PY) scripts/gpu_check.py
