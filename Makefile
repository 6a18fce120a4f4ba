# Harmony-Image — one entry point for people and CI.
#   make demo   index the bundled sample catalog and search it (sets everything up first)
#   make test   the whole test suite (what .ci/run calls)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.DEFAULT_GOAL := help
.PHONY: help setup demo test test-engine layer layer-test clean

help:
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

setup: $(VENV)/.installed ## create .venv and install the project with its dev tools

demo: setup ## start the local stack on the sample catalog, print its URL and the top 5 for a sample query
	$(PY) -m harmony_local demo

test: setup ## run all tests
	$(PY) -m pytest

test-engine: setup ## run the engine's tests only
	$(PY) -m pytest tests/engine

layer: setup ## build the two Lambda layers without Docker and print their sizes (limit 250 MB)
	$(PY) tools/layers/build_layers.py

layer-test: setup ## build the layers and test the size limit and what they import
	HARMONY_LAYER_TEST=1 $(PY) -m pytest tests/aws/test_layers.py

clean: ## remove build outputs and caches (keeps .venv)
	rm -rf .aws-sam build .pytest_cache .harmony-demo .harmony-local .bench
	find . -name __pycache__ -prune -exec rm -rf {} +

-include tools/sam-local/sam-local.mk
-include benchmarks/bench.mk
-include functions/functions.mk
-include layers/engine/harmony_local/local.mk
