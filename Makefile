# Two commands do all set-up on a fresh machine with Python 3.11 and pip: `make demo`, `make test`.
# Every dependency version comes from constraints.txt (also applied to build isolation).

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONHASHSEED := 0
PYTEST := $(BIN)/python -m pytest -q
BACKEND ?= numpy
DEVICE ?= cpu

.PHONY: help install test lint test-core demo conformance clean

help:
	@echo "make demo    run the demonstration (creates $(VENV) on first use)"
	@echo "make test    lint, unit tests, conformance suite over every CPU backend"
	@echo "make conformance BACKEND=name DEVICE=cpu|cuda"

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[all,test]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test-core: $(STAMP)
	$(PYTEST) tests/core

test: lint test-core

demo: $(STAMP)
	$(BIN)/python examples/demo.py

conformance: $(STAMP)
	$(PYTEST) conformance --backend=$(BACKEND) --device=$(DEVICE)

clean:
	rm -rf $(VENV) build dist .pytest_cache .hypothesis
