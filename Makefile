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

.PHONY: help install test lint test-core test-torch test-jax test-keras test-docs demo conformance conformance-ci clean

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

test-jax: $(STAMP)
	$(PYTEST) tests/jax

test-torch: $(STAMP)
	$(PYTEST) tests/torch

# One process per Keras backend: KERAS_BACKEND is read once, at the first import of keras.
test-keras: $(STAMP)
	for b in tensorflow jax torch; do KERAS_BACKEND=$$b $(PYTEST) tests/keras || exit 1; done

# The docs' ```python blocks (every docs/*.md page) and the demonstration's own checks.
test-docs: $(STAMP)
	$(PYTEST) tests/docs

test: lint test-core conformance-ci test-jax test-torch test-keras test-docs

demo: $(STAMP)
	$(BIN)/python examples/demo.py

conformance: $(STAMP)
	$(PYTEST) conformance --backend=$(BACKEND) --device=$(DEVICE)

# The ci profile over every CPU backend, each in its own process (keras reads KERAS_BACKEND
# once). The numpy run also holds the mutation self-test and the strategies' tests. Last, the
# worked example of docs/conformance.md: torch-optimizer's AdamP/SGDP through a driver outside
# the suite, run by the installed command with its own xfails file.
CONFORMANCE_BACKENDS := numpy official pytorch-optimizer torch torch-ops jax keras-tensorflow keras-jax keras-torch
EXAMPLE_DRIVER := torch_optimizer_driver:TorchOptimizerDriver
conformance-ci: $(STAMP)
	@failed=""; for b in $(CONFORMANCE_BACKENDS); do \
	  echo "== conformance ci: $$b"; \
	  $(PYTEST) conformance --backend=$$b --hypothesis-profile=ci -p no:cacheprovider \
	    || failed="$$failed $$b"; \
	done; \
	echo "== conformance ci: torch-optimizer (conformance/examples)"; \
	PYTHONPATH=conformance/examples $(BIN)/adamp-conformance -q --backend=$(EXAMPLE_DRIVER) \
	  --xfails-file=conformance/examples/torch_optimizer.xfails --hypothesis-profile=ci \
	  || failed="$$failed torch-optimizer"; \
	if [ -n "$$failed" ]; then echo "conformance failed for:$$failed"; exit 1; fi

clean:
	rm -rf $(VENV) build dist .pytest_cache .hypothesis
