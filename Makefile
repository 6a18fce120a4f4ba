# Harmony-Image — one entry point for people and CI (`make help` lists the targets).
#   make demo   the local stack on the bundled sample catalog (sets everything up first)
#   make test   the whole test suite (what .ci/run calls last)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK := requirements/dev.lock
LOCAL_PORT ?= 3000
BENCH_SHARED_DIR ?= ../shared/bench
BENCH_SHARED_ARG := $(if $(wildcard $(BENCH_SHARED_DIR)/make_bench.py),--shared $(BENCH_SHARED_DIR))
# a folder of real photos for the copy-detection and real-resolution sets instead of the project's own
BENCH_PHOTOS ?=
# the engine the benchmark also runs, on the same catalogs and queries: before issue 13's scoring
BENCH_BASELINE ?= f577863

.DEFAULT_GOAL := help
.PHONY: help setup lock demo local-stack test test-engine test-local test-browser lint format \
	layer layer-test arm64-test sam-local-image sam-local-test bench bench-quick bench-shared bench-duplicates bench-scale bench-scale-50k bench-scale-100k reliability clean

help:
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

# ---------------------------------------------------------------- set up
$(VENV)/.installed: $(LOCK) pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

setup: $(VENV)/.installed ## create .venv from the lock file (hashes checked) and install the project

lock: ## re-resolve requirements/dev.lock from pyproject.toml (after changing a dependency)
	$(PY) -m pip install -q uv
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
		--generate-hashes --no-header -o $(LOCK)

# ---------------------------------------------------------------- run
demo: setup ## start the local stack on the sample catalog, print its URL and the top 5 for a sample query
	$(PY) -m harmony_local demo

local-stack: setup ## the local stack (page + API + embedded S3 with the samples); stays up
	$(PY) -m harmony_local serve --port $(LOCAL_PORT)

# ---------------------------------------------------------------- check
test: setup ## run all tests
	$(PY) -m pytest

test-engine: setup ## the engine's tests only
	$(PY) -m pytest tests/engine

test-local: setup ## the local stack's and the CLI's tests
	$(PY) -m pytest tests/local

test-browser: setup ## install Chromium if needed, then the page in headless Chromium (writes docs/img/page.png)
	bash tests/browser/setup.sh
	HARMONY_BROWSER_REQUIRED=1 $(PY) -m pytest tests/browser

lint: setup ## ruff (lint + format check) and mypy, as CI runs them
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: setup ## apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# ---------------------------------------------------------------- Lambda
layer: setup ## build the Lambda layers without Docker; print their sizes (limit 250 MB) and what they pack
	$(PY) tools/layers/build_layers.py

layer-test: setup ## build the layers and test the size limit, contents and a run on Python 3.13
	HARMONY_LAYER_TEST=1 $(PY) -m pytest tests/aws/test_layers.py

arm64-test: ## the arm64 layer's C kernels: cross-built (no Docker), parity tests under qemu-user (cache ~/.cache/harmony-arm64)
	bash tools/arm64/arm64.sh all

sam-local-image: ## build/import the local python3.13 Lambda base image into podman (cached; root)
	bash tools/lambda-image/build.sh

sam-local-test: setup ## real `sam local invoke` of every function and the shard fan-out through `sam local start-lambda`, against moto, via podman in a private netns (root)
	bash tools/sam-local/test.sh

# ---------------------------------------------------------------- benchmarks
bench: setup ## the full benchmark (catalogs of 1,000 and 10,000, every kernel level, 1-12 MP photos; ~20 min); writes docs/BENCHMARKS.md
	$(PY) -m benchmarks.run --sizes 1000,10000 --baseline-commit $(BENCH_BASELINE) $(BENCH_SHARED_ARG) $(if $(BENCH_PHOTOS),--photos $(BENCH_PHOTOS))

bench-quick: setup ## a benchmark smoke run on a 200-image catalog (report in .bench/quick/)
	$(PY) -m benchmarks.run --quick --sizes 200 --out .bench/quick/BENCHMARKS.md

bench-shared: setup ## quality on ../shared/bench (must exist), report in .bench/shared-report/
	@test -f $(BENCH_SHARED_DIR)/make_bench.py || { echo "$(BENCH_SHARED_DIR)/make_bench.py not found"; exit 1; }
	$(PY) -m benchmarks.run --quick --sizes 200 --shared $(BENCH_SHARED_DIR) --out .bench/shared-report/BENCHMARKS.md

bench-duplicates: setup ## the duplicate report: images/s, pair precision/recall on planted copies (1,000 images); its section of docs/BENCHMARKS.md
	$(PY) -m benchmarks.duplicates --size 1000 --doc docs/BENCHMARKS.md

# the scale runs' figures are kept in docs/data/ (committed), so that docs/SCALE.md can be written
# again without running them again; the one-shard run's (make bench-scale-50k): its section and the
# model's shard; the 100,000-image run's (make bench-scale-100k): its section
SCALE_DATA := docs/data
SCALE_SHARD = $(if $(wildcard $(SCALE_DATA)/scale-50k.json),--shard-json $(SCALE_DATA)/scale-50k.json)
SCALE_LARGE = $(if $(wildcard $(SCALE_DATA)/scale-100k.json),--large-json $(SCALE_DATA)/scale-100k.json)

bench-scale: setup ## scale: 10,000 images in 4 shards on moto's S3 server, per-record vs segments, 1M/10M modelled (~15 min); writes docs/SCALE.md
	$(PY) -m benchmarks.scale --images 10000 --shards 4 --queries 60 --out $(SCALE_DATA)/scale-10k.json --doc docs/SCALE.md $(SCALE_SHARD) $(SCALE_LARGE)

bench-scale-50k: setup ## scale: one shard of 50,000 images on moto's S3 server (~80 min; make bench-scale first): cold start, memory, warm queries; its section of docs/SCALE.md
	$(PY) -m benchmarks.scale --images 50000 --shards 1 --queries 40 --skip-records --out $(SCALE_DATA)/scale-50k.json
	$(PY) -m benchmarks.scale --from-json $(SCALE_DATA)/scale-10k.json --doc docs/SCALE.md --shard-json $(SCALE_DATA)/scale-50k.json $(SCALE_LARGE)

bench-scale-100k: setup ## scale: 100,000 images in 2 shards of 50,000 on moto's S3 server (~110 min, ~45 GB of disk while it runs): fan-out p50, cold start, top-5 against one index; its section of docs/SCALE.md
	$(PY) -m benchmarks.scale --images 100000 --shards 2 --queries 40 --skip-records --out $(SCALE_DATA)/scale-100k.json
	$(PY) -m benchmarks.scale --update-doc --doc docs/SCALE.md --large-json $(SCALE_DATA)/scale-100k.json

reliability: setup ## hostile inputs: answer, peak memory and time per case, before/after 194aca1; writes docs/RELIABILITY.md
	$(PY) -m benchmarks.reliability --before-commit 194aca1 --out docs/RELIABILITY.md

clean: ## remove build outputs and caches (keeps .venv)
	rm -rf .aws-sam .build build .pytest_cache .mypy_cache .ruff_cache .harmony-demo .harmony-local .bench
	find . -path ./.venv -prune -o -name __pycache__ -prune -exec rm -rf {} +
