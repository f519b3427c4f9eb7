# make demo: install, train on the embedded digits, fuse, deploy (no network needed beyond PyPI)
# make test: install with dev extras, run the whole test suite
# make lint: ruff (lint + format check) and mypy, with the settings in pyproject.toml
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= logs/demo-make

.PHONY: install install-dev demo lint test test-fast gpu-check clean

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

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: install-dev
	$(PY) -m pytest

test-fast: install-dev
	$(PY) -m pytest -m "not slow"

clean:
	rm -rf logs .pytest_cache .hypothesis

# every GPU path end to end on one GPU (generated data, ~5 min): train with each preset, fuse, deploy with each option
gpu-check: install-dev
	$(PY) scripts/gpu_check.py
