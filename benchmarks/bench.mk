# Benchmarks (included by the main Makefile). Needs the dev venv: `make setup` first.
#   make bench         full run (catalogs of 1,000 and 10,000; ~10-15 min on 2 cores); writes
#                      docs/BENCHMARKS.md and docs/img/bench_scores.png. Adds ../shared/bench when present.
#   make bench-quick   smoke run on a 200-image catalog (~1 min); report in .bench/quick/
#   make bench-shared  the ../shared/bench reference set (+ a 200-image package catalog); report in .bench/shared-report/
VENV ?= .venv
BENCH_PY := $(VENV)/bin/python
BENCH_SHARED_DIR ?= ../shared/bench
BENCH_SHARED_ARG := $(if $(wildcard $(BENCH_SHARED_DIR)/make_bench.py),--shared $(BENCH_SHARED_DIR))

.PHONY: bench bench-quick bench-shared

bench: ## run the full benchmark (no ../shared needed) and write docs/BENCHMARKS.md
	$(BENCH_PY) -m benchmarks.run --sizes 1000,10000 $(BENCH_SHARED_ARG)

bench-quick: ## fast benchmark smoke run on a small catalog (report in .bench/quick/)
	$(BENCH_PY) -m benchmarks.run --quick --sizes 200 --out .bench/quick/BENCHMARKS.md

bench-shared: ## quality on ../shared/bench (must exist), report in .bench/shared-report/
	@test -f $(BENCH_SHARED_DIR)/make_bench.py || { echo "$(BENCH_SHARED_DIR)/make_bench.py not found"; exit 1; }
	$(BENCH_PY) -m benchmarks.run --quick --sizes 200 --shared $(BENCH_SHARED_DIR) --out .bench/shared-report/BENCHMARKS.md
